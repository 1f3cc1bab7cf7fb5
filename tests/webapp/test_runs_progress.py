"""What the Runs page says about progress: early stopping, the ETA, which run it opens on, its charts, and the
job runner's state with the `python -m webapp.runner status` / `stop` commands."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.rundir import RunDirectory, process_start, write_json_atomic
from tests.conftest import REPO
from tests.webapp.apptest import assert_ok, open_app
from tests.webapp.conftest import copy_run
from webapp.runner import jobs
from webapp.services import runs
from webapp.services.eta import eta
from webapp.services.identity import local_user

LOCAL = local_user()


def _train(step: int, at: float) -> dict:
    return {"event": "train", "step": step, "time": at, "loss": 1.0}


# ---- ETA ------------------------------------------------------------------------------------------


def test_eta_leaves_out_the_base_evaluation_before_the_loop():
    # 100 s of base-model evaluation, then 1 s per step: at step 10 of 100, 90 s are left (not 990 s).
    status = {"total_steps": 100, "started_at": 0.0, "loop_started_at": 100.0, "loop_start_step": 0}
    events = [{"event": "eval", "step": 0, "time": 100.0}] + [_train(s, 100.0 + s) for s in range(1, 11)]
    assert eta(status, events, now=110.0) == pytest.approx(90.0)
    assert eta(status, events, now=115.0) == pytest.approx(85.0), "less the time since the last logged step"
    assert eta(status, events, now=500.0) == 1.0, "never down to nothing while steps remain: one step's time"


def test_eta_after_a_resume_counts_only_the_steps_and_time_since_the_resume():
    # Cancelled at step 57 after 57 s; resumed from the step-50 checkpoint at t=1000, now 6 s per step.
    before = [_train(s, float(s)) for s in range(1, 58)]
    since = [_train(50 + k, 1000.0 + 6 * k) for k in range(1, 11)]
    status = {"total_steps": 120, "started_at": 990.0, "loop_started_at": 1000.0, "loop_start_step": 50}
    assert eta(status, before + since, now=1060.0) == pytest.approx(6 * 60)
    assert eta(status, before, now=1001.0) is None, "steps from before the resume say nothing about this pace"


def test_eta_follows_the_recent_pace_not_the_whole_run_average():
    # Steps 1-20 took 1 s each, steps 21-30 take 4 s each: 40 steps left at 4 s, not at the 2 s/step average.
    status = {"total_steps": 70, "loop_started_at": 0.0, "loop_start_step": 0}
    events = [_train(s, float(s)) for s in range(1, 21)] + [_train(s, 20.0 + 4 * (s - 20)) for s in range(21, 31)]
    assert eta(status, events, now=60.0) == pytest.approx(160.0)
    early = [_train(s, 10.0 * s) for s in range(1, 3)]  # one long step each so far
    assert eta(status, early, now=20.0) == pytest.approx(680.0)


def test_eta_leaves_evaluations_out_of_the_step_pace_and_adds_those_to_come():
    # A log every 10 steps at 1 s/step; an evaluation of 20 s after every 20th step.
    status = {"total_steps": 100, "loop_started_at": 0.0, "loop_start_step": 0}
    events = [_train(10, 10.0), _train(20, 20.0), {"event": "eval", "step": 20, "time": 40.0}]
    events += [_train(30, 50.0), _train(40, 60.0), {"event": "eval", "step": 40, "time": 80.0}, _train(50, 90.0)]
    # 1 s/step trained plus the 40 s of evaluations over the 40 steps since the first log: 2 s/step, 50 steps left.
    assert eta(status, events, now=90.0) == pytest.approx(100.0)
    assert eta(status, events[:3], now=20.0) == pytest.approx(80.0), "no evaluation yet: 1 s/step"


def test_eta_at_step_10_of_15_stays_above_zero_while_the_steps_are_not_logged():
    # logging_steps 10: step 10 is the last one logged before the run ends; evaluation and saving follow it.
    status = {"total_steps": 15, "loop_started_at": 0.0, "loop_start_step": 0}
    events = [_train(10, 20.0)]
    assert eta(status, events, now=20.0) == pytest.approx(10.0)
    assert eta(status, events, now=25.0) == pytest.approx(5.0)
    for now in (29.0, 30.0, 100.0):
        assert eta(status, events, now=now) >= 2.0, "steps remain: at least one step's time (2 s)"
    assert eta(status, [_train(10, 20.0), _train(15, 30.0)], now=100.0) == 0.0, "every step done"


def test_eta_says_nothing_until_two_steps_into_the_segment():
    status = {"total_steps": 100, "loop_started_at": 100.0, "loop_start_step": 0}
    assert eta({"total_steps": 100, "started_at": 0.0}, [_train(5, 50.0)]) is None, "loop not started (base eval)"
    assert eta(status, []) is None
    assert eta(status, [_train(1, 101.0)], now=101.0) is None
    assert eta(status, [_train(1, 101.0), _train(2, 102.0)], now=102.0) == pytest.approx(98.0)


# ---- early stopping -------------------------------------------------------------------------------


def _stopped_early(home: Path, source: Path) -> Path:
    """A finished run that early stopping ended at step 400 of 680, its last train event at step 390."""
    path = copy_run(source, home, "early")
    run = RunDirectory(path)
    run.events_path.write_text("".join(json.dumps(_train(s, 1.0)) + "\n" for s in range(10, 400, 10)))
    run.update_status(state="finished", total_steps=680, stopped_early_at_step=400)
    return path


def test_a_run_stopped_early_reads_finished_at_its_step_not_stalled(no_runner, trained_runs):
    summary = runs.summarize(_stopped_early(no_runner, trained_runs["bert-lr2e-3"]))
    assert (summary.step, summary.total_steps, summary.progress, summary.stopped_early) == (400, 680, 1.0, True)
    normal = runs.summarize(copy_run(trained_runs["bert-lr2e-3"], no_runner, "normal"))
    assert normal.stopped_early is False and normal.progress == 1.0
    assert json.loads((no_runner / "runs" / "normal" / "metrics.json").read_text())["stopped_early"] is False

    at = open_app("pages/runs.py")
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["early", "progress"] == 1.0 and table.loc["early", "step"] == "400/680 (stopped early)"
    at.selectbox(key="runs_selected").set_value("early").run()
    progress = at.get("progress")[0]
    assert progress.value == 100
    assert "finished · stopped early at step 400 of 680 (eval loss stopped improving)" in progress.text


# ---- which run the page opens on ------------------------------------------------------------------


def _with_state(home: Path, source: Path, name: str, state: str, created: float) -> Path:
    path = copy_run(source, home, name)
    RunDirectory(path).status_path.write_text(json.dumps({"state": state, "queued_at": created, "total_steps": 82}))
    return path


def test_the_page_opens_on_the_last_selected_run_else_a_running_one(no_runner, trained_runs):
    source, now = trained_runs["bert-lr2e-3"], time.time()
    _with_state(no_runner, source, "old", "finished", now - 300)
    training = _with_state(no_runner, source, "training", "running", now - 200)
    waiting = _with_state(no_runner, source, "waiting", "queued", now - 100)
    at = open_app("pages/runs.py")
    assert at.selectbox(key="runs_selected").options == ["waiting", "training", "old"], "newest first"
    assert at.selectbox(key="runs_selected").value == "training", "the running run, not the newest (queued)"
    at.switch_page("pages/new_run.py").run()
    RunDirectory(training).update_status(state="finished")
    RunDirectory(waiting).update_status(state="running")
    at.switch_page("pages/runs.py").run()
    assert at.selectbox(key="runs_selected").value == "waiting", "a default is no choice of the user's to keep"
    at.selectbox(key="runs_selected").set_value("old").run()
    at.switch_page("pages/new_run.py").run()
    at.switch_page("pages/runs.py").run()
    assert_ok(at)
    assert at.selectbox(key="runs_selected").value == "old", "reopening the page keeps the user's choice"


def test_default_selection_falls_back_to_the_newest():
    summaries = [
        runs.RunSummary("b", Path("b"), "local", "b", "queued", None, None, 0, None, None, None, 2.0),
        runs.RunSummary("a", Path("a"), "local", "a", "finished", None, None, 0, None, None, None, 1.0),
    ]
    assert runs.default_selection(summaries, None) == 0
    assert runs.default_selection(summaries, "a") == 1
    assert runs.default_selection(summaries, "deleted") == 0


# ---- charts ---------------------------------------------------------------------------------------


def test_loss_chart_draws_points_on_whole_steps_with_a_fitted_y_axis(no_runner, trained_runs):
    path = copy_run(trained_runs["bert-lr2e-3"], no_runner, "fresh")
    run = RunDirectory(path)
    run.events_path.write_text(run.events_path.read_text().splitlines()[0] + "\n")  # only the base eval at step 0
    run.update_status(state="running")
    at = open_app("pages/runs.py")
    charts = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    loss = next(spec for spec in charts if spec["encoding"]["y"]["title"] == "loss")
    assert loss["mark"]["point"] is True, "a one-point curve is a visible point"
    assert loss["encoding"]["x"]["axis"]["format"] == "d" and loss["encoding"]["x"]["axis"]["tickMinStep"] == 1
    assert loss["encoding"]["y"]["scale"]["zero"] is False


# ---- the job runner: caption, status and stop ----------------------------------------------------


def test_the_page_says_how_to_see_and_stop_the_runner(no_runner, trained_runs):
    copy_run(trained_runs["bert-lr2e-3"], no_runner, "done")
    captions = " ".join(c.value for c in open_app("pages/runs.py").caption)
    assert "Job runner: running" in captions and str(no_runner / "runner.log") in captions
    assert "15 idle minutes" in captions and "python -m webapp.runner stop" in captions


@pytest.fixture
def trainer(lab):
    """A process in a session of its own, like a launched trainer."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    while process_start(process.pid) is None:
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def _jobs_cli(home: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "webapp.runner", command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LORA_LAB_HOME": str(home)},
    )


