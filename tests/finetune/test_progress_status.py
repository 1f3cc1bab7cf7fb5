"""What the trainer records for progress readers: early stopping, when the training loop (re)started, and a log
free of the expected tied-weights notice, on a tiny GPT-2 through the real command line (about 20 s per run)."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.rundir import RunDirectory
from tests.conftest import OFFLINE_ENV, REPO, read_events, read_json, run_cli, write_lm_text
from webapp.services import runs
from webapp.services.eta import eta

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
    # The Runs page's ETA at step 2 paces the two steps since the loop started, nothing before: step 1 (training
    # alone) and step 2 (training and the evaluation after step 1), the slower of them as every step to come.
    first, second = (next(e for e in events if e["event"] == "train" and e["step"] == s) for s in (1, 2))
    pace = max(first["time"] - status["loop_started_at"], second["time"] - first["time"])
    so_far = [e for e in events if e["time"] <= second["time"]]
    # (never under 1 s while steps remain: a fast machine trains these tiny steps in milliseconds)
    assert eta(status, so_far, now=second["time"]) == pytest.approx(max(pace * 18, 1.0))


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


def test_a_cancelled_run_reads_at_the_step_of_the_checkpoint_it_saved(common, tmp_path):
    """A cancel saves a checkpoint at the step it stopped at, between two logged steps (logging_steps 1000 logs
    none here): status.json and the Runs page read that step, the one a resume continues from."""
    out = tmp_path / "cancelled"
    endless = ["--max_steps", "100000", "--logging_steps", "1000", "--save_steps", "100000", "--eval_steps", "100000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune.train", *common, *endless, "--output_dir", str(out)],
        cwd=REPO,
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not RunDirectory(out).read_status().get("loop_started_at"):
        assert process.poll() is None and time.time() < deadline, "the training loop never started"
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps in
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    status, saved = read_json(out / "status.json"), RunDirectory(out).latest_checkpoint()
    assert status["state"] == "cancelled" and saved is not None
    saved_step = int(saved.name.removeprefix("step_"))
    assert saved_step >= 1 and status["step"] == status["checkpoint_step"] == saved_step
    assert runs.summarize(out).step == saved_step
