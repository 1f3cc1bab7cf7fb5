"""The project's metrics, shipped as `evaluate` modules so that scoring never needs the Hugging Face Hub.

`load_metric("f1")` loads the script bundled here by path; any other name goes to `evaluate.load`, i.e. the hub,
which works only online. The trainer and the evaluator score through `classification_metrics` and
`causal_lm_metrics`, which run these modules; there is no second implementation of any score.

For evaluation sets too large to score at once, load a metric and feed it in pieces::

    metric = load_metric("perplexity")
    for batch_losses in batches:
        metric.add_batch(losses=batch_losses)
    metric.compute()
"""

from collections.abc import Sequence
from pathlib import Path

import evaluate
import huggingface_hub.constants
import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
BUNDLED_METRICS = ("accuracy", "confusion_matrix", "f1", "perplexity", "precision", "recall")
# The scalar classification scores; f1, precision and recall average over classes (macro) by default.
CLASSIFICATION_SCORES = ("accuracy", "f1", "precision", "recall")


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """A bundled metric by name, loaded from its script here (no network); any other name from the hub.

    `kwargs` go to `evaluate.load`. Inputs are kept in memory unless `keep_in_memory=False` is given.
    """
    # evaluate's default buffers inputs in cache files guarded by file locks under ~/.cache/huggingface/metrics,
    # which concurrent runs share; our evaluation sets fit in memory.
    kwargs.setdefault("keep_in_memory", True)
    if name in BUNDLED_METRICS:
        return evaluate.load(str(METRICS_DIR / name / f"{name}.py"), **kwargs)
    if _hub_offline():
        raise ValueError(_not_found(name, "offline mode is on (HF_HUB_OFFLINE or HF_EVALUATE_OFFLINE)"))
    try:
        return evaluate.load(name, **kwargs)
    except (FileNotFoundError, ConnectionError) as err:
        raise ValueError(_not_found(name, f"the hub was not reachable or has no such metric ({err})")) from err


def _hub_offline() -> bool:
    # evaluate 0.4.6 honours only HF_EVALUATE_OFFLINE; with HF_HUB_OFFLINE alone it would still go to the network.
    return huggingface_hub.constants.HF_HUB_OFFLINE or evaluate.config.HF_EVALUATE_OFFLINE


def _not_found(name: str, reason: str) -> str:
    return f"Unknown metric {name!r}: the bundled metrics are {', '.join(BUNDLED_METRICS)}, and {reason}."


def classification_metrics(
    predictions: Sequence[int], references: Sequence[int], num_labels: int | None = None
) -> dict:
    """Accuracy, macro f1/precision/recall (over the classes present) and the confusion matrix.

    The confusion matrix has a row per true class and a column per predicted class: classes 0..num_labels-1
    when `num_labels` is given, else the classes present. All values are plain Python numbers.
    """
    predictions, references = _examples("classification_metrics", predictions=predictions, references=references)
    scores = evaluate.combine([load_metric(name) for name in CLASSIFICATION_SCORES]).compute(
        predictions=predictions, references=references
    )
    labels = None if num_labels is None else list(range(num_labels))
    matrix = load_metric("confusion_matrix").compute(predictions=predictions, references=references, labels=labels)
    return {**scores, **matrix}


def causal_lm_metrics(
    token_losses: Sequence[float], token_predictions: Sequence[int], token_references: Sequence[int]
) -> dict:
    """eval_loss (mean per-token negative log-likelihood, in nats), perplexity and next_token_accuracy.

    The inputs hold one entry per scored token, padding already masked out.
    """
    losses, predictions, references = _examples(
        "causal_lm_metrics",
        token_losses=token_losses,
        token_predictions=token_predictions,
        token_references=token_references,
    )
    perplexity = load_metric("perplexity").compute(losses=losses)
    accuracy = load_metric("accuracy").compute(predictions=predictions, references=references)
    return {
        "eval_loss": perplexity["loss"],
        "perplexity": perplexity["perplexity"],
        "next_token_accuracy": accuracy["accuracy"],
    }


def _examples(caller: str, **columns) -> list[list]:
    """The columns as lists after checking they are 1-D, equally long and not empty."""
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    shapes = {name: array.shape for name, array in arrays.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"{caller} needs 1-D inputs of equal length, got shapes {shapes}")
    if not next(iter(shapes.values()))[0]:
        raise ValueError(f"{caller} got no examples to score: {', '.join(columns)} are empty")
    # Python lists, because evaluate encodes them into Arrow faster than numpy scalars.
    return [array.tolist() for array in arrays.values()]
