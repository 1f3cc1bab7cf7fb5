"""Compare runs side by side: config differences, base vs fine-tuned metrics (on a test file too), cost.

    python -m evaluation.compare RUN_DIR [RUN_DIR ...] [--format markdown|csv|json] [--plot out.png]

The Python API (``load_runs``, ``compare_runs``, ``curves``, ``best_runs``, ``best_by``, ``plot_curves``) returns
pandas DataFrames for the web app. It reads only run directories (docs/run-directory.md).
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from evaluation.figures import percent, rate
from finetune.errors import UserError
from finetune.rundir import FINISHED, THROUGHPUT_METRICS, RunDirectory
from finetune.sweep.experiment import best_run, primary_value
from finetune.task_kinds import LOWER_IS_BETTER, primary_metric
from finetune.training import intervals

# Settings that always differ between runs and say nothing about how they were trained.
NOT_SETTINGS = ("output_dir", "resume_from_checkpoint")
# What each run cost, by column, from metrics.json (the web app keeps these out of its headline table).
COST = {
    "best_step": "best_step",
    "wall_time_s": "train_runtime_seconds",
    "samples_per_s": "train_samples_per_second",
    "tokens_per_s": THROUGHPUT_METRICS["tokens_per_second"],
    "images_per_s": THROUGHPUT_METRICS["images_per_second"],
    "tflops": THROUGHPUT_METRICS["tflops"],
    "mfu": THROUGHPUT_METRICS["mfu"],
    "peak_memory_mb": "peak_memory_mb",
    "trainable_percent": "trainable_percent",
}
# Throughput that only some runs have (tokens for text tasks, images for image tasks, TFLOP/s and MFU on CUDA,
# none in runs older than these figures): a column no compared run has says nothing, so it is left out.
OPTIONAL_COST = ("tokens_per_s", "images_per_s", "tflops", "mfu")
# Prefix of the scores on a test file the user gave (metrics.json's optional "test" section, same metrics as
# "base" and "finetuned"), kept apart from the validation split's scores that rank runs.
TEST = "test_"
# Suffixes of a delta's bootstrap interval bounds (metrics.json's "intervals"): delta_accuracy_low, delta_accuracy_high.
LOW, HIGH = "_low", "_high"


@dataclass
class Run:
    """One run directory, read once."""

    name: str
    path: Path
    state: str
    error: Optional[str]
    config: dict
    metrics: dict
    events: list[dict]


def load_run(path: str | Path) -> Run:
    run = RunDirectory(path)
    if not run.is_run():
        raise UserError(f"{path} is not a run directory: expected config.yaml or status.json in it")
    status = run.read_status()
    return Run(
        name=run.path.name,
        path=run.path,
        state=status.get("state", "unknown"),
        error=status.get("error"),
        config=run.read_config(),
        metrics=run.read_metrics(),
        events=run.read_events(),
    )


def load_runs(paths: list[str | Path]) -> list[Run]:
    return [load_run(p) for p in paths]


def config_diff(runs: list[Run]) -> pd.DataFrame:
    """The settings whose values differ between runs (one row per run); file paths shown by their last parts."""
    table = pd.DataFrame(
        [{k: v for k, v in r.config.items() if k not in NOT_SETTINGS} for r in runs], index=[r.name for r in runs]
    )
    differing = [c for c in table.columns if table[c].astype(str).nunique(dropna=False) > 1]
    return table[differing].apply(lambda column: column.map(_short_path))


def _short_path(value):
    """An absolute path's file name (with its folder when the name alone says little, as for uploads)."""
    if not (isinstance(value, str) and Path(value).is_absolute()):
        return value
    path = Path(value)
    generic = path.name.startswith("upload.") or path.name in ("unpacked", "adapter")
    return f"{path.parent.name[:8]}…/{path.name}" if generic else path.name


def _scores(metrics: dict) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}


def compare_runs(runs: list[Run]) -> pd.DataFrame:
    """One row per run: state, differing settings, base/finetuned/delta per metric (then the same on the user's
    test file, prefixed TEST, for runs that have one), best step and cost."""
    rows = []
    for run in runs:
        test = run.metrics.get("test") or {}
        row = {"run": run.name, "state": run.state}
        row.update(_score_columns(run.metrics))
        row.update(_score_columns(test, TEST))
        row.update({column: run.metrics.get(key) for column, key in COST.items()})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("run")
    table = table.drop(columns=[c for c in OPTIONAL_COST if table[c].isna().all()])
    # Cost last: a run with test scores listed after one without would otherwise put its test columns after it.
    scores = [c for c in table.columns if c != "state" and c not in COST]
    cost = [c for c in table.columns if c in COST]
    return pd.concat([table[["state"]], config_diff(runs), table[scores + cost]], axis=1).rename_axis("run")


