"""The GPU proof: every GPU setup the app offers, run once on a lent GPU machine, with its figures in one JSON.

    benchmarks/gpu_check/prepare.sh                 # here, before the device starts: the wheels it lacks
    benchmarks/gpu_check/run.sh OUT                 # on the device (the command docs/benchmarks.md gives)
    python -m benchmarks.gpu_check --dry-run --out OUT   # the same checks on this CPU, tiny: no device minute
                                                         # is spent on set-up bugs

Checks, in order (each a fresh process, timed; one failing does not stop the others):
  families      LoRA Lab vs a Trainer + PEFT reference at the same precision (bf16 on the GPU), GPT-2 124M,
                BERT-base, ViT-B/16 and ResNet-50 shapes (random-init, made on the device: weights are too big to
                carry), through benchmarks.vs_trainer: samples/s and peak memory side by side
  gpt2-1024     GPT-2 124M LoRA at block 1024: tokens/s and MFU from the run's steady-state train events
  compile       the same GPT-2 job with torch_compile on: the run finishes and its adapter is saved
  fp16          the fp16 path (what a T4 or V100 gets): GradScaler, finite losses
  qlora         load_in_4bit for 30 steps (bitsandbytes; skipped where it is not installed)
  fsdp          the FSDP preset on 1 process: wraps the model, trains and saves an ordinary adapter
Writes OUT/gpu_check.json (every figure, with the device's name) and prints a table.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "0"}
# Steps of each single run: enough for steady-state figures on an H100 in a few seconds each.
GPU_STEPS, DRY_STEPS = 200, 2
CHECK_SECONDS = 600  # a check still running after this long is stopped and reported as such


def run(command: list[str], log: Path, env: Optional[dict] = None) -> dict:
    """``command`` from the source tree, its output to ``log``; its exit code and seconds."""
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                command,
                cwd=REPO,
                env={**os.environ, **OFFLINE, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=CHECK_SECONDS,
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return {"returncode": code, "seconds": round(time.perf_counter() - started, 1), "log": str(log)}


def gpt2_job(workdir: Path, size: str, device: str, steps: int):
    """The GPT-2 job of benchmarks.vs_trainer (its checkpoint, data and settings), made once."""
    from benchmarks.vs_trainer_jobs import make_jobs, setup

    return make_jobs(setup(workdir, size, ["gpt2"]), size, device, steps)[0]


def ours(name: str, job, out: Path, overrides: dict, launcher: Optional[list[str]] = None) -> dict:
    """One LoRA Lab run of ``job`` with ``overrides``; its outcome and the run's figures."""
    from benchmarks.vs_trainer_jobs import ours_config
    from benchmarks.vs_trainer_results import read_ours

    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump(ours_config(job, folder / "run", overrides), sort_keys=False))
    command = (launcher or [sys.executable, "-m", "finetune.train"]) + ["--config", str(config)]
    outcome = run(command, folder / "log.txt")
    if outcome["returncode"] == 0:
        outcome.update(read_ours(folder / "run"))
        outcome["adapter_saved"] = (folder / "run" / "adapter" / "adapter_config.json").is_file()
        outcome["losses_finite"] = all(
            isinstance(e.get("loss"), (int, float)) and e["loss"] == e["loss"] for e in _events(folder / "run")
        )
    return outcome


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [event for event in map(json.loads, lines) if event.get("event") == "train"]


def families(out: Path, workdir: Path, dry: bool) -> dict:
    size, device = ("tiny", "cpu") if dry else ("base", "cuda")
    command = [sys.executable, "-m", "benchmarks.vs_trainer", "--family", "all", "--size", size, "--device", device]
    command += ["--repeats", "1", "--reference-precision", "bf16", "--workdir", str(workdir)]
    command += ["--json", str(out / "vs_trainer.json")] + (["--steps", str(DRY_STEPS)] if dry else [])
    outcome = run(command, out / "vs_trainer.log")
    if outcome["returncode"] == 0:
        outcome["summaries"] = json.loads((out / "vs_trainer.json").read_text())["summaries"]
    return outcome


