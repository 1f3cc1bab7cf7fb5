"""Reading what each side of benchmarks.vs_trainer reported, and the figures and table made from it."""

import json
import statistics
from pathlib import Path
from typing import Optional

from benchmarks.vs_trainer_jobs import VARIANTS, Job

RESULT_PREFIX = "REFERENCE_RESULT "  # benchmarks.reference_trainer's last stdout line


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_ours(output_dir: Path) -> dict:
    """Figures from LoRA Lab's run directory (events.jsonl, metrics.json)."""
    events = _read_jsonl(output_dir / "events.jsonl")
    train = [e for e in events if e.get("event") == "train"]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    last = train[-1] if train else {}
    return {
        "train_samples_per_second": last.get("samples_per_second", metrics.get("train_samples_per_second")),
        "train_tokens_per_second": last.get("tokens_per_second"),
        "eval": metrics.get("finetuned") or {},
        "base_eval": metrics.get("base"),
        "last_train_event": last,
        "peak_gpu_mib": metrics.get("peak_memory_mb") if "cuda" in str(metrics.get("device")) else None,
        "metrics": {k: v for k, v in metrics.items() if k not in ("base", "finetuned")},
    }


def read_reference(log: Path) -> dict:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"no {RESULT_PREFIX.strip()} line in {log}")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["eval"] = {k.removeprefix("eval_") if k != "eval_loss" else k: v for k, v in result["eval"].items()}
    return result


COLUMNS = ("samples_s", "tokens_s", "wall_s", "peak_mib", "metric")


def primary_metric(job: Job) -> str:
    return "perplexity" if job.task == "causal-lm" else "accuracy"


def figures(outcome: dict, job: Job, device: str, tokens_per_example: Optional[float]) -> dict:
    """The table's figures of one successful run (None where not measured)."""
    samples = outcome.get("train_samples_per_second")
    tokens = outcome.get("train_tokens_per_second")  # the engine's own count, if it logs one
    if tokens is None and samples is not None and job.task != "image-classification" and tokens_per_example:
        tokens = samples * tokens_per_example
    peak = outcome.get("peak_gpu_mib") if device == "cuda" else outcome["peak_rss_mib"]
    return {
        "samples_s": samples,
        "tokens_s": tokens,
        "wall_s": outcome["wall_s"],
        "peak_mib": peak,
        "metric": outcome["eval"].get(primary_metric(job)),
        "eval_loss": outcome["eval"].get("eval_loss"),
    }


def _median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(job: Job, runs: list[dict], device: str) -> dict:
    """Medians per variant and the median of per-repeat ours/reference ratios, per column."""
    ok = [r for r in runs if "error" not in r]
    tokens_per_example = _median([r.get("tokens_per_example") for r in ok if r["variant"] == "reference"])
    by_variant = {
        v: [
            figures(r, job, device, tokens_per_example) if "error" not in r else None for r in runs if r["variant"] == v
        ]
        for v in VARIANTS
    }
    summary = {
        "family": job.family,
        "metric": primary_metric(job),
        "tokens_per_example": tokens_per_example,
        "failed": {v: sum(f is None for f in by_variant[v]) for v in VARIANTS},
    }
    for v in VARIANTS:
        done = [f for f in by_variant[v] if f is not None]
        summary[v] = {c: _median([f[c] for f in done]) for c in (*COLUMNS, "eval_loss")}
    pairs = [(a, b) for a, b in zip(by_variant["ours"], by_variant["reference"]) if a and b]
    summary["ratio"] = {c: _median([a[c] / b[c] for a, b in pairs if a[c] is not None and b[c]]) for c in COLUMNS}
    return summary


def cell(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def _metric_cell(summary: dict, figures_: dict) -> str:
    if figures_["metric"] is None:
        return "failed" if figures_["samples_s"] is None else "-"
    name = summary["metric"]
    if name == "perplexity":
        return f"perplexity {cell(figures_['metric'])} (loss {cell(figures_['eval_loss'], 3)})"
    return f"accuracy {figures_['metric']:.3f}"


def table(summaries: list[dict], device: str, repeats: int) -> str:
    memory = "peak GPU MiB" if device == "cuda" else "peak RSS MiB"
    lines = [
        f"| family | variant | train samples/s | train tokens/s | wall s | {memory} | eval metric |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summaries:
        for v in VARIANTS:
            f, failed = s[v], f" ({s['failed'][v]} of {repeats} failed)" if s["failed"][v] else ""
            lines.append(
                f"| {s['family']} | {v}{failed} | {cell(f['samples_s'])} | {cell(f['tokens_s'], 0)} | "
                f"{cell(f['wall_s'])} | {cell(f['peak_mib'], 0)} | {_metric_cell(s, f)} |"
            )
        r = s["ratio"]
        lines.append(
            f"| {s['family']} | ours/reference | {cell(r['samples_s'], 2)} | {cell(r['tokens_s'], 2)} | "
            f"{cell(r['wall_s'], 2)} | {cell(r['peak_mib'], 2)} | {s['metric']} {cell(r['metric'], 2)} |"
        )
    lines += [
        "",
        f"Medians over {repeats} repeat(s); ratios are the median of per-repeat ours/reference ratios "
        "(above 1: ours has more samples/s, or takes longer, or uses more memory).",
    ]
    return "\n".join(lines)
