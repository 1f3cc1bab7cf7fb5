"""A real tiny run writes the bootstrap intervals of its final scores into metrics.json, on the validation split and
the test file, and a run killed mid-way and resumed (its base pass in the first process) writes the same ones."""

import subprocess
import sys

import pytest

from finetune.rundir import RunDirectory
from tests.conftest import OFFLINE_ENV, REPO, read_json, run_cli, write_sentiment_csv


def _assert_points_within(section: dict) -> None:
    """Every metric's interval holds its score (base, fine-tuned, and their difference)."""
    bounds = section["intervals"]
    assert bounds["level"] == 0.95 and bounds["resamples"] == 1000
    metrics = {"eval_loss", "accuracy", "f1", "precision", "recall"}
    for part in ("base", "finetuned"):
        assert set(bounds[part]) == metrics, part
        for metric, (low, high) in bounds[part].items():
            assert low <= section[part][metric] <= high, (part, metric)
    assert set(bounds["delta"]) == metrics
    for metric, (low, high) in bounds["delta"].items():
        assert low <= section["finetuned"][metric] - section["base"][metric] <= high, metric


def test_a_run_and_a_resumed_run_write_the_same_intervals(tiny_checkpoints, tmp_path):
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=80)
    test = write_sentiment_csv(tmp_path / "test.csv", rows=30, seed=1)
    common = [
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), "--test_file", str(test),
        "--max_steps", "6", "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1",
        "--learning_rate", "2e-3", "--head_learning_rate", "1e-2", "--mixed_precision", "no",
    ]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_cli(*common, "--output_dir", str(whole))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = read_json(whole / "metrics.json")
    _assert_points_within(expected)
    _assert_points_within(expected["test"])
    assert expected["intervals"]["examples"] == 8 and expected["test"]["intervals"]["examples"] == 30
    run = RunDirectory(whole)
    kept = {"validation_0.npz", f"validation_{expected['adapter_step']}.npz", "test_base.npz", "test_finetuned.npz"}
    assert {p.name for p in run.examples_dir.iterdir()} == kept, "only the passes the intervals resample"

    # Killed at step 5 (past the checkpoint of step 3), then resumed: the base pass was the first process's.
    killing = [sys.executable, "-m", "tests.finetune.kill_at_write", "train", "5", *common, "--output_dir", str(killed)]
    died = subprocess.run(killing, cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=300)
    assert died.returncode == -9, died.stderr[-2000:]
    assert not (killed / "metrics.json").exists()
    result = run_cli(*common, "--output_dir", str(killed), "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in (killed / "train.log").read_text()
    got = read_json(killed / "metrics.json")
    _assert_points_within(got)
    for found, wanted in ((got, expected), (got["test"], expected["test"])):
        assert _bounds(found) == pytest.approx(_bounds(wanted), rel=1e-5)


def _bounds(section: dict) -> dict[tuple, float]:
    """The section's interval bounds, flat: {(part, metric, 0|1): bound}."""
    stored = section["intervals"]
    return {
        (part, m, i): b
        for part in ("base", "finetuned", "delta")
        for m, pair in stored[part].items()
        for i, b in enumerate(pair)
    }
