"""The job runner: FIFO order, one run per GPU (one on CPU), crashes and cancels settled on disk."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from finetune.rundir import RunDirectory
from webapp.services import jobs

# Stands in for `accelerate launch ...`: reports running like the trainer, waits, then ends as told.
FAKE_TRAINER = """
import os, sys, time
from finetune.rundir import RunDirectory
run = RunDirectory(sys.argv[1])
run.update_status(state="running", pid=os.getpid(), gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
while not os.path.exists(os.path.join(sys.argv[1], "release")):
    time.sleep(0.05)
run.update_status(state="finished")
"""


@pytest.fixture
def home(no_runner) -> Path:
    """A workspace whose runner lock this test holds (see conftest), so queueing starts no background runner."""
    return no_runner


def queue_fake(home: Path, name: str, gpus: int = 0, script: str = FAKE_TRAINER) -> RunDirectory:
    run = RunDirectory(home / "runs" / name)
    jobs.enqueue(run, [sys.executable, "-c", script, str(run.path)], gpus)
    time.sleep(0.01)  # distinct queued_at stamps
    return run


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def state(run: RunDirectory) -> str:
    return run.read_status().get("state")


def finish(runner: jobs.Runner, run: RunDirectory) -> None:
    (run.path / "release").touch()
    wait_for(lambda: state(run) == "finished")
    wait_for(lambda: not runner.tick() or not jobs.launched(run))


def test_cpu_runs_one_at_a_time_in_queue_order(home):
    runner = jobs.Runner(home / "runs", gpu_ids=[])
    first, second, third = (queue_fake(home, name) for name in ("a", "b", "c"))
    assert [r.path.name for r in jobs.queued(home / "runs")] == ["a", "b", "c"]
    runner.tick()
    wait_for(lambda: state(first) == "running")
    assert [r.path.name for r in jobs.queued(home / "runs")] == ["b", "c"]
    for _ in range(3):
        runner.tick()
    assert state(second) == state(third) == "queued" and not jobs.launched(second)
    finish(runner, first)
    runner.tick()
    wait_for(lambda: state(second) == "running")
    assert state(third) == "queued"
    finish(runner, second)
    runner.tick()
    finish(runner, third)
    assert [state(r) for r in (first, second, third)] == ["finished"] * 3


def test_gpu_runs_get_their_own_gpus_and_the_queue_head_blocks_later_runs(home):
    runner = jobs.Runner(home / "runs", gpu_ids=[0, 1])
    one, two, later = queue_fake(home, "one", gpus=1), queue_fake(home, "two", gpus=2), queue_fake(home, "later", gpus=1)
    runner.tick()
    wait_for(lambda: state(one) == "running")
    assert one.read_status()["gpus"] == "0"
    assert state(two) == "queued" and state(later) == "queued"  # "later" fits on GPU 1 but waits its turn
    finish(runner, one)
    runner.tick()
    wait_for(lambda: state(two) == "running")
    assert two.read_status()["gpus"] == "0,1"
    finish(runner, two)
    runner.tick()
    wait_for(lambda: state(later) == "running")
    finish(runner, later)


def test_a_trainer_that_dies_without_reporting_is_marked_failed_with_its_output(home):
    runner = jobs.Runner(home / "runs", gpu_ids=[])
    run = queue_fake(home, "crash", script="import sys; print('boom: out of memory'); sys.exit(3)")
    runner.tick()
    wait_for(lambda: not runner.tick())
    status = run.read_status()
    assert status["state"] == "failed"
    assert "code 3" in status["error"] and "boom: out of memory" in status["error"]
    assert not jobs.launched(run)


def test_cancel_a_queued_run_and_a_running_one(home):
    runner = jobs.Runner(home / "runs", gpu_ids=[])
    running, waiting = queue_fake(home, "running"), queue_fake(home, "waiting")
    runner.tick()
    wait_for(lambda: state(running) == "running")
    jobs.cancel(waiting)
    assert state(waiting) == "cancelled"
    jobs.cancel(running)  # SIGTERM: the fake trainer has no handler and dies at once
    wait_for(lambda: not runner.tick())
    assert state(running) == "cancelled"
    assert jobs.queued(home / "runs") == []


def test_resumed_run_is_queued_again_with_a_fresh_launch(home):
    runner = jobs.Runner(home / "runs", gpu_ids=[])
    run = queue_fake(home, "again", script="import sys; sys.exit(1)")
    runner.tick()
    wait_for(lambda: not runner.tick())
    assert state(run) == "failed"
    job = json.loads((run.path / jobs.JOB_FILE).read_text())
    jobs.enqueue(run, job["command"][:-1] + [str(run.path)], 0)
    assert state(run) == "queued" and run.read_status()["error"] is None
    assert [r.path.name for r in jobs.queued(home / "runs")] == ["again"]


def test_ensure_runner_starts_one_background_runner_that_outlives_its_caller(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path))
    assert not jobs.runner_alive()
    jobs.ensure_runner()
    wait_for(jobs.runner_alive)
    jobs.ensure_runner()  # a second call while one is alive starts nothing
    pids = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs_runner(p, tmp_path)]
    try:
        assert len(pids) == 1
    finally:
        for pid in pids:
            os.kill(int(pid.name), 15)
    wait_for(lambda: not jobs.runner_alive())


def _runs_runner(proc: Path, home: Path) -> bool:
    try:
        return b"webapp.services.jobs" in (proc / "cmdline").read_bytes() and \
            f"LORA_LAB_HOME={home}".encode() in (proc / "environ").read_bytes()
    except OSError:
        return False


def test_jobs_that_cannot_start_fail_with_a_message_and_the_queue_moves_on(home):
    runner = jobs.Runner(home / "runs", gpu_ids=[])
    too_big = queue_fake(home, "too-big", gpus=2)
    missing = RunDirectory(home / "runs" / "missing-binary")
    jobs.enqueue(missing, ["/nonexistent/accelerate", "launch"], 0)
    fine = queue_fake(home, "fine")
    runner.tick()
    assert state(too_big) == "failed" and "needs 2 GPU(s) but this machine has 0" in too_big.read_status()["error"]
    assert state(missing) == "failed" and "could not launch: FileNotFoundError" in missing.read_status()["error"]
    wait_for(lambda: state(fine) == "running")
    finish(runner, fine)


def test_a_run_left_running_by_a_vanished_trainer_is_marked_failed(home):
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = RunDirectory(home / "runs" / "orphan")
    orphan.update_status(state="running", pid=gone.pid)  # e.g. a CLI run killed with SIGKILL
    jobs.Runner(home / "runs", gpu_ids=[]).tick()
    assert state(orphan) == "failed" and "ended without reporting" in orphan.read_status()["error"]


def test_zombies_and_reused_pids_do_not_count_as_alive():
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: jobs.process_start(child.pid) is None)  # exited, not yet reaped: a zombie
    assert not jobs.pid_alive(child.pid)
    child.wait()
    me = os.getpid()
    assert jobs.pid_alive(me) and jobs.pid_alive(me, jobs.process_start(me))
    assert not jobs.pid_alive(me, "1"), "the same pid started at another time is another process"
