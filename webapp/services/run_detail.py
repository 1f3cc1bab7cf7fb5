"""What the Runs page shows of the one run selected: its pace, its curves, its final metrics and its log.

Plain Python (no streamlit, no pandas): curves are lists of points, one {"step", "metric", "value"} per point,
that the page lays out as charts.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from evaluation.figures import percent, rate
from finetune.rundir import FINISHED, THROUGHPUT_METRICS, RunDirectory
from finetune.task_kinds import TASKS
from finetune.training import intervals
from webapp.runner import jobs
from webapp.services.runs import RunSummary

# The loss curves: (event, key in the event) -> the series' name on the chart.
LOSSES = {("train", "loss"): "train loss", ("eval", "eval_loss"): "eval loss"}


@dataclass
class Throughput:
    """How fast a run trains: figures of its latest train event, or of metrics.json once it has finished.

    Raw numbers (None where the trainer wrote none: older runs, CPU runs have no TFLOP/s or MFU) and their
    wording for the Runs page in ``text``.
    """

    tokens_per_second: Optional[float] = None  # text tasks: non-padding tokens
    images_per_second: Optional[float] = None  # image tasks
    tflops: Optional[float] = None  # achieved TFLOP/s per GPU (CUDA only)
    mfu: Optional[float] = None  # model FLOPs utilisation, 0..1 (CUDA only)
    gpu_name: Optional[str] = None  # metrics.json only
    whole_run: bool = False  # averages over the finished run, not the pace at the latest logged step

    @property
    def text(self) -> str:
        """E.g. "1,234 tokens/s · 12.3 TFLOP/s · MFU 38% on NVIDIA H100"."""
        parts = [
            f"{rate(value)} {unit}/s"
            for value, unit in (
                (self.tokens_per_second, "tokens"),
                (self.images_per_second, "images"),
                (self.tflops, "TFLOP"),
            )
            if value is not None
        ]
        if self.mfu is not None:
            parts.append(f"MFU {percent(self.mfu)}")
        return " · ".join(parts) + (f" on {self.gpu_name}" if self.gpu_name and parts else "")

    @property
    def basis(self) -> str:
        """What the figures average over: a live run's trainer reports its pace as of the latest logged step."""
        return "whole-run average" if self.whole_run else "latest logged step"


def throughput(state: str, events: list[dict], metrics: dict) -> Optional[Throughput]:
    """The run's throughput from what the Runs page has read already (no file read here); None when the
    trainer wrote no figures (a run from before they were logged, or one not yet past its first logged step).

    A finished run's metrics.json averages the whole run; otherwise the latest train event is the current pace.
    """
    if state == FINISHED:
        found = _figures(metrics or {}, THROUGHPUT_METRICS)
        if found:
            name = (metrics or {}).get("gpu_name")
            return Throughput(**found, gpu_name=name if isinstance(name, str) else None, whole_run=True)
    latest = next((e for e in reversed(events) if e.get("event") == "train"), {})
    found = _figures(latest, {field: field for field in THROUGHPUT_METRICS})  # named alike in a train event
    return Throughput(**found) if found else None


def _figures(record: dict, keys: dict[str, str]) -> dict[str, float]:
    """The figures ``record`` holds as finite non-negative numbers (a bool or a NaN is no figure)."""
    found = {}
    for field, key in keys.items():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            found[field] = float(value)
    return found


@dataclass
class RunDetail:
    throughput: Optional[Throughput]
    losses: list[dict]  # train and eval loss against step
    scores: list[dict]  # the task's curve metrics at each evaluation (one scale: TaskKind.curve_metrics)
    final: dict[str, dict]  # {"base model": {metric: value}, "fine-tuned": {...}} once finished, else {}
    test: dict[str, dict]  # the same on the test file the user gave (metrics.json's "test"), else {}
    log: str  # the last lines of the trainer's log (or the launcher's output)
    tracking: Optional[str] = None  # where report_to sent the run's logs, in words
    # Per split ("validation", "test"): each metric's change, fine-tuned minus base, with its 95% bootstrap interval
    # ({metric: "+0.12 [0.07, 0.17]"}), and the verdict on the main metric; {} and None for runs from before intervals.
    changes: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    verdicts: dict[str, Optional[str]] = dataclasses.field(default_factory=dict)


def detail(summary: RunSummary) -> RunDetail:
    """Everything shown below the progress bar of ``summary``'s run, read afresh (the page refreshes it live)."""
    run = RunDirectory(summary.path)
    events, metrics = run.read_events(), run.read_metrics()
    # One scale per chart: perplexity (1..vocab size) would flatten next-token accuracy (0..1).
    shown = TASKS[summary.task].curve_metrics if summary.task in TASKS else ()
    return RunDetail(
        throughput=throughput(summary.state, events, metrics),
        losses=[p for (event, key), name in LOSSES.items() for p in _series(events, event, key, name)],
        scores=[p for key in shown for p in _series(events, "eval", key, key)],
        final=_final(metrics),
        test=_final(metrics.get("test") if isinstance(metrics.get("test"), dict) else {}),
        log=jobs.log_tail(run),
        tracking=_tracking(run),
        changes={split: intervals.changes(section) for split, section in _sections(metrics).items()},
        verdicts={
            split: intervals.verdict(section, summary.task, split) for split, section in _sections(metrics).items()
        },
    )


def _sections(metrics: dict) -> dict[str, dict]:
    """metrics.json's scores by split: the validation split's at its top, the test file's under "test"."""
    test = metrics.get("test")
    return {"validation": metrics, "test": test if isinstance(test, dict) else {}}


def _tracking(run: RunDirectory) -> Optional[str]:
    """Where TensorBoard or MLflow logs of the run are (report_to), with the command that opens them."""
    report_to = run.read_config().get("report_to")
    if report_to == "tensorboard":
        return f"TensorBoard logs in `{run.tracking_dir}`: `tensorboard --logdir {run.tracking_dir}`"
    if report_to == "mlflow":
        return (
            "MLflow: the tracking server in MLFLOW_TRACKING_URI, else the local store in "
            f"`{run.tracking_dir}` (`mlflow ui --backend-store-uri {run.tracking_dir.as_uri()}`)"
        )
    return None


def _series(events: list[dict], event: str, key: str, name: str) -> list[dict]:
    """The points of ``key`` in the ``event`` records, in step order of logging; a resumed run logs some steps
    twice, and the last record of each counts."""
    points: dict = {}
    for record in events:
        value = record.get(key)
        if record.get("event") == event and isinstance(value, (int, float)):
            points.pop(record.get("step"), None)
            points[record.get("step")] = {"step": record.get("step"), "metric": name, "value": value}
    return list(points.values())


def _final(metrics: dict) -> dict[str, dict]:
    """Base model and fine-tuned scores side by side, by metric (the numbers the fine-tuned model has)."""
    tuned = metrics.get("finetuned")
    if not isinstance(tuned, dict) or not tuned:
        return {}
    base = metrics.get("base") if isinstance(metrics.get("base"), dict) else {}
    shown = [k for k, v in tuned.items() if isinstance(v, (int, float))]
    return {"base model": {k: base.get(k) for k in shown}, "fine-tuned": {k: tuned[k] for k in shown}}