def _score_columns(section: dict, prefix: str = "") -> dict:
    """``prefix``base_, ``prefix``finetuned_ and ``prefix``delta_ of each metric in either of ``section``'s scores
    (metrics.json, or its "test" part), and the delta's 95% bootstrap interval, ``prefix``delta_METRIC_low and _high,
    where the run kept one."""
    base, tuned = _scores(section.get("base")), _scores(section.get("finetuned"))
    bounds = intervals.delta_bounds(section)
    row = {}
    for metric in sorted(set(base) | set(tuned)):
        row[f"{prefix}base_{metric}"], row[f"{prefix}finetuned_{metric}"] = base.get(metric), tuned.get(metric)
        if metric in base and metric in tuned:
            row[f"{prefix}delta_{metric}"] = tuned[metric] - base[metric]
            if metric in bounds:
                row[f"{prefix}delta_{metric}{LOW}"], row[f"{prefix}delta_{metric}{HIGH}"] = bounds[metric]
    return row


def delta_cell(table: pd.DataFrame, run: str, column: str):
    """The ``column`` (a delta) of ``run`` as "+0.12 [0.07, 0.17]" where the run kept its interval, else the number."""
    value = table.loc[run, column]
    low, high = (table.loc[run, f"{column}{end}"] if f"{column}{end}" in table.columns else None for end in (LOW, HIGH))
    if _missing(value) or _missing(low) or _missing(high):
        return value
    return intervals.change_text(value, [low, high])


def best_runs(table: pd.DataFrame) -> dict[str, str]:
    """For each fine-tuned metric, the run that scored best."""
    best = {}
    for column in [c for c in table.columns if c.startswith("finetuned_")]:
        values = pd.to_numeric(table[column], errors="coerce").dropna()
        if values.empty:
            continue
        metric = column.removeprefix("finetuned_")
        best[metric] = values.idxmin() if metric in LOWER_IS_BETTER else values.idxmax()
    return best


def best_by(runs: list[Run], metric: str) -> Optional[str]:
    """The finished run with the best fine-tuned ``metric`` (lower is better for LOWER_IS_BETTER), by name; None
    when no run has it. Sweeps rank their runs the same way (finetune.sweep.experiment)."""
    return best_run(
        {run.name: primary_value(run.metrics, metric) if run.state == FINISHED else None for run in runs}, metric
    )


def curves(runs: list[Run]) -> pd.DataFrame:
    """Long table of every logged scalar: run, event (train|eval), step, metric, value."""
    rows = [
        {"run": run.name, "event": e.get("event"), "step": e.get("step"), "metric": key, "value": value}
        for run in runs
        for e in run.events
        for key, value in e.items()
        if key not in ("event", "step", "time") and isinstance(value, (int, float))
    ]
    table = pd.DataFrame(rows, columns=["run", "event", "step", "metric", "value"])
    # A resumed run logs some steps twice: keep the last record of each.
    return table.drop_duplicates(["run", "event", "step", "metric"], keep="last")


def plot_curves(runs: list[Run], out_path: str | Path) -> Path:
    """Eval loss and the primary metric against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    table = curves(runs)
    evals = table[table["event"] == "eval"]
    task = next((r.metrics.get("task") or r.config.get("task") for r in runs), None)
    panels = ["eval_loss", primary_metric(task, "accuracy")]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, panels):
        for name, group in evals[evals["metric"] == metric].groupby("run"):
            axis.plot(group["step"], group["value"], marker="o", label=name)
        axis.set(title=metric, xlabel="step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return Path(out_path)


def format_table(table: pd.DataFrame, fmt: str, headers: Optional[dict[str, str]] = None) -> str:
    """The table as csv, json or markdown (best fine-tuned values in bold; ``headers`` renames columns)."""
    if fmt == "csv":
        return table.to_csv()
    if fmt == "json":
        return table.reset_index().to_json(orient="records", indent=2)
    marked = table.copy().astype(object)
    for metric, run in best_runs(table).items():
        marked.loc[run, f"finetuned_{metric}"] = f"**{_fmt(table.loc[run, f'finetuned_{metric}'])}**"
    shown = marked.map(_fmt)
    for column, shown_as in [(c, f) for c, f in SHOWN_AS.items() if c in table.columns]:
        shown[column] = ["" if _missing(value) else shown_as(value) for value in table[column]]
    return shown.rename(columns=headers or {}).to_markdown() + "\n\n**bold**: best fine-tuned value per metric.\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _missing(value) -> bool:
    return not isinstance(value, (int, float)) or pd.isna(value)


# Markdown only (csv and json keep the raw numbers), worded as the Runs page words them: MFU, a fraction 0..1,
# as a percentage; rates in the tens of thousands in full, where 4 significant digits would write them in
# scientific notation.
SHOWN_AS = {"tokens_per_s": rate, "images_per_s": rate, "mfu": percent}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (output_dir of each run)")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--plot", help="write eval loss and the primary metric against step to this PNG")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(compare_runs(runs), args.format))
    if args.plot:
        print(f"plot written to {plot_curves(runs, args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
