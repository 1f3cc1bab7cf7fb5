"""evaluation.compare and evaluation.evaluate through their real command lines, on two tiny BERT runs."""

import json
import sys
from pathlib import Path

import pytest

from evaluation.compare import COST
from tests.conftest import read_json, run_cli, write_sentiment_csv

COMPARE = (sys.executable, "-m", "evaluation.compare")
EVALUATE = (sys.executable, "-m", "evaluation.evaluate")


@pytest.fixture(scope="module")
def two_runs(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = write_sentiment_csv(root / "reviews.csv")
    runs = []
    for name, lr in (("slow", "1e-5"), ("fast", "2e-3")):
        out = root / name
        result = run_cli(
            "--model_name_or_path",
            str(tiny_checkpoints["bert"]),
            "--train_file",
            str(data),
            "--output_dir",
            str(out),
            "--num_train_epochs",
            "6",
            "--learning_rate",
            lr,
            "--head_learning_rate",
            "1e-2" if name == "fast" else "1e-5",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(out)
    return root, data, runs


def test_compare_table_diff_columns_and_plot(two_runs, tmp_path):
    root, _, runs = two_runs
    plot = tmp_path / "curves.png"
    result = run_cli(*map(str, runs), "--format", "json", "--plot", str(plot), launcher=COMPARE)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["run"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"slow", "fast"}
    # Only the settings that differ are shown: the two learning rates.
    settings = {k for k in rows["fast"] if not k.startswith(("base_", "finetuned_", "delta_"))} - {
        "run",
        "state",
        *COST,
    }  # cost and throughput (tokens_per_s once the trainer logs it) are no settings
    assert settings == {"learning_rate", "head_learning_rate"}
    fast = rows["fast"]
    assert fast["learning_rate"] == 2e-3 and fast["state"] == "finished"
    assert fast["finetuned_accuracy"] > fast["base_accuracy"]
    assert fast["delta_accuracy"] == pytest.approx(fast["finetuned_accuracy"] - fast["base_accuracy"])
    assert fast["base_accuracy"] == rows["slow"]["base_accuracy"]  # same split, same head seed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = run_cli(*map(str, runs), launcher=COMPARE).stdout
    assert f"**{fast['finetuned_accuracy']:.4g}**" in markdown and markdown.count("| slow") == 1


def test_failed_runs_show_their_state_and_non_runs_are_refused(two_runs, tmp_path):
    root, _, runs = two_runs
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "status.json").write_text(json.dumps({"state": "failed", "error": "train_file: missing"}))
    result = run_cli(str(runs[0]), str(failed), "--format", "csv", launcher=COMPARE)
    assert result.returncode == 0 and "failed," in result.stdout
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    refused = run_cli(str(not_a_run), launcher=COMPARE)
    assert refused.returncode == 2 and "is not a run directory" in refused.stderr


def test_evaluate_writes_metrics_and_predictions(two_runs, tmp_path):
    root, _, runs = two_runs
    new_data = write_sentiment_csv(tmp_path / "new.csv", rows=30, seed=7)
    out = tmp_path / "eval" / "results.json"
    result = run_cli("--run", str(runs[1]), "--data", str(new_data), "--out", str(out), launcher=EVALUATE)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_json(out)["metrics"]
    predictions = [json.loads(line) for line in (out.parent / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 30
    correct = sum(p["label"] == p["prediction"] for p in predictions)
    assert metrics["accuracy"] == pytest.approx(correct / 30) and metrics["accuracy"] >= 0.9
    assert all(0.5 <= p["score"] <= 1 and p["input"] for p in predictions)


def test_evaluate_rejects_labels_the_run_never_saw(two_runs, tmp_path):
    root, _, runs = two_runs
    odd = write_sentiment_csv(tmp_path / "odd.csv", rows=6, labels=("negative", "neutral", "positive"))
    result = run_cli("--run", str(runs[1]), "--data", str(odd), launcher=EVALUATE)
    assert result.returncode == 2 and "labels ['neutral']" in result.stderr and "Traceback" not in result.stderr


def test_settings_that_are_paths_show_their_last_parts():
    from evaluation.compare import Run, config_diff

    def run(name, train_file, model):
        return Run(
            name,
            Path("/runs") / name,
            "finished",
            None,
            {"train_file": train_file, "model_name_or_path": model, "learning_rate": 1e-3},
            {},
            [],
        )

    runs = [
        run("a", "/home/me/lab/users/u-1/uploads/9f8e7d6c5b4a3f2e/upload.csv", "/srv/models/minilm"),
        run("b", "/data/reviews/train-2026.csv", "bert-base-uncased"),
    ]
    table = config_diff(runs)
    assert list(table.columns) == ["train_file", "model_name_or_path"], "learning_rate is the same: not shown"
    assert table.loc["a"].tolist() == ["9f8e7d6c…/upload.csv", "minilm"]
    assert table.loc["b"].tolist() == ["train-2026.csv", "bert-base-uncased"]
    assert max(len(str(v)) for v in table.to_numpy().ravel()) <= 24, "no column is as wide as a full path"
