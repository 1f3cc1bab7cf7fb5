"""F1 (harmonic mean of precision and recall), computed with scikit-learn: a local `evaluate` metric that needs no hub."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1 (harmonic mean of precision and recall) of integer class predictions against references."
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    average (str): sklearn averaging; macro by default so every class counts equally.
    labels (list of int): classes to average over; all present when absent.
Returns:
    f1: the score.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, average="macro", sample_weight=None, zero_division=0):
        score = f1_score(references, predictions, labels=labels, average=average, sample_weight=sample_weight,
                    zero_division=zero_division)
        return {"f1": score.tolist() if hasattr(score, "tolist") and getattr(score, "ndim", 0) else float(score)}
