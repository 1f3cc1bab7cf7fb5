"""What the Compare page shows: which runs it opens on, and per task the comparison tables, curves and confusion
matrices (metrics of different tasks don't compare: each task gets its own tables, on its own main metric).

Tables come from evaluation.compare as pandas DataFrames, ready to lay out; nothing here imports streamlit.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from evaluation.compare import (
    TEST,
    Run,
    best_by,
    compare_runs,
    config_diff,
    curves,
    delta_cell,
    format_table,
    load_runs,
)
from finetune.rundir import FINISHED, RunDirectory
from finetune.task_kinds import LOWER_IS_BETTER, TASKS, primary_metric
from webapp.services import sweeps
from webapp.services.runs import RunSummary

MAX_DEFAULT_RUNS = 6
# Short headers ("acc base", "acc tuned", "acc Δ"): a run's row must fit a 1280 px window without scrolling.
SHORT = {"accuracy": "acc", "eval_loss": "loss", "perplexity": "ppl"}
KINDS = (("base", "base"), ("finetuned", "tuned"), ("delta", "Δ"))
# Longest run name or setting value the headline shows whole; longer ones are cut in the middle, the full names
# are in the table of every metric.
MAX_NAME = 24
MISSING = "—"


@dataclass
class Comparison:
    task: Optional[str]
    title: str  # the task and the metric that ranks its runs
    primary: str  # the task's main metric: the curve shown first
    headline: str  # markdown: base / fine-tuned / delta of the main metric and eval loss, the settings that differ
    test: Optional[str]  # markdown: the same scores on the users' test files; None when no compared run has one
    details: pd.DataFrame  # every metric, setting, cost and throughput of each run, full names, numbers rounded
    csv: str  # the whole table, unrounded
    evals: pd.DataFrame  # curves of the evaluation metrics: run, event, step, metric, value
    train_loss: pd.DataFrame  # the train loss curves, as ``evals``
    matrices: list[tuple[str, list, list[list[int]]]]  # (run name, labels, fine-tuned confusion matrix)
    best: Optional[str] = None  # the run with the best fine-tuned primary metric (marked ★ in the headline)


def default_choice(summaries: list[RunSummary]) -> list[str]:
    """The refs the page opens on: the finished runs of the newest finished run's task (metrics of different
    tasks don't compare); none when no run has finished."""
    finished = [s for s in summaries if s.state == FINISHED]
    return [s.ref for s in finished if s.task == finished[0].task][:MAX_DEFAULT_RUNS] if finished else []


def experiment_choices(summaries: list[RunSummary]) -> dict[str, tuple[Optional[str], list[str]]]:
    """(task, refs) of each experiment among ``summaries`` (newest first): picking one compares its runs."""
    return {found.name: (found.task, found.refs) for found in sweeps.experiments(summaries)}


def compare_by_task(chosen: list[RunSummary]) -> list[Comparison]:
    """The runs ``chosen``, one comparison per task, in the order the tasks first come among them."""
    groups: dict[Optional[str], list[RunSummary]] = {}
    for summary in chosen:
        groups.setdefault(summary.task, []).append(summary)
    return [compare(group, task) for task, group in groups.items()]


def compare(chosen: list[RunSummary], task: Optional[str]) -> Comparison:
    """The runs ``chosen`` (all of ``task``) side by side, headlined by ``task``'s main metric."""
    selected = load_runs([s.path for s in chosen])
    table = compare_runs(selected)
    primary = primary_metric(task)
    best = best_by(selected, primary)
    long = curves(selected)
    matrices = [(run.name, run.path, run.metrics.get("finetuned", {}).get("confusion_matrix")) for run in selected]
    return Comparison(
        task=task,
        title=_title(task, primary),
        primary=primary,
        headline=_headline(table, selected, primary, best),
        test=_test_scores(table, primary),
        details=table.map(_rounded),
        csv=table.to_csv(),
        evals=long[long.event == "eval"],
        train_loss=long[(long.event == "train") & (long.metric == "loss")],
        matrices=[(name, _labels(path, matrix), matrix) for name, path, matrix in matrices if matrix],
        best=best,
    )


