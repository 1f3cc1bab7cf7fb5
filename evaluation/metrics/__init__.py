"""Metrics as `evaluate` modules shipped with the project, so scoring works with no hub access.

``load_metric("accuracy")`` loads the bundled script by path; any other name goes to
``evaluate.load`` (a hub metric), which only works online. The trainer and the evaluator compute
every score through the two functions below: there is no second implementation.
"""

import functools
from pathlib import Path
from typing import Optional, Sequence

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
BUNDLED = tuple(sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file()))
# Scalar classification scores, each a macro average where averaging applies.
CLASSIFICATION_SCALARS = ("accuracy", "f1", "precision", "recall")


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """A bundled metric by name (offline), else a hub metric."""
    if name in BUNDLED:
        return _load_bundled(name) if not kwargs else evaluate.load(str(METRICS_DIR / name / f"{name}.py"), **kwargs)
    try:
        return evaluate.load(name, **kwargs)
    except Exception as err:  # evaluate raises ConnectionError, FileNotFoundError, ... offline
        raise ValueError(f"metric {name!r} is not bundled ({', '.join(BUNDLED)}) and could not be loaded "
                         f"from the hub ({type(err).__name__}: {err})") from err


@functools.cache
def _load_bundled(name: str) -> evaluate.EvaluationModule:
    # Loading copies and imports the script (~0.1 s); the trainer scores every epoch, so load once.
    return evaluate.load(str(METRICS_DIR / name / f"{name}.py"))


def _as_array(values, name: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: no examples to score; expected at least one prediction and reference")
    return array


def classification_metrics(predictions: Sequence[int], references: Sequence[int],
                           num_labels: Optional[int] = None) -> dict:
    """accuracy, macro f1/precision/recall and the confusion matrix (rows true, columns predicted)."""
    predictions, references = _as_array(predictions, "predictions"), _as_array(references, "references")
    if predictions.shape != references.shape:
        raise ValueError(f"predictions ({predictions.size}) and references ({references.size}) differ in length")
    combined = evaluate.combine([load_metric(name) for name in CLASSIFICATION_SCALARS])
    scores = combined.compute(predictions=predictions.tolist(), references=references.tolist())
    labels = list(range(num_labels)) if num_labels else None
    matrix = load_metric("confusion_matrix").compute(predictions=predictions.tolist(), references=references.tolist(),
                                                     labels=labels)
    return {**{k: float(v) for k, v in scores.items()}, **matrix}


def causal_lm_metrics(token_losses: Sequence[float], token_predictions: Sequence[int],
                      token_references: Sequence[int]) -> dict:
    """eval_loss (mean NLL per token, nats), perplexity and next-token accuracy over scored tokens."""
    losses = _as_array(token_losses, "token_losses")
    ppl = load_metric("perplexity").compute(losses=losses.astype("float64").tolist())
    accuracy = load_metric("accuracy").compute(predictions=_as_array(token_predictions, "token_predictions").tolist(),
                                               references=_as_array(token_references, "token_references").tolist())
    return {"eval_loss": ppl["loss"], "perplexity": ppl["perplexity"], "next_token_accuracy": accuracy["accuracy"]}
