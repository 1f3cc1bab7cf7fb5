"""What the trainer records for progress readers: early stopping, when the training loop (re)started, and a log
free of the expected tied-weights notice, on a tiny GPT-2 through the real command line (about 20 s per run)."""

import shutil
from pathlib import Path

import pytest

from tests.conftest import read_events, read_json, run_cli, write_lm_text
from webapp.services.runs import _eta

# A learning rate far below float32 resolution leaves the eval loss exactly as it was: the first evaluation
# sets the best, the next two do not improve it, so patience 2 stops the run at step 3 of 20.
EARLY_STOP_ARGS = [
    "--max_steps",
    "20",
    "--eval_steps",
    "1",
    "--logging_steps",
    "1",
    "--save_steps",
    "2",
    "--early_stopping_patience",
    "2",
    "--learning_rate",
    "1e-30",
]


@pytest.fixture(scope="module")
def common(tiny_checkpoints, tmp_path_factory) -> list[str]:
    data = write_lm_text(tmp_path_factory.mktemp("data") / "lm.txt")
    return ["--model_name_or_path", str(tiny_checkpoints["gpt2"]), "--train_file", str(data), *EARLY_STOP_ARGS]


@pytest.fixture(scope="module")
def stopped_early(common, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "early"
    result = run_cli(*common, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_early_stopping_is_recorded_with_the_planned_steps(stopped_early):
    status, metrics = read_json(stopped_early / "status.json"), read_json(stopped_early / "metrics.json")
    assert status["state"] == "finished"
    assert (status["stopped_early_at_step"], status["total_steps"]) == (3, 20)
    assert (metrics["stopped_early"], metrics["steps"], metrics["total_steps"]) == (True, 3, 20)


def test_the_loop_start_is_recorded_after_the_base_evaluation(stopped_early):
    status, events = read_json(stopped_early / "status.json"), read_events(stopped_early)
    base_eval = next(e for e in events if e["event"] == "eval" and e["step"] == 0)
    first_train = next(e for e in events if e["event"] == "train")
    assert status["loop_start_step"] == 0
    assert base_eval["time"] <= status["loop_started_at"] <= first_train["time"]
    # The Runs page's ETA at step 2 paces the two steps since the loop started, nothing before.
    second = next(e for e in events if e["event"] == "train" and e["step"] == 2)
    pace = (second["time"] - status["loop_started_at"]) / 2
    so_far = [e for e in events if e["time"] <= second["time"]]
    assert _eta(status, so_far, now=second["time"]) == pytest.approx(pace * 18)


def test_a_resumed_run_records_the_step_it_resumed_at(common, stopped_early, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(stopped_early / "checkpoints" / "step_2", out / "checkpoints" / "step_2")
    result = run_cli(*common, "--output_dir", str(out), "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    status = read_json(out / "status.json")
    assert status["loop_start_step"] == 2 and status["loop_started_at"] >= status["started_at"]
    assert status["stopped_early_at_step"] == 3, "the early-stopping count is restored with the checkpoint"


def test_checkpoints_of_gpt2_tied_weights_log_no_shared_tensor_warning(stopped_early):
    assert (stopped_early / "checkpoints" / "step_2" / "checkpoint_complete.json").is_file()
    log = (stopped_early / "train.log").read_text()
    assert "Run finished" in log, "the log is the trainer's"
    assert "Removed shared tensor" not in log
