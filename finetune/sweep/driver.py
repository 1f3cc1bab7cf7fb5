"""Hyperparameter search: one run per point of a grid, grouped as one experiment, the best run picked.

    python -m finetune.sweep --config run.yaml --grid learning_rate=1e-4,3e-4 lora_r=8,16 \\
        [--random N --seed S] [--experiment NAME] [--prune]

The grid is the cartesian product of the values given (``--random N``: N distinct points drawn from it, the
same ones for the same ``--seed``). Every key and value is checked against TrainConfig before anything runs (grid.py).
Each point trains as ``python -m finetune.train --config <output_dir>/<experiment>/<experiment>-NN/config.yaml``,
one after another; experiment.json records the grid, the points and the best run (finetune/sweep/experiment.py).
``--prune`` stops a run whose first evaluations are clearly worse than the best finished run's (docs/sweeps.md).
"""

import argparse
import math
import signal
import subprocess
import sys
import time
from typing import Optional

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.rundir import CANCELLED, FAILED, FINISHED, QUEUED, RunDirectory
from finetune.sweep.experiment import Experiment, best_run, primary_value, run_name
from finetune.sweep.grid import Sweep, plan
from finetune.task_kinds import LOWER_IS_BETTER

# Set by the sweep itself for each run: varying them would break the grouping or the run folders.

# Pruning: a run is stopped when one of its first PRUNE_EVALS evaluations after step 0 has an eval loss more than
# PRUNE_MARGIN (25%) above the best finished run's at the same or nearest step. Early losses of runs that end up
# close differ by a few percent; 25% above is a run that will not catch up within a sweep's budget.
PRUNE_MARGIN, PRUNE_EVALS = 0.25, 2
POLL_SECONDS = 0.5  # how often a running point's events.jsonl is read for pruning


def eval_losses(events: list[dict]) -> list[tuple[int, float]]:
    """(step, eval_loss) of every evaluation, in step order; the last record of a step counts (resumed runs)."""
    losses = {
        e["step"]: float(e["eval_loss"])
        for e in events
        if e.get("event") == "eval" and isinstance(e.get("step"), int) and isinstance(e.get("eval_loss"), (int, float))
    }
    return sorted(losses.items())


def should_prune(
    run: list[tuple[int, float]], best: list[tuple[int, float]], margin: float = PRUNE_MARGIN, first: int = PRUNE_EVALS
) -> bool:
    """True when one of ``run``'s first ``first`` evaluations after step 0 has an eval loss more than ``margin``
    (0.25: 25%) above ``best``'s at the same or nearest step (the earlier one on a tie), or a loss that is no
    finite number (diverged). Step 0 scores the untuned base model, the same in every run: it says nothing."""
    reference = [(step, loss) for step, loss in best if step > 0 and math.isfinite(loss)]
    if not reference:
        return False
    for step, loss in [(step, loss) for step, loss in run if step > 0][:first]:
        nearest = min(reference, key=lambda point: (abs(point[0] - step), point[0]))[1]
        if not math.isfinite(loss) or loss > nearest * (1 + margin):
            return True
    return False


def run_sweep(sweep: Sweep, prune: bool) -> dict:
    """Train every point in turn (the best finished run so far is the pruning reference); returns experiment.json."""
    experiment = sweep.experiment
    names = [run_name(experiment.name, index) for index in range(1, len(sweep.points) + 1)]
    experiment.update(
        name=experiment.name,
        created_at=time.time(),
        grid=sweep.grid,
        task=sweep.task,
        points={
            name: {key: getattr(cfg, key) for key in point}
            for name, point, cfg in zip(names, sweep.points, sweep.configs)
        },
        primary_metric=sweep.metric,
        lower_is_better=sweep.metric in LOWER_IS_BETTER,
        prune={"margin": PRUNE_MARGIN, "evaluations": PRUNE_EVALS} if prune else None,
        pruned=[],
        best=None,
        best_value=None,
        finished_at=None,
    )
    scores: dict[str, Optional[float]] = {}
    pruned: list[str] = []
    for index, (name, cfg) in enumerate(zip(names, sweep.configs), start=1):
        best = best_run(scores, sweep.metric)
        reference = eval_losses(RunDirectory(experiment.path / best).read_events()) if prune and best else []
        run = experiment.run(index)
        if train_point(run, cfg, reference):
            pruned.append(name)
        finished = run.state == FINISHED
        scores[name] = primary_value(run.read_metrics(), sweep.metric) if finished else None
        best = best_run(scores, sweep.metric)
        experiment.update(pruned=pruned, best=best, best_value=scores[best] if best else None)
        state = "pruned" if name in pruned else run.state
        print(f"[{index}/{len(names)}] {name}: {state}", flush=True)
    return experiment.update(finished_at=time.time())


