"""How sure a run's change of score is: bootstrap confidence intervals of the base model's, the fine-tuned model's and
their paired difference's scores, resampled from the per-example results of the evaluation passes, and their wording
(the Runs page, Compare and the model card say it alike).

Numpy only, no torch: the web app imports this module on page load (finetune/metrics/ would pull in torch and
evaluate through its package). The resamples are those of the evaluation set's units: an example of classification,
a block (sequence) of causal LM, so that perplexity's interval resamples whole sequences, not tokens apart.
"""

import math
from typing import Optional

import numpy as np

from finetune.task_kinds import LOWER_IS_BETTER, primary_metric

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0  # fixed: the same run's results give the same interval whenever they are computed
# Where the scores were taken, as the verdict names it, and the file that would tell more.
SPLITS = {"validation": ("validation split", "validation file"), "test": ("test file", "test file")}


def per_example(gathered: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The units the bootstrap resamples, from engine.predict's gathered outputs: per example of classification its
    loss (nats), prediction and label; per block of causal LM its summed token loss (nats), scored tokens and correctly
    predicted ones (the tasks' eval_step: per-token rows of "losses" only for causal LM)."""
    if "losses" in gathered:
        scored = gathered["references"] != -100
        return {
            "loss_sum": np.where(scored, gathered["losses"], 0.0).sum(axis=1, dtype=np.float64),
            "tokens": scored.sum(axis=1),
            "correct": ((gathered["predictions"] == gathered["references"]) & scored).sum(axis=1),
        }
    return {key: gathered[key] for key in ("loss", "predictions", "references")}


def resample_weights(size: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, size): how often each of ``size`` units is drawn in each resample of ``size`` draws."""
    return np.random.default_rng(seed).multinomial(size, np.full(size, 1 / size), size=resamples).astype(np.float64)


def scores(examples: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of ``examples`` under each row of ``weights`` (draws per unit), as the tasks' compute_metrics
    score them: a row of ones gives metrics.json's values."""
    if "tokens" not in examples:
        return _classification_scores(examples, weights)
    tokens = weights @ examples["tokens"]
    loss = weights @ examples["loss_sum"] / tokens  # mean per-token loss, nats
    with np.errstate(over="ignore"):  # the perplexity metric reports an overflow as inf too
        perplexity = np.exp(loss)
    return {"eval_loss": loss, "perplexity": perplexity, "next_token_accuracy": weights @ examples["correct"] / tokens}


def _classification_scores(examples: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """eval_loss, accuracy and the macro averages over the classes present in labels or predictions (scikit-learn's
    default, a class without predictions or labels scoring 0), from per-class counts of each resample."""
    predictions, references = examples["predictions"].astype(int), examples["references"].astype(int)
    classes = np.arange(max(predictions.max(), references.max()) + 1)
    labelled = references[:, None] == classes
    true, predicted = weights @ labelled, weights @ (predictions[:, None] == classes)
    hits = weights @ (labelled & (predictions == references)[:, None])
    present = ((true + predicted) > 0).sum(axis=1)
    drawn = weights.sum(axis=1)

    def macro(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        per_class = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        return per_class.sum(axis=1) / present

    return {
        "eval_loss": weights @ examples["loss"] / drawn,
        "accuracy": hits.sum(axis=1) / drawn,
        "f1": macro(2 * hits, true + predicted),
        "precision": macro(hits, predicted),
        "recall": macro(hits, true),
    }


def paired(base: dict[str, np.ndarray], finetuned: dict[str, np.ndarray]) -> bool:
    """True when both passes scored the same units in the same order (labels, or tokens per block, alike)."""
    key = "tokens" if "tokens" in finetuned else "references"
    return base.keys() == finetuned.keys() and np.array_equal(base[key], finetuned[key])


def bootstrap(base: Optional[dict], finetuned: dict, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """metrics.json's "intervals": {"level", "resamples", "examples", "finetuned": {metric: [lo, hi]}, "base",
    "delta"}, percentile intervals. The difference resamples the same units for both models (paired), which cancels
    what the two share (the hard examples); without the base model's results, or on other units, only its own."""
    size = len(finetuned["tokens" if "tokens" in finetuned else "references"])
    weights = resample_weights(size, resamples, seed)
    found = {"finetuned": scores(finetuned, weights)}
    if base is not None and paired(base, finetuned):
        found["base"] = scores(base, weights)
        found["delta"] = {metric: found["finetuned"][metric] - found["base"][metric] for metric in found["base"]}
    bounds = {part: {metric: _bounds(values) for metric, values in found[part].items()} for part in found}
    return {"level": LEVEL, "resamples": resamples, "examples": size, **bounds}


def _bounds(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def changes(section: dict) -> dict[str, str]:
    """{metric: "+0.12 [0.07, 0.17]"}: the fine-tuned minus the base score, and its interval, of each metric that
    ``section`` (metrics.json, or its "test" part) has an interval of; {} for runs from before intervals."""
    found = {}
    for metric, change in _deltas(section).items():
        found[metric] = change_text(change, section["intervals"]["delta"][metric])
    return found


def change_text(change: float, bounds: list[float]) -> str:
    """ "+0.12 [0.07, 0.17]": as many decimals as show the interval's width to two digits."""
    decimals = _decimals(bounds)
    return f"{change:+.{decimals}f} [{bounds[0]:.{decimals}f}, {bounds[1]:.{decimals}f}]"


def _decimals(bounds: list[float]) -> int:
    width = abs(bounds[1] - bounds[0])
    return min(4, max(0, 1 - math.floor(math.log10(width)))) if math.isfinite(width) and width > 0 else 2


def delta_bounds(section: dict) -> dict[str, list[float]]:
    """{metric: [low, high]} of the difference intervals stored in ``section`` (metrics.json or its "test" part); {}
    for a run from before intervals, and without any garbled entry."""
    stored = section.get("intervals") if isinstance(section, dict) else None
    delta = stored.get("delta") if isinstance(stored, dict) else None
    return {
        metric: bounds for metric, bounds in (delta if isinstance(delta, dict) else {}).items() if _is_bounds(bounds)
    }


def _deltas(section: dict) -> dict[str, float]:
    """fine-tuned minus base, of the metrics whose difference ``section`` holds an interval of."""
    base, tuned = section.get("base") or {}, section.get("finetuned") or {}
    return {
        metric: tuned[metric] - base[metric]
        for metric in delta_bounds(section)
        if _is_number(base.get(metric)) and _is_number(tuned.get(metric))
    }


def verdict(section: dict, task: Optional[str], split: str = "validation") -> Optional[str]:
    """In plain words, whether fine-tuning changed the task's main metric on ``split`` ("validation" or "test") beyond
    what the split's size leaves to chance; None without an interval of it."""
    metric = primary_metric(task)
    change = _deltas(section).get(metric)
    if change is None:
        return None
    low, high = section["intervals"]["delta"][metric]
    where, larger = SPLITS[split]
    examples = section["intervals"].get("examples")
    counted = f" ({examples} examples)" if isinstance(examples, int) else ""
    if low <= 0 <= high:
        return (
            f"The difference in {metric} is within noise: the {where}{counted} is too small to tell; "
            f"a larger {larger} would."
        )
    better = (change < 0) == (metric in LOWER_IS_BETTER)
    moved = "improved" if better else "worsened"
    return f"On the {where}, fine-tuning {moved} {metric} by {change_text(change, [low, high])}."


def card_lines(metrics: dict) -> list[str]:
    """The model card's lines of a run's metrics.json: per metric with an interval "accuracy: 0.53 -> 0.94, +0.41
    [0.33, 0.49] (95% bootstrap)" (those on a test file prefixed "test "), then the verdicts; [] without intervals."""
    lines, verdicts = [], []
    for split, section, prefix in (("validation", metrics, ""), ("test", metrics.get("test") or {}, "test ")):
        for metric, change in _deltas(section).items():
            stored = section["intervals"]
            bounds, decimals = stored["delta"][metric], _decimals(stored["delta"][metric])
            scores = f"{section['base'][metric]:.{decimals}f} -> {section['finetuned'][metric]:.{decimals}f}"
            level = round(100 * stored.get("level", LEVEL))
            lines.append(f"{prefix}{metric}: {scores}, {change_text(change, bounds)} ({level}% bootstrap)")
        verdicts.append(verdict(section, metrics.get("task"), split))
    return lines + [line for line in verdicts if line]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_bounds(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value) and value[0] <= value[1]
