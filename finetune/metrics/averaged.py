"""The one template of the class-averaged scores (f1, precision, recall): each bundled script builds its evaluate
module from it with its scikit-learn function and its description. evaluate copies a script into its own module cache
before importing it; this module is imported from the installed package, so the scripts share it."""

import datasets
import evaluate
import numpy as np

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
    zero_division (`float`): The score of a class whose {name} would divide by zero, e.g. a class never predicted
        or never present. Defaults to 0, without scikit-learn's warning.

Returns:
    {name} (`float`, or `list` of `float` with `average=None`): Between 0 and 1. Higher is better.

Examples:
    >>> metric = evaluate.load("finetune/metrics/{name}")
    >>> results = metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 2, 1, 0, 0, 1])
    >>> round(results["{name}"], 4)
    {example}
"""

# scikit-learn's citation: every score computed with it (accuracy and the confusion matrix too) cites it.
SKLEARN_CITATION = """
@article{scikit-learn,
    title={Scikit-learn: Machine Learning in {P}ython},
    author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and others},
    journal={Journal of Machine Learning Research},
    volume={12},
    pages={2825--2830},
    year={2011}
}
"""


def averaged_score(name: str, score_function, description: str, example: str) -> type:
    """The evaluate.Metric class of the scikit-learn score ``score_function``, reported as ``name``."""
    kwargs_description = _KWARGS_DESCRIPTION.format(name=name, example=example)

    class AveragedScore(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description=description,
                citation=SKLEARN_CITATION,
                inputs_description=kwargs_description,
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
                reference_urls=[
                    f"https://scikit-learn.org/stable/modules/generated/sklearn.metrics.{score_function.__name__}.html"
                ],
            )

        def _compute(
            self,
            predictions,
            references,
            average="macro",
            labels=None,
            pos_label=1,
            sample_weight=None,
            zero_division=0,
        ):
            score = score_function(
                references,
                predictions,
                average=average,
                labels=labels,
                pos_label=pos_label,
                sample_weight=sample_weight,
                zero_division=zero_division,
            )
            # A float, or with average=None a list: plain Python either way, so results serialise to JSON.
            return {name: np.asarray(score).tolist()}

    AveragedScore.__name__ = AveragedScore.__qualname__ = name.title()
    AveragedScore.__doc__ = description + kwargs_description
    return AveragedScore
