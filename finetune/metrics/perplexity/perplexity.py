"""Perplexity from per-token losses.

Unlike the hub's `perplexity`, which loads a model and scores texts itself, this one takes the negative
log-likelihoods the trainer has already computed, so it costs nothing extra and needs no model.
"""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Perplexity is the exponential of the mean negative log-likelihood per token:
perplexity = exp(mean(losses)). It is the number of equally likely tokens the model is, on average, choosing
between; lower is better and 1 is perfect.
"""


_KWARGS_DESCRIPTION = """
Args:
    losses (`list` of `float`): The negative log-likelihood (natural log) of each scored token, padding excluded.

Returns:
    loss (`float`): The mean negative log-likelihood per token.
    perplexity (`float`): `exp(loss)`; `inf` when that overflows.

Examples:
    >>> perplexity_metric = evaluate.load("finetune/metrics/perplexity")
    >>> perplexity_metric.compute(losses=[0.0, 0.0])
    {'loss': 0.0, 'perplexity': 1.0}
"""


_CITATION = """
@article{jelinek1977perplexity,
    title={Perplexity -- a measure of the difficulty of speech recognition tasks},
    author={Jelinek, F. and Mercer, R. L. and Bahl, L. R. and Baker, J. K.},
    journal={The Journal of the Acoustical Society of America},
    volume={62},
    number={S1},
    pages={S63--S63},
    year={1977}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64: summing many float32 losses would lose precision.
            features=datasets.Features({"losses": datasets.Value("float64")}),
        )

    def _compute(self, losses):
        if len(losses) == 0:
            raise ValueError("perplexity: no losses given; there are no tokens to score")
        loss = float(np.mean(losses))
        try:
            perplexity = math.exp(loss)
        except OverflowError:  # an untrained model's loss can pass ~709 nats; report inf rather than crash
            perplexity = math.inf
        return {"loss": loss, "perplexity": perplexity}