def train_point(run: RunDirectory, cfg: TrainConfig, reference: list[tuple[int, float]]) -> bool:
    """Train one point in a process of its own on the run's config.yaml; True when it was pruned."""
    run.path.mkdir(parents=True)
    cfg.to_yaml(run.config_path)
    run.update_status(state=QUEUED, queued_at=time.time())  # the trainer accepts a folder queued for it
    with run.launch_log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "finetune.train", "--config", str(run.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            signalled = _watch(process, run, reference)
        except KeyboardInterrupt:  # Ctrl-C reached the trainer too (same process group): it saves and stops
            process.wait()
            raise
    if run.state == QUEUED:  # died before it could report (see launch.log)
        run.update_status(
            state=FAILED,
            error=f"the trainer exited with code {process.returncode} before starting; see {run.launch_log_path}",
            ended_at=time.time(),
        )
    pruned = signalled and run.state == CANCELLED
    if pruned:
        run.update_status(pruned=True)
    return pruned


def _watch(process: subprocess.Popen, run: RunDirectory, reference: list[tuple[int, float]]) -> bool:
    """Wait for the trainer. With a ``reference`` curve, SIGTERM it (it saves a checkpoint and stops as cancelled)
    once should_prune says so; True when it was signalled. Its first PRUNE_EVALS evaluations decide."""
    while process.poll() is None:
        time.sleep(POLL_SECONDS)
        evals = [point for point in eval_losses(run.read_events()) if point[0] > 0] if reference else []
        if evals and should_prune(evals, reference):
            process.send_signal(signal.SIGTERM)
            process.wait()
            return True
        if len(evals) >= PRUNE_EVALS:
            reference = []  # kept: no need to read its events again
    return False


def format_table(experiment: Experiment, record: dict) -> str:
    """Run, varied settings, primary metric and state of every point, the best marked ★."""
    metric = record.get("primary_metric") or "score"
    rows = [("", "run", "settings", metric, "state")]
    for name, point in (record.get("points") or {}).items():
        run = RunDirectory(experiment.path / name)
        value = primary_value(run.read_metrics(), metric)
        state = "pruned" if name in (record.get("pruned") or []) else run.read_status().get("state", "not run")
        rows.append(
            (
                "★" if name == record.get("best") else "",
                name,
                " ".join(f"{k}={v}" for k, v in point.items()),
                "" if value is None else f"{value:.4g}",
                state,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    return "\n".join(lines) + f"\n★ best {metric} among finished runs ({direction} is better)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        required=True,
        help="YAML of the settings every run shares; its output_dir holds the experiment's folder",
    )
    parser.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="settings to vary (TrainConfig fields), each with its comma-separated values",
    )
    parser.add_argument("--random", type=int, metavar="N", help="run N distinct points drawn from the grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random draw (default 0)")
    parser.add_argument(
        "--experiment", help="the experiment's name (default: the YAML's experiment_name, else sweep-DATE-TIME)"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help=f"stop a run whose first {PRUNE_EVALS} evaluations "
        f"have an eval loss over {PRUNE_MARGIN:.0%} above the best finished run's",
    )
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sweep = plan(args.config, args.grid, args.random, args.seed, args.experiment)
    except UserError as err:  # ConfigError included: every bad key or value, nothing written
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Experiment {sweep.experiment.name}: {len(sweep.points)} runs in {sweep.experiment.path}", flush=True)
    try:
        record = run_sweep(sweep, args.prune)
    except KeyboardInterrupt:
        print(format_table(sweep.experiment, sweep.experiment.read()))
        print("error: interrupted; the run in progress saved a checkpoint and stopped", file=sys.stderr)
        return 130
    print(format_table(sweep.experiment, record))
    return 0 if record.get("best") else 1
