"""Know before you launch: peak memory, time per step and the whole run's time, measured on the chosen device.

    python -m finetune.preflight --config run.yaml [--key value ...] [--steps N] [--json]

Sets the run up exactly as finetune/train.py does (same accelerator, precision, LoRA, optimizer), trains
1 warm-up and N (default 3) real optimizer steps on the longest batches of the data, scores the longest eval
batches, and saves nothing. Exit status: 0 the run fits the device's memory, 3 it does not (with advice),
2 bad config or data (``error: ...``). See docs/preflight.md.
"""

import argparse
import dataclasses
import itertools
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from finetune.config import TrainConfig
from finetune.errors import ConfigError, Problem, UserError
from finetune.rundir import RunDirectory
from finetune.training.advice import WARN_LONGER_THAN_S, readable_duration, shorter_run_advice

WARMUP_STEPS = 1  # untimed: the first step pays for kernel selection and allocator growth
DEFAULT_STEPS = 3
# A run is said to fit when its measured peak stays under this fraction of the device's memory: the CUDA context,
# allocator fragmentation (CUDA) and the rest of the machine (CPU) need the remainder.
HEADROOM = 0.9
FITS, BAD_INPUT, DOES_NOT_FIT = 0, 2, 3


@dataclass
class Report:
    """What the check measured (memory in MiB, times in seconds) and what the whole run will take."""

    device: str
    memory_measure: str  # what peak_memory_mb counts: CUDA allocations, or the process's peak resident memory
    peak_memory_mb: float
    memory_capacity_mb: float
    fits: bool
    advice: list[str]
    batch_size: int
    measured_steps: int
    # Times are None when the GPU ran out of memory during the check (then fits is false).
    seconds_per_step: Optional[float]
    total_steps: int
    evaluations: int
    eval_batches: int
    seconds_per_eval_batch: Optional[float]
    setup_seconds: float
    estimated_seconds: Optional[float]
    # What to change when the run would take over WARN_LONGER_THAN_S; empty when it is shorter.
    time_advice: list[str]


def parse(argv: Optional[list[str]] = None) -> tuple[TrainConfig, int, bool]:
    """(config, timed steps, JSON output): the trainer's own flags plus --steps and --json."""
    from finetune.config import parse_args

    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other flag is the trainer's: see python -m finetune.train --help.",
    )
    parser.add_argument("--steps", default=str(DEFAULT_STEPS), help="optimizer steps to time, after 1 warm-up step")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ours, rest = parser.parse_known_args(argv)
    problems = (
        []
        if ours.steps.isdigit() and int(ours.steps) >= 1
        else [
            Problem(
                "--steps",
                f"{ours.steps!r} is not a whole number >= 1; expected the optimizer steps to time (default 3)",
            )
        ]
    )
    # Everything the recipe writes goes to a temporary folder: output_dir only has to be valid, not given.
    try:
        cfg = parse_args([*rest, "--output_dir", tempfile.gettempdir()])
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg, int(ours.steps), ours.json


def check(cfg: TrainConfig, steps: int = DEFAULT_STEPS) -> Report:
    """Set the run up in a temporary folder (deleted after), train and score a few batches, and report."""
    from finetune import train

    ram = ram_available_mb()  # read before the model loads: what a run could use on the CPU
    with tempfile.TemporaryDirectory(prefix="lora-lab-preflight-") as folder:
        # A fresh run: no checkpoint to resume, no tracker writing outside the temporary folder.
        cfg = dataclasses.replace(cfg, output_dir=folder, resume_from_checkpoint=None, report_to="none")
        run = RunDirectory(folder)
        started = time.perf_counter()
        recipe = train.set_up(train.with_task(cfg, run, is_main=True), run)
        setup_seconds = time.perf_counter() - started
        return _report(recipe, ram, steps, *_measure(recipe, steps), setup_seconds)


def _measure(recipe, steps: int) -> tuple[Optional[float], Optional[float]]:
    """(seconds per optimizer step, seconds per eval batch); (None, None) when the GPU runs out of memory: the
    answer the check exists for, not a failure of it."""
    import torch

    try:
        return _time_training(recipe, steps), _time_evaluation(recipe, steps)
    except torch.OutOfMemoryError:
        return None, None


