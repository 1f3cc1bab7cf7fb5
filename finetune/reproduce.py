"""Re-run a finished run into a new folder and compare the two results.

    python -m finetune.reproduce RUN --output_dir NEW [--rtol 1e-4]

Only RUN's config.yaml is read, through TrainConfig (as the trainer itself reads it), and written with output_dir
NEW into NEW; nothing else in RUN is run. The trainer then trains it in a new process, with the original's number
of processes where this machine has them. Compared: metrics.json (eval loss and the task's primary metric, base and
fine-tuned, and on the test file when there was one) within a relative tolerance, and the two reproducibility
records (versions, platform, device, commit, data SHA-256; a changed data file is a warning).

The default tolerance, relative 1e-4: on the CPU, with the same versions, seed and number of processes, a run
repeats to the last few bits (sums over threads may round differently), while on a real model a change of data,
settings or code moves them far more; a tiny model may barely move, which is why the records are compared too. GPU
kernels are not bit-deterministic (atomic adds, TF32, bf16): pass --rtol 1e-2 there.

Exit status: 0 when the metrics match, 1 when they do not or the reproduction did not finish, 2 when refused.
"""

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.rundir import FINISHED, PROJECT_ROOT, RunDirectory, output_dir_problem
from finetune.task_kinds import primary_metric
from finetune.training.reproducibility import Difference, differences, short

DEFAULT_RTOL = 1e-4
PRESETS = PROJECT_ROOT / "configs" / "accelerate"
# The accelerate preset that launches each distributed type of the original run again, on a GPU and on the CPU.
PRESET_FOR = {"MULTI_GPU": ("multi_gpu", "cpu_ddp"), "FSDP": ("fsdp", "fsdp"), "DEEPSPEED": ("deepspeed_zero2",) * 2}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        original, cfg = check_request(Path(args.run), Path(args.output_dir))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    new = RunDirectory(cfg.output_dir)
    new.path.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(new.config_path)
    command, env, note = launch_command(new.config_path, original)
    # Flushed first: the trainer's own output follows on the same terminal or pipe.
    print(f"Reproducing {original.path} in {new.path}: {' '.join(command)}", flush=True)
    if note:
        print(f"note: {note}", flush=True)
    subprocess.run(command, env=env, check=False)
    if new.state != FINISHED:
        error = new.read_status().get("error") or "no error recorded"
        print(f"error: the reproduction ended {new.state or 'before starting'} ({error}); see {new.log_path}")
        return 1
    return report(original, new, args.rtol)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="folder of the finished run to reproduce")
    parser.add_argument("--output_dir", required=True, help="new (or empty) folder for the reproduction")
    parser.add_argument(
        "--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance of the metrics (default {DEFAULT_RTOL})"
    )
    return parser


def check_request(run_path: Path, output_dir: Path) -> tuple[RunDirectory, TrainConfig]:
    """(the original run, its config with output_dir the new folder); UserError unless RUN is a finished run with
    a valid config.yaml and NEW a new or empty folder."""
    original = RunDirectory(run_path)
    if not original.is_run():
        raise UserError(f"{run_path} holds no LoRA Lab run (no config.yaml or status.json); expected a run's folder")
    if original.state != FINISHED or not original.read_metrics():
        raise UserError(
            f"{run_path} is {original.state or 'not started'} without a complete metrics.json; "
            "expected a finished run (its metrics are what the reproduction is compared with)"
        )
    new = output_dir.expanduser().resolve()
    if new.exists() and (not new.is_dir() or any(new.iterdir())):
        raise UserError(f"{output_dir} exists and is not an empty folder; expected a new or empty folder")
    problem = output_dir_problem(new, resuming=False)
    if problem:
        raise UserError(problem, field="output_dir")
    settings = original.read_config()
    if not settings:
        raise UserError(f"{original.config_path} is missing or not a YAML mapping; expected the run's settings")
    try:
        cfg = TrainConfig.from_dict({**settings, "output_dir": str(new), "resume_from_checkpoint": None})
    except UserError as err:
        raise UserError(f"{original.config_path} is no valid config: {err}") from None
    return original, cfg


