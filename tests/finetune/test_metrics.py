"""The bundled metrics: scikit-learn's values, hand-computed perplexity, clear errors, and no network."""

import json
import math
import os
import subprocess
import sys

import evaluate
import numpy as np
import pytest
from sklearn import metrics as skm

from finetune.metrics import (
    BUNDLED_METRICS,
    CLASSIFICATION_SCORES,
    METRICS_DIR,
    causal_lm_metrics,
    classification_metrics,
    load_metric,
)
from tests.conftest import OFFLINE_ENV, REPO

# name: (predictions, references, num_labels)
CLASSIFICATION_CASES = {
    "binary": ([0, 1, 1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 1, 1, 0, 1], 2),
    "multiclass": ([0, 2, 1, 0, 0, 1, 2, 2], [0, 1, 2, 0, 1, 2, 2, 0], 3),
    # Class 3 never occurs: its confusion-matrix row and column must still be there, all zeros.
    "imbalanced": ([0, 0, 0, 0, 0, 0, 0, 1, 0, 2], [0, 0, 0, 0, 0, 0, 1, 1, 2, 0], 4),
    "one_class": ([1, 1, 1], [1, 1, 1], 3),
    "perfect": ([0, 1, 2, 2, 1], [0, 1, 2, 2, 1], 3),
    "all_wrong": ([1, 2, 0, 1], [0, 1, 2, 2], 3),
}


def sklearn_scores(predictions, references) -> dict:
    macro = {"average": "macro", "zero_division": 0}
    return {
        "accuracy": skm.accuracy_score(references, predictions),
        "f1": skm.f1_score(references, predictions, **macro),
        "precision": skm.precision_score(references, predictions, **macro),
        "recall": skm.recall_score(references, predictions, **macro),
    }


@pytest.mark.parametrize("name", CLASSIFICATION_CASES)
def test_classification_metrics_equal_sklearn(name):
    predictions, references, num_labels = CLASSIFICATION_CASES[name]
    result = classification_metrics(np.array(predictions), np.array(references), num_labels=num_labels)
    matrix = result.pop("confusion_matrix")
    assert result == pytest.approx(sklearn_scores(predictions, references)), name
    assert matrix == skm.confusion_matrix(references, predictions, labels=list(range(num_labels))).tolist(), name
    assert np.shape(matrix) == (num_labels, num_labels), name


def test_confusion_matrix_without_num_labels_covers_present_classes():
    predictions, references, _ = CLASSIFICATION_CASES["imbalanced"]
    result = classification_metrics(predictions, references)
    assert result["confusion_matrix"] == skm.confusion_matrix(references, predictions).tolist()
    assert np.shape(result["confusion_matrix"]) == (3, 3)


def test_results_are_plain_python():
    result = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), num_labels=2)
    assert all(type(result[name]) is float for name in CLASSIFICATION_SCORES)
    assert all(type(count) is int for row in result["confusion_matrix"] for count in row)
    json.dumps(result)


KWARGS_PREDICTIONS, KWARGS_REFERENCES = [0, 2, 1, 0, 1], [0, 1, 1, 0, 2]
SKLEARN_PER_CLASS = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}


@pytest.mark.parametrize("name", SKLEARN_PER_CLASS)
def test_modules_accept_sklearn_keyword_arguments(name):
    predictions, references = KWARGS_PREDICTIONS, KWARGS_REFERENCES
    per_class = load_metric(name).compute(predictions=predictions, references=references, average=None)[name]
    expected = SKLEARN_PER_CLASS[name](references, predictions, average=None, zero_division=0).tolist()
    assert per_class == pytest.approx(expected)


def test_the_confusion_matrix_module_accepts_sklearns_labels_argument():
    predictions, references = KWARGS_PREDICTIONS, KWARGS_REFERENCES
    matrix = load_metric("confusion_matrix").compute(predictions=predictions, references=references, labels=[2, 1, 0])
    assert matrix["confusion_matrix"] == skm.confusion_matrix(references, predictions, labels=[2, 1, 0]).tolist()


def test_perplexity_is_exp_of_mean_token_loss():
    # Mean loss (ln 2 + ln 4) / 2 = 1.5 ln 2, so perplexity = 2 ** 1.5 = sqrt(8).
    losses = np.array([math.log(2), math.log(4)])
    result = causal_lm_metrics(losses, np.array([5, 7]), np.array([5, 6]))
    assert result == pytest.approx(
        {"eval_loss": 1.5 * math.log(2), "perplexity": math.sqrt(8), "next_token_accuracy": 0.5}, rel=1e-12
    )
    assert load_metric("perplexity").compute(losses=[1000.0])["perplexity"] == math.inf