def _longest_batches(recipe):
    """Training batches of the longest examples first (lengths known) so the first steps meet the run's peak
    memory, repeated when the data has fewer batches than the check needs."""
    from accelerate.utils import send_to_device

    from finetune.data.batches import eval_dataloader

    dataset, cfg = recipe.train_dl.dataset, recipe.cfg
    loader = eval_dataloader(dataset, cfg.per_device_train_batch_size, {"collate_fn": recipe.train_dl.collate_fn})
    for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
        yield send_to_device(batch, recipe.accelerator.device)


def _time_training(recipe, steps: int) -> float:
    """Seconds per optimizer step over ``steps`` steps after the warm-up, the loop's own work per batch."""
    from finetune import train

    accelerator, cfg = recipe.accelerator, recipe.cfg
    batches = _longest_batches(recipe)
    recipe.model.train()
    started = None
    for index in range((WARMUP_STEPS + steps) * cfg.gradient_accumulation_steps):
        if index == WARMUP_STEPS * cfg.gradient_accumulation_steps:
            started = _synced_clock(accelerator.device)
        train.train_step(recipe, next(batches))
    return (_synced_clock(accelerator.device) - started) / steps


def _time_evaluation(recipe, steps: int) -> float:
    """Seconds per eval batch over the first ``steps`` eval batches: the longest (an upper bound when lengths vary)."""
    from finetune.training import engine

    count = min(steps, len(recipe.eval_dl))
    started = _synced_clock(recipe.accelerator.device)
    engine.predict(recipe.model, itertools.islice(recipe.eval_dl, count), recipe.accelerator, recipe.task)
    return (_synced_clock(recipe.accelerator.device) - started) / count


def _synced_clock(device) -> float:
    """perf_counter seconds once the GPU has finished the work queued so far (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _report(
    recipe,
    ram: float,
    steps: int,
    seconds_per_step: Optional[float],
    seconds_per_eval: Optional[float],
    setup_seconds: float,
) -> Report:
    import torch

    from finetune.training import artifacts

    plan, cfg, device = recipe.plan, recipe.cfg, recipe.accelerator.device
    peak = artifacts.peak_memory_mb(device)
    capacity = torch.cuda.get_device_properties(device).total_memory / 2**20 if device.type == "cuda" else ram
    ran = seconds_per_step is not None  # else the GPU ran out of memory: the peak is where it stopped
    fitting = ran and fits(peak, capacity)
    evaluations = evaluation_count(plan.max_steps, plan.eval_steps)
    # The test split is scored twice (base, then fine-tuned) at evaluation's pace.
    eval_batches = evaluations * len(recipe.eval_dl) + 2 * len(recipe.test_dl or [])
    estimate = _estimate(setup_seconds, plan.max_steps, seconds_per_step, eval_batches, seconds_per_eval)
    return Report(
        device=str(device),
        peak_memory_mb=peak,
        memory_capacity_mb=capacity,
        fits=fitting,
        memory_measure="CUDA max_memory_allocated" if device.type == "cuda" else "process peak RSS, ru_maxrss",
        advice=[] if fitting else _advice_for(recipe, peak / capacity),
        batch_size=cfg.per_device_train_batch_size,
        measured_steps=steps,
        seconds_per_step=seconds_per_step,
        total_steps=plan.max_steps,
        evaluations=evaluations,
        eval_batches=len(recipe.eval_dl),
        seconds_per_eval_batch=seconds_per_eval,
        setup_seconds=setup_seconds,
        estimated_seconds=estimate,
        time_advice=shorter_run_advice(cfg, estimate, seconds_per_step, plan.max_steps, device.type == "cuda"),
    )


def _estimate(
    setup: float, steps: int, per_step: Optional[float], eval_batches: int, per_eval_batch: Optional[float]
) -> Optional[float]:
    """Seconds for the whole run: set-up, every optimizer step and every evaluation (None when nothing ran)."""
    if per_step is None:
        return None  # the GPU ran out of memory: no step was timed
    return setup + steps * per_step + eval_batches * per_eval_batch


def _advice_for(recipe, used_fraction: float) -> list[str]:
    model = recipe.accelerator.unwrap_model(recipe.model)
    return advice(
        recipe.cfg,
        used_fraction,
        recipe.accelerator.device.type == "cuda",
        recipe.derived,
        getattr(model, "supports_gradient_checkpointing", False),
    )


def evaluation_count(max_steps: int, eval_steps: int) -> int:
    """Evaluations of a whole run: the base model's, every eval_steps steps, and one at the end when not aligned."""
    return 1 + max_steps // eval_steps + (1 if max_steps % eval_steps else 0)


