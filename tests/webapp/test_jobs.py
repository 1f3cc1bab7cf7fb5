"""The job runner: FIFO order, one run per GPU (one on CPU), crashes and cancels settled on disk.

The runner builds each run's command itself from its checked job.json; here ``command_for`` swaps the
real `accelerate launch` for a fake trainer chosen per run (FakeTrainers), so no test trains anything.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.rundir import RunDirectory, pid_alive, process_start, read_json
from webapp.runner import jobs, loop
from webapp.services import registry, settings

# Stands in for `accelerate launch ...`: reports running like the trainer (pid with its start time),
# waits, then ends as told.
FAKE_TRAINER = """
import os, sys, time
from finetune.rundir import RunDirectory, process_start
run = RunDirectory(sys.argv[1])
run.update_status(state="running", pid=os.getpid(), pid_started=process_start(os.getpid()),
                  gpus=os.environ.get("CUDA_VISIBLE_DEVICES"), resume=sys.argv[2:] == ["resume"])
while not os.path.exists(os.path.join(sys.argv[1], "release")):
    time.sleep(0.05)
run.update_status(state="finished")
"""


class FakeTrainers:
    """A runner's ``command_for``: the fake trainer script registered for each run (by run name)."""

    def __init__(self):
        self.scripts: dict[str, str] = {}
        self.built: list[tuple[str, jobs.Job]] = []  # (run name, job) of every command asked for

    def __call__(self, run: RunDirectory, job: jobs.Job) -> list[str]:
        self.built.append((run.path.name, job))
        return [sys.executable, "-c", self.scripts[run.path.name], str(run.path)] + (["resume"] if job.resume else [])


@pytest.fixture
def trainers() -> FakeTrainers:
    return FakeTrainers()


def local_runs(home: Path):
    """The runner's view of a single-user workspace: the local user's runs folder."""
    return lambda: {"local": home / "runs"}


def queued_runs(home: Path) -> list[RunDirectory]:
    return [run for _, run in jobs.queued(registry.runs_by_owner({"local": home / "runs"}, shared=False))]


def runner_for(home: Path, trainers: FakeTrainers, gpu_ids: list[int], **limits) -> loop.Runner:
    return loop.Runner(local_runs(home), gpu_ids, command_for=trainers, limits=settings.Settings(**limits))


@pytest.fixture
def home(no_runner) -> Path:
    """A workspace whose runner lock this test holds (see conftest), so queueing starts no background runner."""
    return no_runner


def queue_fake(
    home: Path, trainers: FakeTrainers, name: str, gpus: int = 0, script: str = FAKE_TRAINER, resume: bool = False
) -> RunDirectory:
    run = RunDirectory(home / "runs" / name)
    trainers.scripts[name] = script
    jobs.enqueue(run, jobs.Job("cpu", 1, gpus, resume))
    time.sleep(0.01)  # distinct queued_at stamps
    return run


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def state(run: RunDirectory) -> str:
    return run.read_status().get("state")


def finish(runner: loop.Runner, run: RunDirectory) -> None:
    (run.path / "release").touch()
    wait_for(lambda: state(run) == "finished")
    wait_for(lambda: not runner.tick() or not jobs.launched(run))


def test_cpu_runs_one_at_a_time_in_queue_order(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[])
    first, second, third = (queue_fake(home, trainers, name) for name in ("a", "b", "c"))
    assert [r.path.name for r in queued_runs(home)] == ["a", "b", "c"]
    runner.tick()
    wait_for(lambda: state(first) == "running")
    assert [r.path.name for r in queued_runs(home)] == ["b", "c"]
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
    assert [name for name, _ in trainers.built] == ["a", "b", "c"]  # one command each, in queue order
    assert {job for _, job in trainers.built} == {jobs.Job("cpu", 1, 0)}  # built from the job.json enqueue wrote


def test_gpu_runs_get_their_own_gpus_and_the_queue_head_blocks_later_runs(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[0, 1])
    one, two = queue_fake(home, trainers, "one", gpus=1), queue_fake(home, trainers, "two", gpus=2)
    later = queue_fake(home, trainers, "later", gpus=1)
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
    assert [(name, job.gpus) for name, job in trainers.built] == [("one", 1), ("two", 2), ("later", 1)]


def test_a_trainer_that_dies_without_reporting_is_marked_failed_with_its_output(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[])
    run = queue_fake(home, trainers, "crash", script="import sys; print('boom: out of memory'); sys.exit(3)")
    runner.tick()
    wait_for(lambda: not runner.tick())
    status = run.read_status()
    assert status["state"] == "failed"
    assert "code 3" in status["error"] and "boom: out of memory" in status["error"]
    assert not jobs.launched(run)