def test_incremental_batches_give_the_same_scores():
    predictions, references, _ = CLASSIFICATION_CASES["multiclass"]
    combined = evaluate.combine([load_metric(name) for name in CLASSIFICATION_SCORES])
    perplexity = load_metric("perplexity")
    losses = np.linspace(0.1, 3.0, len(predictions))
    for start in range(0, len(predictions), 3):
        combined.add_batch(predictions=predictions[start : start + 3], references=references[start : start + 3])
        perplexity.add_batch(losses=losses[start : start + 3])
    whole = classification_metrics(predictions, references)
    assert combined.compute() == pytest.approx({name: whole[name] for name in CLASSIFICATION_SCORES})
    assert perplexity.compute()["perplexity"] == pytest.approx(math.exp(losses.mean()))


NO_EXAMPLES = {
    "classification": lambda: classification_metrics([], []),
    "causal-lm": lambda: causal_lm_metrics(np.array([]), [], []),
}
NOT_1D_OF_EQUAL_LENGTH = {
    "classification lengths": lambda: classification_metrics([0, 1], [0]),
    "causal-lm lengths": lambda: causal_lm_metrics([0.5], [1, 2], [1, 2]),
    "classification 2-D": lambda: classification_metrics([[0, 1]], [[0, 1]]),
}


@pytest.mark.parametrize("case", NO_EXAMPLES)
def test_no_examples_raise_a_clear_error(case):
    with pytest.raises(ValueError, match="no examples to score"):
        NO_EXAMPLES[case]()


@pytest.mark.parametrize("case", NOT_1D_OF_EQUAL_LENGTH)
def test_bad_shapes_raise_a_clear_error(case):
    with pytest.raises(ValueError, match="1-D inputs of equal length"):
        NOT_1D_OF_EQUAL_LENGTH[case]()


def test_every_bundled_metric_has_its_script():
    assert sorted(path.name for path in METRICS_DIR.iterdir() if (path / f"{path.name}.py").is_file()) == list(
        BUNDLED_METRICS
    )


@pytest.mark.parametrize("name", ["accuracy", "confusion_matrix", "f1", "perplexity", "precision", "recall"])
def test_every_bundled_script_loads_by_directory(name):
    assert name in BUNDLED_METRICS
    assert isinstance(evaluate.load(str(METRICS_DIR / name), keep_in_memory=True), evaluate.Metric)


def test_unknown_metric_offline_fails_without_trying_the_hub(monkeypatch):
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate, "load", lambda *args, **kwargs: pytest.fail("evaluate.load called while offline"))
    with pytest.raises(
        ValueError,
        match=r"Unknown metric 'bleu': the bundled metrics are accuracy, confusion_matrix, "
        r"f1, perplexity, precision, recall, and offline mode is on",
    ):
        load_metric("bleu")


def test_unknown_metric_with_unreachable_hub(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach https://huggingface.co")

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate, "load", unreachable)
    with pytest.raises(ValueError, match="Unknown metric 'bleu'.*the hub was not reachable"):
        load_metric("bleu")


# Runs in a fresh interpreter (the offline switches are read at import) with every socket refused and
# an empty module cache, so loading must copy the scripts and must not touch the network.
NO_NETWORK_SCRIPT = """
import json, socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
from finetune.metrics import BUNDLED_METRICS, classification_metrics, causal_lm_metrics, load_metric
loaded = [load_metric(name) for name in BUNDLED_METRICS]
scores = {**classification_metrics([0, 1, 1], [0, 1, 0]), **causal_lm_metrics([0.0], [3], [3])}
network_while_scoring = list(attempts)
try:
    load_metric("bleu")
except ValueError as err:
    error = str(err)
print(json.dumps({"loaded": len(loaded), "scores": scores, "network": network_while_scoring, "error": error}))
"""
ONLINE_ENV = {
    k: v
    for k, v in OFFLINE_ENV.items()
    if k not in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
}


@pytest.mark.parametrize(
    "env, unknown_error",
    [(OFFLINE_ENV, "offline mode is on"), (ONLINE_ENV, "not reachable")],
    ids=["offline-switches", "no-switches"],
)
def test_bundled_metrics_load_without_network(env, unknown_error, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == len(BUNDLED_METRICS) == 6
    assert report["scores"]["accuracy"] == pytest.approx(2 / 3)
    assert report["scores"]["perplexity"] == 1.0
    assert report["network"] == []
    assert unknown_error in report["error"]
    assert os.listdir(tmp_path / "modules" / "evaluate_modules" / "metrics")
