"""Bootstrap intervals of the final scores (finetune/training/intervals.py): they cover the true difference as often as
they say, pairing narrows them, a seed fixes them, they score as compute_metrics does, and their wording."""

import numpy as np
import pytest

from finetune.metrics import causal_lm_metrics, classification_metrics
from finetune.training import intervals


def _paired_classification(size: int, rng: np.random.Generator, base_p=0.6, tuned_p=0.7, shared=0.8) -> tuple:
    """Per-example results of two models on ``size`` binary examples: correct with probability base_p and tuned_p
    (true accuracy difference tuned_p - base_p), on the same examples mostly (``shared``: how often both models'
    luck on an example is the same draw), as a fine-tuned model and its base are."""
    labels = rng.integers(0, 2, size)
    luck = rng.random(size)
    tuned_luck = np.where(rng.random(size) < shared, luck, rng.random(size))
    results = []
    for p, draw in ((base_p, luck), (tuned_p, tuned_luck)):
        correct = draw < p
        predictions = np.where(correct, labels, 1 - labels)
        results.append({"loss": np.where(correct, 0.2, 1.5), "predictions": predictions, "references": labels})
    return tuple(results)


def test_the_interval_of_the_difference_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered, trials = 0, 300
    for trial in range(trials):
        base, tuned = _paired_classification(120, rng)
        low, high = intervals.bootstrap(base, tuned, seed=trial)["delta"]["accuracy"]
        covered += low <= 0.1 <= high
    assert 0.90 <= covered / trials <= 0.985, covered / trials


def test_paired_intervals_are_narrower_than_unpaired_ones_on_correlated_results():
    base, tuned = _paired_classification(200, np.random.default_rng(2))
    paired = intervals.bootstrap(base, tuned)["delta"]["accuracy"]
    # Unpaired: each model's examples drawn apart, as two independent samples would be.
    apart = (
        intervals.scores(tuned, intervals.resample_weights(200, seed=1))["accuracy"]
        - intervals.scores(base, intervals.resample_weights(200, seed=2))["accuracy"]
    )
    unpaired = np.percentile(apart, [2.5, 97.5])
    assert paired[1] - paired[0] < 0.75 * (unpaired[1] - unpaired[0])


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    base, tuned = _paired_classification(100, np.random.default_rng(3))
    first, again = intervals.bootstrap(base, tuned), intervals.bootstrap(base, tuned)
    assert first == again
    assert intervals.bootstrap(base, tuned, seed=7)["delta"] != first["delta"]
    assert first["level"] == 0.95 and first["resamples"] == 1000 and first["examples"] == 100


def test_a_row_of_ones_scores_as_compute_metrics_does():
    rng = np.random.default_rng(4)
    predictions, references = rng.integers(0, 4, 50), rng.integers(0, 3, 50)  # class 3 predicted, never a label
    examples = {"loss": rng.random(50), "predictions": predictions, "references": references}
    got = {k: v[0] for k, v in intervals.scores(examples, np.ones((1, 50))).items()}
    expected = classification_metrics(predictions, references)
    for metric in ("accuracy", "f1", "precision", "recall"):
        assert got[metric] == pytest.approx(expected[metric]), metric
    assert got["eval_loss"] == pytest.approx(examples["loss"].mean())


def test_causal_lm_resamples_whole_sequences_and_scores_as_compute_metrics_does():
    rng = np.random.default_rng(5)
    references = rng.integers(0, 9, (6, 10))
    references[0, 7:] = -100  # padding the loss leaves out
    gathered = {"losses": rng.random((6, 10)) * 4, "predictions": rng.integers(0, 9, (6, 10)), "references": references}
    examples = intervals.per_example(gathered)
    assert examples["tokens"].tolist() == [7, 10, 10, 10, 10, 10], "one unit per sequence"
    got = {k: v[0] for k, v in intervals.scores(examples, np.ones((1, 6))).items()}
    scored = references != -100
    expected = causal_lm_metrics(
        gathered["losses"][scored], gathered["predictions"][scored], gathered["references"][scored]
    )
    assert got == pytest.approx(expected)


def _section(delta_bounds: list[float], base=0.53, tuned=0.94) -> dict:
    return {
        "task": "text-classification",
        "base": {"accuracy": base},
        "finetuned": {"accuracy": tuned},
        "intervals": {"level": 0.95, "examples": 120, "delta": {"accuracy": delta_bounds}},
    }


def test_the_verdict_says_noise_when_the_interval_crosses_zero_and_the_change_otherwise():
    noisy = intervals.verdict(_section([-0.02, 0.11], 0.50, 0.55), "text-classification")
    assert noisy == (
        "The difference in accuracy is within noise: the validation split (120 examples) is too small to tell; "
        "a larger validation file would."
    )
    assert intervals.verdict(_section([0.33, 0.49]), "text-classification") == (
        "On the validation split, fine-tuning improved accuracy by +0.41 [0.33, 0.49]."
    )
    worse = intervals.verdict(_section([-0.2, -0.05], 0.6, 0.48), "text-classification", "test")
    assert worse == "On the test file, fine-tuning worsened accuracy by -0.12 [-0.20, -0.05]."
    assert intervals.verdict({"base": {}, "finetuned": {}}, "text-classification") is None, "a run from before"


def test_the_model_card_lines():
    metrics = {**_section([0.33, 0.49]), "test": _section([-0.01, 0.2], 0.5, 0.6)}
    assert intervals.card_lines(metrics) == [
        "accuracy: 0.53 -> 0.94, +0.41 [0.33, 0.49] (95% bootstrap)",
        "test accuracy: 0.50 -> 0.60, +0.10 [-0.01, 0.20] (95% bootstrap)",
        "On the validation split, fine-tuning improved accuracy by +0.41 [0.33, 0.49].",
        "The difference in accuracy is within noise: the test file (120 examples) is too small to tell; "
        "a larger test file would.",
    ]
    assert intervals.card_lines({"base": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.6}}) == []
    assert intervals.change_text(-12.345, [-20.0, -5.0]) == "-12 [-20, -5]", "decimals follow the interval's width"
