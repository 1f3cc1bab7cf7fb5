"""Precision metric: a local copy of the hub's, macro-averaged by default, so scoring needs no network."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import precision_score

_DESCRIPTION = """
Precision is the fraction of the examples predicted as a class that belong to it:
Precision = TP / (TP + FP)
"""


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    average (`str`): How per-class scores are combined, as in scikit-learn: `'macro'` (unweighted mean over classes),
        `'micro'`, `'weighted'`, `'binary'` (only `pos_label`) or `None` (one score per class). Defaults to `'macro'`,
        unlike the hub's `'binary'`, so that `evaluate.combine` (which passes the same keyword arguments to every
        module) works for any number of classes without arguments.
    labels (`list` of `int`): The classes to score and average over. Defaults to those present in `predictions`
        and `references`.
    pos_label (`int`): The positive class when `average='binary'`. Defaults to 1.
    sample_weight (`list` of `float`): Sample weights. Defaults to `None`.
    zero_division (`float`): The score of a class whose precision would divide by zero, e.g. a class never predicted
        or never present. Defaults to 0, without scikit-learn's warning.

Returns:
    precision (`float`, or `list` of `float` with `average=None`): Between 0 and 1. Higher is better.

Examples:
    >>> precision_metric = evaluate.load("finetune/metrics/precision")
    >>> results = precision_metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 2, 1, 0, 0, 1])
    >>> round(results["precision"], 4)
    0.2222
"""


_CITATION = """
@article{scikit-learn,
    title={Scikit-learn: Machine Learning in {P}ython},
    author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and others},
    journal={Journal of Machine Learning Research},
    volume={12},
    pages={2825--2830},
    year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Precision(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_score.html"],
        )

    def _compute(
        self, predictions, references, average="macro", labels=None, pos_label=1, sample_weight=None, zero_division=0
    ):
        score = precision_score(
            references,
            predictions,
            average=average,
            labels=labels,
            pos_label=pos_label,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        # A float, or with average=None a list: plain Python either way, so results serialise to JSON.
        return {"precision": np.asarray(score).tolist()}
