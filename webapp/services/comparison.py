"""What the Compare page shows: which runs it opens on, the comparison tables, the curves and the confusion matrices.

Tables come from evaluation.compare as pandas DataFrames, ready to lay out; nothing here imports streamlit.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from evaluation.compare import COST, best_by, compare_runs, curves, format_table, load_runs
from finetune.rundir import FINISHED, RunDirectory
from finetune.task_kinds import primary_metric
from webapp.services import sweeps
from webapp.services.runs import RunSummary

MAX_DEFAULT_RUNS = 6
# Short headers ("acc base", "acc tuned", "acc Δ"): a run's row must fit a 1280 px window without scrolling.
SHORT = {"accuracy": "acc", "eval_loss": "loss", "perplexity": "ppl"}


@dataclass
class Comparison:
    primary: str  # the task's main metric: the curve shown first
    headline: str  # markdown: base / fine-tuned / delta of the main metric and eval loss, then the settings that differ
    everything: str  # markdown: every metric, and the cost and throughput of each run
    csv: str  # the whole table
    evals: pd.DataFrame  # curves of the evaluation metrics: run, event, step, metric, value
    train_loss: pd.DataFrame  # the train loss curves, as ``evals``
    matrices: list[tuple[str, list, list[list[int]]]]  # (run name, labels, fine-tuned confusion matrix)
    best: Optional[str] = None  # the run with the best fine-tuned primary metric (marked ★ in the headline)


def default_choice(summaries: list[RunSummary]) -> tuple[Optional[str], list[str]]:
    """(task, refs) the page opens on: the finished runs of the newest finished run's task (metrics of different
    tasks don't compare); ``summaries`` newest first and not empty."""
    finished = [s for s in summaries if s.state == FINISHED]
    task = finished[0].task if finished else summaries[0].task
    return task, [s.ref for s in finished if s.task == task][:MAX_DEFAULT_RUNS]


def experiment_choices(summaries: list[RunSummary]) -> dict[str, tuple[Optional[str], list[str]]]:
    """(task, refs) of each experiment among ``summaries`` (newest first): picking one compares its runs."""
    return {found.name: (found.task, found.refs) for found in sweeps.experiments(summaries)}


def compare(chosen: list[RunSummary], task: Optional[str]) -> Comparison:
    """The runs ``chosen`` side by side, headlined by ``task``'s main metric."""
    selected = load_runs([s.path for s in chosen])
    table = compare_runs(selected)
    primary = primary_metric(task)
    # The headline: base / fine-tuned / delta of the task's main metric and eval loss first (what a reader compares),
    # then the settings that differ; everything else is in the full table.
    headline = ["state"] + [
        f"{kind}_{metric}"
        for metric in dict.fromkeys((primary, "eval_loss"))
        for kind in ("base", "finetuned", "delta")
        if f"{kind}_{metric}" in table.columns
    ]
    headline += [
        c
        for c in table.columns
        if c not in headline and not c.startswith(("base_", "finetuned_", "delta_")) and c not in COST
    ]  # cost and throughput columns would push the row past 1280 px
    headers = {
        f"{kind}_{metric}": f"{SHORT.get(metric, metric)} {label}"
        for metric in (primary, "eval_loss")
        for kind, label in (("base", "base"), ("finetuned", "tuned"), ("delta", "Δ"))
    }
    best = best_by(selected, primary)
    shown = table[headline].copy()
    shown.insert(0, "★", ["★" if name == best else "" for name in table.index])  # the best by the primary metric
    long = curves(selected)
    matrices = [(run.name, run.path, run.metrics.get("finetuned", {}).get("confusion_matrix")) for run in selected]
    return Comparison(
        primary=primary,
        headline=format_table(shown, "markdown", headers),
        everything=format_table(table, "markdown"),
        csv=table.to_csv(),
        evals=long[long.event == "eval"],
        train_loss=long[(long.event == "train") & (long.metric == "loss")],
        matrices=[(name, _labels(path, matrix), matrix) for name, path, matrix in matrices if matrix],
        best=best,
    )


def _labels(run_path: Path, matrix: list[list[int]]) -> list:
    """The run's class names (adapter/lora_lab.json), or class ids where it has none."""
    return RunDirectory(run_path).read_adapter_info().get("labels") or list(range(len(matrix)))