def launch_command(config_path: Path, original: RunDirectory) -> tuple[list[str], dict, Optional[str]]:
    """(command, environment, note on what differs from the original launch). The original's device and number of
    processes, read from its record (else its metrics.json); a CPU run stays on the CPU on a GPU machine."""
    device = original.read_reproducibility().get("device") or {}
    metrics = original.read_metrics()
    wanted = _count(device.get("num_processes") or metrics.get("num_processes"))
    on_gpu = str(device.get("device") or metrics.get("device") or "cpu").startswith("cuda")
    env = {**os.environ} if on_gpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    processes, note = wanted, None
    if on_gpu and wanted > 1 and _gpu_count() < wanted:
        processes = max(1, _gpu_count())
        note = f"the original ran on {wanted} GPUs, this machine has {processes}: the metrics will differ"
    trainer = ["-m", "finetune.train", "--config", str(config_path)]
    if processes == 1:
        return [sys.executable, *trainer], env, note
    kind = str(device.get("distributed_type") or "MULTI_GPU")
    preset = PRESET_FOR.get(kind, PRESET_FOR["MULTI_GPU"])[0 if on_gpu else 1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(PRESETS / f"{preset}.yaml")]
    return [*launch, "--num_processes", str(processes), *trainer], env, note


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def metric_rows(original: dict, new: dict, rtol: float) -> list[tuple[str, Optional[float], Optional[float], bool]]:
    """(metric, original, reproduced, within rtol) for the eval loss and the task's primary metric of the base and
    the fine-tuned model, and of both on the test file when the original had one."""
    names = dict.fromkeys(("eval_loss", primary_metric(original.get("task"))))
    sections = [("base", ("base",)), ("finetuned", ("finetuned",))]
    if original.get("test"):
        sections += [("test base", ("test", "base")), ("test finetuned", ("test", "finetuned"))]
    rows = []
    for label, keys in sections:
        for name in names:
            before, after = _number(original, keys, name), _number(new, keys, name)
            same = before is not None and after is not None and math.isclose(before, after, rel_tol=rtol, abs_tol=0)
            rows.append((f"{label} {name}", before, after, same))
    return rows


def _number(metrics: dict, keys: tuple[str, ...], name: str) -> Optional[float]:
    for key in keys:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    value = metrics.get(name) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def report(original: RunDirectory, new: RunDirectory, rtol: float) -> int:
    """Print the comparison; 0 when every metric matches within ``rtol``, else 1."""
    rows = metric_rows(original.read_metrics(), new.read_metrics(), rtol)
    print(f"\n{'metric':<26} {'original':>14} {'reproduced':>14} {'rel. diff':>10}  match")
    for name, before, after, same in rows:
        print(f"{name:<26} {_fmt(before):>14} {_fmt(after):>14} {_rel(before, after):>10}  {'yes' if same else 'NO'}")
    before_record = original.read_reproducibility()
    found = differences(before_record, new.read_reproducibility()) if before_record else []
    if not before_record:
        print(
            "\nThe original has no reproducibility.json (a run from before it was written): versions and data unchecked"
        )
    else:
        print_differences(found)
    matched = all(same for *_, same in rows)
    verdict = "match" if matched else "do NOT match"
    # A match on other data is no reproduction of the run, however close the numbers: said in the verdict too.
    caveat = "; but the data differ (see the warnings above)" if any(d.kind == "data" for d in found) else ""
    print(f"\nThe metrics {verdict} within a relative tolerance of {rtol:g} (--rtol){caveat}.")
    return 0 if matched else 1


def print_differences(found: list[Difference]) -> None:
    """The records' differences as a table, then a warning per data file that changed or could not be compared."""
    if not found:
        print("\nReproducibility records: same versions, platform, device, commit and data.")
        return
    print(f"\n{'record':<34} {'original':<30} reproduced")
    for kind, name, before, after in found:
        print(f"{kind + '.' + name:<34} {_shown(kind, before):<30} {_shown(kind, after)}")
    for kind, name, before, after in found:
        if kind == "data" and before and after:
            print(f"WARNING: {name} changed since the original run (sha256 {short(before)} now {short(after)})")
        elif kind == "data":
            print(f"WARNING: {name} could not be compared (sha256 {short(before)} then, {short(after)} now)")


def _shown(kind: str, value) -> str:
    """A record's value for the table: hashes and commits by their first 12 digits."""
    return short(value) if kind == "data" or (kind == "git" and isinstance(value, str)) else str(value)


def _fmt(value: Optional[float]) -> str:
    return "missing" if value is None else f"{value:.6g}"


def _rel(before: Optional[float], after: Optional[float]) -> str:
    if before is None or after is None:
        return "-"
    return f"{abs(after - before) / max(abs(before), abs(after), 1e-300):.1e}" if before != after else "0"


if __name__ == "__main__":
    sys.exit(main())