def test_status_lists_the_runner_the_queue_and_the_running_runs(no_runner, trainer):
    busy = RunDirectory(no_runner / "runs" / "busy")
    busy.update_status(state="running", pid=trainer.pid, pid_started=process_start(trainer.pid))
    waiting = RunDirectory(no_runner / "runs" / "waiting")
    waiting.update_status(state="queued", queued_at=time.time())
    jobs.Job("cpu", 1, 0).write(waiting)
    result = _jobs_cli(no_runner, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Job runner: running (pid not recorded); lock "), "the test holds the lock"
    assert lines[1:] == ["Queued: waiting", f"Running: busy (pid {trainer.pid})"]


def test_stop_ends_the_runner_and_runs_in_progress_keep_training(lab, trainer):
    busy = RunDirectory(lab / "runs" / "busy")
    busy.update_status(state="running", pid=trainer.pid, pid_started=process_start(trainer.pid))
    jobs.ensure_runner()
    deadline = time.time() + 30
    while jobs.runner_pid() is None:
        assert time.time() < deadline, "the runner never recorded its pid"
        time.sleep(0.05)
    pid = jobs.runner_pid()
    assert json.loads((lab / jobs.RUNNER_FILE).read_text())["started"] == process_start(pid)
    assert _jobs_cli(lab, "status").stdout.startswith(f"Job runner: running (pid {pid})")
    result = _jobs_cli(lab, "stop")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Stopped the job runner (pid {pid}). Runs in progress keep training" in result.stdout
    assert process_start(pid) is None and not jobs.runner_alive()
    assert trainer.poll() is None and busy.read_status()["state"] == "running"
    assert _jobs_cli(lab, "status").stdout.startswith("Job runner: not running")


def test_stop_never_signals_a_process_the_record_does_not_match(lab, trainer):
    # A stale record: the pid now belongs to another process (another start time), and no runner holds the lock.
    write_json_atomic(lab / jobs.RUNNER_FILE, {"pid": trainer.pid, "started": "1"})
    result = _jobs_cli(lab, "stop")
    assert result.returncode == 0 and "nothing to stop" in result.stdout
    write_json_atomic(lab / jobs.RUNNER_FILE, {"pid": trainer.pid, "started": process_start(trainer.pid)})
    assert "nothing to stop" in _jobs_cli(lab, "stop").stdout, "a live pid that holds no runner lock"
    assert trainer.poll() is None