def single_runs(out: Path, workdir: Path, dry: bool, cuda: bool) -> dict:
    """The GPT-2 runs of the other checks; those needing CUDA are skipped without it, with the reason."""
    size, device, steps = ("tiny", "cpu", DRY_STEPS) if dry else ("base", "cuda", GPU_STEPS)
    job = gpt2_job(workdir, size, device, steps)
    long_blocks = {} if dry else {"block_size": 1024}
    fsdp = ["accelerate", "launch", "--config_file", "configs/accelerate/fsdp.yaml", "--num_processes", "1"]
    checks = {
        "gpt2-1024": lambda: ours("gpt2-1024", job, out, {**long_blocks, "logging_steps": max(1, steps // 10)}),
        "compile": lambda: ours("compile", job, out, {"torch_compile": "true"}),
        "fp16": lambda: ours("fp16", job, out, {"mixed_precision": "fp16"}),
        "qlora": lambda: ours("qlora", job, out, {"load_in_4bit": "true", "max_steps": 30 if not dry else steps}),
        "fsdp": lambda: ours("fsdp", job, out, {"mixed_precision": "bf16"}, [*fsdp, "finetune/train.py"]),
    }
    needs = {"fp16": "fp16 autocast needs a GPU", "qlora": "4-bit kernels need CUDA", "fsdp": "FSDP needs CUDA"}
    results = {}
    for name, check in checks.items():
        if not cuda and name in needs:
            results[name] = {"skipped": needs[name]}
        elif name == "qlora" and not _installed("bitsandbytes"):
            results[name] = {"skipped": "bitsandbytes is not installed on this machine"}
        else:
            results[name] = check()
    return results


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def device_name(cuda: bool) -> str:
    import torch

    return torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"


def table(record: dict) -> str:
    rows = [f"GPU check on {record['device']} ({'dry run' if record['dry_run'] else 'full'}):", "| check | result |"]
    rows.append("| --- | --- |")
    for name, outcome in record["checks"].items():
        rows.append(f"| {name} | {_result(outcome)} |")
    return "\n".join(rows)


def _result(outcome: dict) -> str:
    if "skipped" in outcome:
        return f"skipped: {outcome['skipped']}"
    if outcome.get("returncode") != 0:
        return f"FAILED ({outcome.get('returncode')}): see {outcome.get('log')}"
    figures = [f"{outcome['seconds']:g} s"]
    event = outcome.get("last_train_event") or {}
    for key in ("samples_per_second", "tokens_per_second", "mfu"):
        if isinstance(event.get(key), (int, float)):
            figures.append(f"{key} {event[key]:.3g}")
    if outcome.get("peak_gpu_mib"):
        figures.append(f"peak {outcome['peak_gpu_mib']:.0f} MiB")
    for summary in outcome.get("summaries", []):
        samples, memory = (summary["ratio"].get(column) for column in ("samples_s", "peak_mib"))
        figures.append(f"{summary['family']}: samples/s x{_ratio(samples)}, peak memory x{_ratio(memory)}")
    if any(summary["failed"]["ours"] or summary["failed"]["reference"] for summary in outcome.get("summaries", [])):
        figures.append("SOME RUNS FAILED: see vs_trainer.json")
    return ", ".join(figures)


def _ratio(value: Optional[float]) -> str:
    return f"{value:.2f}" if value is not None else "?"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and the logs")
    parser.add_argument("--dry-run", action="store_true", help="everything but CUDA: tiny models on this CPU")
    parser.add_argument("--workdir", type=Path, help="checkpoints and data (default: OUT/work)")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA GPU here; use --dry-run to rehearse on the CPU", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = (args.workdir or out / "work").resolve()
    started = time.time()
    checks = {"families": families(out, workdir, args.dry_run), **single_runs(out, workdir, args.dry_run, cuda)}
    record = {
        "device": device_name(cuda),
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "seconds": round(time.time() - started, 1),
        "checks": checks,
    }
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2, default=str))
    print(table(record))
    failed = [name for name, outcome in checks.items() if "skipped" not in outcome and outcome.get("returncode") != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