def _title(task: Optional[str], primary: str) -> str:
    name = TASKS[task].title if task in TASKS else (task or "unknown task")
    better = "lower" if primary in LOWER_IS_BETTER else "higher"
    return f"{name.capitalize()}: ranked by {primary} ({better} is better)"


def _scores(primary: str, prefix: str = "") -> dict[str, str]:
    """Base / fine-tuned / delta columns of the main metric and eval loss, with their short headers."""
    return {
        f"{prefix}{kind}_{metric}": f"{SHORT.get(metric, metric)} {label}"
        for metric in dict.fromkeys((primary, "eval_loss"))
        for kind, label in KINDS
    }


def _headline(table: pd.DataFrame, runs: list[Run], primary: str, best: Optional[str]) -> str:
    """★, run, state (where a run is not finished), the scores, and the settings that differ in one column:
    one column per setting would push the table past the window's edge, one cell wraps between settings.
    Cost and throughput are left to the table of every metric."""
    headers = _scores(primary)
    shown = _with_intervals(table, [c for c in headers if c in table.columns])
    if (table["state"] != FINISHED).any():
        shown.insert(0, "state", table["state"])
    settings = config_diff(runs)
    if not settings.empty:
        shown["settings"] = [
            ", ".join(f"{key}: {_short(_value(v))}" for key, v in row.items()) for _, row in settings.iterrows()
        ]
    shown.insert(0, "★", ["★" if name == best else "" for name in table.index])  # the best by the primary metric
    shown.index = pd.Index(_names(list(shown.index)), name="run")
    return format_table(shown, "markdown", headers)


def _test_scores(table: pd.DataFrame, primary: str) -> Optional[str]:
    """The headline's scores on the users' test files, "—" for runs without one; None when no run has one."""
    headers = {column: f"test {label}" for column, label in _scores(primary, TEST).items() if column in table.columns}
    if not headers:
        return None
    shown = _with_intervals(table, list(headers)).map(lambda value: MISSING if _blank(value) else _value(value))
    shown.index = pd.Index(_names(list(shown.index)), name="run")
    return shown.rename(columns=headers).to_markdown()


def _with_intervals(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``table``'s ``columns``, each Δ cell as "+0.12 [0.07, 0.17]" where the run kept its bootstrap interval."""
    shown = table[columns].copy().astype(object)
    for column in [c for c in columns if c.removeprefix(TEST).startswith("delta_")]:
        shown[column] = [delta_cell(table, run, column) for run in table.index]
    return shown


def _blank(value) -> bool:
    return not isinstance(value, str) and pd.isna(value)


def _value(value) -> str:
    if isinstance(value, float):
        return MISSING if pd.isna(value) else f"{value:.4g}"
    return MISSING if value is None else str(value)


def _names(names: list[str]) -> list[str]:
    """Run names cut to MAX_NAME characters, or longer where two would read alike (runs of a sweep share their
    start and often their end): the rows must stay told apart."""
    for width in range(MAX_NAME, max(map(len, names)) + 1):
        cut = [_short(name, width) for name in names]
        if len(set(cut)) == len(cut):
            return cut
    return names


def _short(text: str, width: int = MAX_NAME) -> str:
    """``text`` cut in the middle to ``width`` characters."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-half:]}"


def _rounded(value):
    """Floats to 4 significant digits, for reading (the csv keeps them whole)."""
    return float(f"{value:.4g}") if isinstance(value, float) and not pd.isna(value) else value


def _labels(run_path: Path, matrix: list[list[int]]) -> list:
    """The run's class names (adapter/lora_lab.json), or class ids where it has none."""
    return RunDirectory(run_path).read_adapter_info().get("labels") or list(range(len(matrix)))