def test_cancel_a_queued_run_and_a_running_one(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[])
    running, waiting = queue_fake(home, trainers, "running"), queue_fake(home, trainers, "waiting")
    runner.tick()
    wait_for(lambda: state(running) == "running")
    jobs.cancel(waiting)
    assert state(waiting) == "cancelled"
    jobs.cancel(running)  # SIGTERM: the fake trainer has no handler and dies at once
    assert isinstance(read_json(running.cancel_path).get("at"), float)
    wait_for(lambda: not runner.tick())
    assert state(running) == "cancelled" and running.read_status().get("error") is None  # stopped in time: no kill
    assert not running.killed_path.exists() and not jobs.launched(running)
    assert queued_runs(home) == []
    assert [name for name, _ in trainers.built] == ["running"]  # the cancelled queued run never launched


def test_resumed_run_is_queued_again_with_a_fresh_launch(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[])
    run = queue_fake(home, trainers, "again", script="import sys; sys.exit(1)")
    runner.tick()
    wait_for(lambda: not runner.tick())
    assert state(run) == "failed"
    run.cancel_path.write_text("{}")  # leftovers of the first attempt are cleared by enqueue
    run.killed_path.write_text("{}")
    trainers.scripts["again"] = FAKE_TRAINER
    jobs.enqueue(run, jobs.Job("cpu", 1, 0, resume=True))  # as runs.resume does
    assert jobs.Job.read(run) == jobs.Job("cpu", 1, 0, resume=True)
    assert state(run) == "queued" and run.read_status()["error"] is None and run.read_status()["ended_at"] is None
    assert not any(path.exists() for path in (run.launch_path, run.cancel_path, run.killed_path))
    assert [r.path.name for r in queued_runs(home)] == ["again"]
    runner.tick()
    wait_for(lambda: state(run) == "running")
    assert run.read_status()["resume"] is True  # the resume flag reached the command
    finish(runner, run)
    assert [job.resume for _, job in trainers.built] == [False, True]


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
        return (
            b"webapp.runner" in (proc / "cmdline").read_bytes()
            and f"LORA_LAB_HOME={home}".encode() in (proc / "environ").read_bytes()
        )
    except OSError:
        return False


def test_jobs_that_cannot_start_fail_with_a_message_and_the_queue_moves_on(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[])
    too_big = queue_fake(home, trainers, "too-big", gpus=2)
    missing = queue_fake(home, trainers, "missing-binary")
    unknown = queue_fake(home, trainers, "unknown-preset")
    unknown.job_path.write_text('{"preset": "tpu", "num_processes": 1, "gpus": 0, "resume": false}')
    fine = queue_fake(home, trainers, "fine")
    real = trainers.__call__

    def command_for(run, job):
        return ["/nonexistent/accelerate", "launch"] if run.path.name == "missing-binary" else real(run, job)

    runner.command_for = command_for
    runner.tick()
    assert state(too_big) == "failed" and "needs 2 GPU(s) but this machine has 0" in too_big.read_status()["error"]
    assert state(missing) == "failed" and "could not launch: FileNotFoundError" in missing.read_status()["error"]
    assert state(unknown) == "failed" and "could not launch" in unknown.read_status()["error"]
    assert "'tpu'" in unknown.read_status()["error"]
    assert not any(jobs.launched(r) for r in (too_big, missing, unknown))
    wait_for(lambda: state(fine) == "running")
    finish(runner, fine)
    assert [name for name, _ in trainers.built] == ["fine"]


def test_a_run_left_running_by_a_vanished_trainer_is_marked_failed(home):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(gone.pid)
    gone.wait()
    orphan = RunDirectory(home / "runs" / "orphan")
    orphan.update_status(state="running", pid=gone.pid, pid_started=started)  # e.g. a CLI run killed with SIGKILL
    loop.Runner(local_runs(home), gpu_ids=[], limits=settings.Settings()).tick()
    assert state(orphan) == "failed" and "ended without reporting" in orphan.read_status()["error"]
    assert f"pid {gone.pid}" in orphan.read_status()["error"]


def test_zombies_and_reused_pids_do_not_count_as_alive():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    started = process_start(child.pid)
    assert started is not None and pid_alive(child.pid, started)
    wait_for(lambda: process_start(child.pid) is None)  # exited, not yet reaped: a zombie
    assert not pid_alive(child.pid, started)
    child.wait()
    me = os.getpid()
    assert pid_alive(me, process_start(me))
    assert not pid_alive(me, None), "a pid without its start time is never alive"
    assert not pid_alive(me, "1"), "the same pid started at another time is another process"
    assert not pid_alive(None, process_start(me)) and process_start(None) is None
