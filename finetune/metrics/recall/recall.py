"""Recall metric: a local copy of the hub's, macro-averaged by default, so scoring needs no network."""

from sklearn.metrics import recall_score

from finetune.metrics.averaged import averaged_score

_DESCRIPTION = """
Recall is the fraction of the examples of a class that are predicted as it:
Recall = TP / (TP + FN)
"""

Recall = averaged_score("recall", recall_score, _DESCRIPTION, example="0.3333")
