"""Confusion matrix metric: a local copy of the hub's that returns plain lists, so results serialise to JSON."""

import datasets
import evaluate
from sklearn.metrics import confusion_matrix

from finetune.metrics.averaged import SKLEARN_CITATION

_DESCRIPTION = """
The confusion matrix counts, for every true class (row) and predicted class (column), how many examples
of that class received that prediction. The diagonal holds the correct predictions.
"""


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    labels (`list` of `int`): The rows and columns, in order. Labels absent from the data give rows and columns of
        zeros; labels not listed are left out. Defaults to the sorted labels present in `predictions` and `references`.
    sample_weight (`list` of `float`): Sample weights. Defaults to `None`.
    normalize (`str`): `'true'`, `'pred'` or `'all'` to divide by row, column or grand totals.
        Defaults to `None` (counts).

Returns:
    confusion_matrix (`list` of `list`): `confusion_matrix[i][j]` is the number of examples of class `labels[i]`
        predicted as `labels[j]`.

Examples:
    >>> confusion_metric = evaluate.load("finetune/metrics/confusion_matrix")
    >>> confusion_metric.compute(references=[0, 1, 1], predictions=[0, 1, 0], labels=[0, 1, 2])
    {'confusion_matrix': [[1, 0, 0], [1, 1, 0], [0, 0, 0]]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=SKLEARN_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"],
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None):
        matrix = confusion_matrix(
            references, predictions, labels=labels, sample_weight=sample_weight, normalize=normalize
        )
        return {"confusion_matrix": matrix.tolist()}
