"""Precision metric: a local copy of the hub's, macro-averaged by default, so scoring needs no network."""

from sklearn.metrics import precision_score

from finetune.metrics.averaged import averaged_score

_DESCRIPTION = """
Precision is the fraction of the examples predicted as a class that belong to it:
Precision = TP / (TP + FP)
"""

Precision = averaged_score("precision", precision_score, _DESCRIPTION, example="0.2222")
