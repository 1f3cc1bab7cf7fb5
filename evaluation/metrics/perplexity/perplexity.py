"""Perplexity from per-token negative log-likelihoods: a local `evaluate` metric that needs no hub.

Unlike the hub's model-based perplexity, this one takes the losses the trainer already computed,
so scoring costs nothing extra.
"""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Perplexity exp(mean NLL) over tokens, from per-token negative log-likelihoods (natural log)."
_CITATION = "Jelinek et al., Perplexity: a measure of the difficulty of speech recognition tasks, JASA 62, 1977."
_KWARGS_DESCRIPTION = """
Args:
    losses (list of float): negative log-likelihood of each scored token, in nats.
Returns:
    loss: mean NLL per token.
    perplexity: exp(loss).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"losses": datasets.Value("float64")}),
        )

    def _compute(self, losses):
        mean = float(np.mean(losses))
        return {"loss": mean, "perplexity": math.exp(mean)}