def ram_available_mb() -> float:
    """MiB a run may use on the CPU: MemAvailable plus what this process already holds (counted in its peak)."""
    return (_proc_kib("/proc/meminfo", "MemAvailable") + _proc_kib("/proc/self/status", "VmRSS")) / 1024


def _proc_kib(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])  # "<key>:   <n> kB"
    raise RuntimeError(f"{path} has no {key} line")


def fits(peak_mb: float, capacity_mb: float) -> bool:
    return peak_mb <= HEADROOM * capacity_mb


def advice(cfg: TrainConfig, over_by: float, cuda: bool, derived: dict, can_checkpoint: bool) -> list[str]:
    """What to change when the peak is ``over_by`` x the device's memory, most effective for the least loss first."""
    found = []
    batch, accumulation = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    if batch > 1:
        # Activations shrink about with the batch (at least halved here). A divisor of the batch, so that
        # accumulating more batches keeps the effective batch (and the learning dynamics) exactly.
        target = max(1, min(batch // 2, math.floor(batch * HEADROOM / over_by)))
        smaller = max(d for d in range(1, target + 1) if batch % d == 0)
        found.append(
            f"per_device_train_batch_size: {smaller} with gradient_accumulation_steps: "
            f"{accumulation * batch // smaller} (keeps the effective batch of {batch * accumulation})"
        )
    if not cfg.gradient_checkpointing and can_checkpoint:
        found.append(
            "gradient_checkpointing: true (recomputes activations in the backward pass: much less memory, "
            "about 30% slower steps)"
        )
    if cuda and not cfg.load_in_4bit and cfg.finetune_method == "lora":
        found.append("load_in_4bit: true (QLoRA: the frozen base weights in 4 bits, about a quarter of their memory)")
    for name in ("max_seq_length", "block_size"):
        if derived.get(name, 0) > 8:
            found.append(f"{name}: {derived[name] // 2} (now {derived[name]}; activations grow with the length)")
    return found or ["the model alone does not fit this device: pick a smaller checkpoint or a larger device"]


def format_report(report: Report) -> str:
    """The report as lines for a terminal."""
    lines = [
        f"Device:          {report.device}",
        f"Peak memory:     {report.peak_memory_mb:,.0f} MiB ({report.memory_measure}) of "
        f"{report.memory_capacity_mb:,.0f} MiB: {'fits' if report.fits else 'does NOT fit'} (limit "
        f"{HEADROOM:.0%} of it)",
    ]
    if report.seconds_per_step is None:
        lines.append("Step time:       none: the GPU ran out of memory during the first steps")
    else:
        lines += [
            f"Step time:       {report.seconds_per_step:.3f} s per optimizer step (batches of "
            f"{report.batch_size}, the longest first; mean of {report.measured_steps} after {WARMUP_STEPS} "
            "warm-up)",
            f"Run length:      {report.total_steps:,} optimizer steps and {report.evaluations} evaluation(s) "
            f"of {report.eval_batches} batch(es) at {report.seconds_per_eval_batch:.3f} s each",
            f"Estimated time:  {readable_duration(report.estimated_seconds)} (set-up "
            f"{readable_duration(report.setup_seconds)} included)",
        ]
    if report.advice:
        lines += ["To fit, change one or more of:", *(f"  - {item}" for item in report.advice)]
    if report.time_advice:
        lines += [
            f"To train within {WARN_LONGER_THAN_S // 60} min, change one or more of:",
            *(f"  - {item}" for item in report.time_advice),
        ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    import logging

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        cfg, steps, as_json = parse(argv)
        report = check(cfg, steps)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT
    print(json.dumps(dataclasses.asdict(report)) if as_json else format_report(report))
    return FITS if report.fits else DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
