"""F1 metric: a local copy of the hub's, macro-averaged by default, so scoring needs no network."""

from sklearn.metrics import f1_score

from finetune.metrics.averaged import averaged_score

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall:
F1 = 2 * (precision * recall) / (precision + recall)
"""

F1 = averaged_score("f1", f1_score, _DESCRIPTION, example="0.2667")
