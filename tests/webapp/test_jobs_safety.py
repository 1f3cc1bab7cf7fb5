"""The job runner under hostile or broken conditions: tampered run folders, frozen, silent or unkillable
trainers, reused pids. Every process a test starts carries its LORA_LAB_HOME, so the `lab` fixture stops
whatever a failing test leaves behind.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.rundir import RunDirectory, process_start, read_json, write_json_atomic
from tests.webapp.test_jobs import (
    FAKE_TRAINER,
    FakeTrainers,
    local_runs,
    queue_fake,
    queued_runs,
    runner_for,
    state,
    wait_for,
)
from webapp.runner import jobs, loop
from webapp.services import settings, workspace


@pytest.fixture
def home(no_runner) -> Path:
    """A workspace whose runner lock this test holds (see conftest), so queueing starts no background runner."""
    return no_runner


@pytest.fixture
def trainers() -> FakeTrainers:
    return FakeTrainers()


@pytest.fixture
def popen_calls(monkeypatch) -> list[list[str]]:
    """Every command the runner hands to subprocess.Popen during the test (still started for real)."""
    calls, real = [], subprocess.Popen

    def spy(command, *args, **kwargs):
        calls.append(list(command))
        return real(command, *args, **kwargs)

    monkeypatch.setattr(jobs.subprocess, "Popen", spy)
    return calls


def tick_until(runner: loop.Runner, predicate, timeout: float = 15.0) -> float:
    """Tick the runner (as its loop does, faster) until ``predicate``; returns the seconds it took."""
    start = time.time()
    while not predicate():
        assert time.time() - start < timeout, "timed out"
        runner.tick()
        time.sleep(0.1)
    return time.time() - start


def alive(pid: int) -> bool:
    return process_start(pid) is not None  # zombies count as dead


def read_pids(run: RunDirectory) -> dict:
    wait_for(lambda: (run.path / "pids.json").is_file(), timeout=15)
    return json.loads((run.path / "pids.json").read_text())


def killed_after_cancel(run: RunDirectory) -> float:
    return run.read_killed()["at"] - read_json(run.cancel_path)["at"]


def release_when_running(runner: loop.Runner, run: RunDirectory) -> None:
    """The next run in the queue starts once the slot is free, then finishes normally."""
    tick_until(runner, lambda: state(run) == "running")
    (run.path / "release").touch()
    tick_until(runner, lambda: state(run) == "finished" and not jobs.launched(run))


# --- a. nothing in a run folder becomes a command ---------------------------------------------------------

TAMPERED_JOBS = {
    "old-command": '{"command": ["/bin/sh", "-c", "touch PWNED; touch %(home)s/PWNED"], "gpus": 0}',
    "preset-path": '{"preset": "../../x", "num_processes": 1, "gpus": 0, "resume": false}',
    "preset-binary": '{"preset": "/bin/sh", "num_processes": 1, "gpus": 0, "resume": false}',
    "preset-list": '{"preset": ["cpu", "-c", "touch PWNED"], "num_processes": 1, "gpus": 0, "resume": false}',
    "count-injection": '{"preset": "cpu", "num_processes": "1; rm -rf ~", "gpus": 0, "resume": false}',
    "count-bool": '{"preset": "cpu", "num_processes": true, "gpus": 0, "resume": false}',
    "count-float": '{"preset": "cpu", "num_processes": 1.5, "gpus": 0, "resume": false}',
    "count-huge": '{"preset": "cpu", "num_processes": 100000, "gpus": 0, "resume": false}',
    "gpus-negative": '{"preset": "cpu", "num_processes": 1, "gpus": -1, "resume": false}',
    "resume-flag": '{"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": "--config=/etc/passwd"}',
    "not-json": "preset=cpu; touch PWNED",
    "not-a-mapping": '["/bin/sh", "-c", "touch PWNED"]',
}


def test_a_tampered_job_json_fails_its_run_and_starts_nothing(home, popen_calls):
    runner = loop.Runner(local_runs(home), gpu_ids=[], limits=settings.Settings())  # the real launch_command
    runs = {}
    for name, text in TAMPERED_JOBS.items():
        run = runs[name] = RunDirectory(home / "runs" / name)
        jobs.enqueue(run, jobs.Job("cpu", 1, 0))  # queued properly, then job.json edited by hand
        run.job_path.write_text(text % {"home": home} if "%(home)s" in text else text)
        with pytest.raises(ValueError):
            jobs.Job.read(run)
    assert len(queued_runs(home)) == len(TAMPERED_JOBS)
    runner.tick()
    failed = {name: run.read_status() for name, run in runs.items()}
    assert [name for name, status in failed.items() if status["state"] == "failed"] == list(TAMPERED_JOBS)
    for name, status in failed.items():
        assert status["error"].startswith("could not launch: job.json"), (name, status["error"])
        assert not jobs.launched(runs[name]) and not runs[name].launch_log_path.exists(), name
    assert popen_calls == []  # the runner started no process at all
    assert not runner.tick() and queued_runs(home) == []  # nothing left waiting: the queue moved on
    assert sorted(home.rglob("PWNED*")) == [] and not (workspace.REPO / "PWNED").exists()


def expected_command(run: RunDirectory, preset: str = "cpu", processes: int = 1) -> list[str]:
    return [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(workspace.REPO / "configs" / "accelerate" / f"{preset}.yaml"),
        "--num_processes",
        str(processes),
        str(workspace.REPO / "finetune" / "train.py"),
        "--config",
        str(run.config_path),
        "--output_dir",
        str(run.path),
    ]


def test_the_command_is_built_from_checked_names_and_always_writes_into_the_run_folder(home, popen_calls):
    """Extra keys in job.json are ignored, and config.yaml's output_dir is overridden: checked with the real
    `accelerate launch` of a config whose model does not exist (the trainer fails within seconds)."""
    elsewhere = home / "elsewhere"
    run = RunDirectory(home / "runs" / "redirected")
    jobs.enqueue(run, jobs.Job("cpu", 1, 0))
    job = json.loads(run.job_path.read_text())
    job["command"] = ["/bin/sh", "-c", f"touch {home}/PWNED"]  # ignored: job.json names, never commands
    run.job_path.write_text(json.dumps(job))
    run.config_path.write_text(
        f"model_name_or_path: {home}/no-such-model\ntrain_file: {home}/none.txt\noutput_dir: {elsewhere}\n"
    )
    assert jobs.Job.read(run) == jobs.Job("cpu", 1, 0)
    command = jobs.launch_command(run, jobs.Job.read(run))
    assert command == expected_command(run)
    assert command[-2:] == ["--output_dir", str(run.path)] and command.count("--output_dir") == 1
    resumed = jobs.launch_command(run, jobs.Job("multi_gpu", 2, 2, resume=True))
    assert resumed == expected_command(run, "multi_gpu", 2) + ["--resume_from_checkpoint", "true"]

    runner = loop.Runner(local_runs(home), gpu_ids=[], limits=settings.Settings())
    runner.tick()
    wait_for(lambda: not runner.tick(), timeout=60)
    assert popen_calls == [expected_command(run)]  # exactly one process started: accelerate, as built
    status = run.read_status()
    assert status["state"] == "failed" and "model_name_or_path" in status["error"]  # the trainer's own report
    assert run.log_path.is_file()  # the trainer wrote into the run folder ...
    assert not elsewhere.exists()  # ... and not where config.yaml pointed
    assert sorted(home.rglob("PWNED*")) == [] and not (workspace.REPO / "PWNED").exists()


# --- b. c. frozen and silent trainers -----------------------------------------------------------------------


def test_a_stopped_trainer_is_killed_after_the_cancel_grace_and_the_queue_moves_on(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[], cancel_grace_seconds=1)
    frozen, after = queue_fake(home, trainers, "frozen"), queue_fake(home, trainers, "after")
    tick_until(runner, lambda: state(frozen) == "running")
    pid = frozen.read_status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T")
    jobs.cancel(frozen)  # SIGTERM stays pending in a stopped process
    runner.tick()
    assert alive(pid) and state(frozen) == "running" and state(after) == "queued"
    tick_until(runner, lambda: state(frozen) != "running")
    # Killed once the 1 s grace was over, never before; the upper bound only says "eventually" (a busy machine ticks
    # late), the runner being ticked until it happened.
    assert 1 < killed_after_cancel(frozen) < 30
    status = frozen.read_status()
    assert status["state"] == "cancelled" and "did not stop within 1 s of Cancel" in status["error"]
    assert not alive(pid)
    assert not jobs.launched(frozen) and frozen.read_killed()["reason"] == status["error"]
    release_when_running(runner, after)
    assert [name for name, _ in trainers.built] == ["frozen", "after"]


SILENT_TRAINER = """
import json, os, subprocess, sys, time
from finetune.rundir import RunDirectory, process_start
run = RunDirectory(sys.argv[1])
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # e.g. a data loader worker
with open(os.path.join(sys.argv[1], "pids.json"), "w") as f:  # not a progress file
    json.dump({"trainer": os.getpid(), "helper": helper.pid}, f)
run.update_status(state="running", pid=os.getpid(), pid_started=process_start(os.getpid()))
time.sleep(120)  # hung: reports nothing more
"""

# Reports progress every 0.3 s, so runs longer than the stall limit without being killed.
HEARTBEAT_TRAINER = FAKE_TRAINER.replace(
    "    time.sleep(0.05)", "    time.sleep(0.3); run.update_status(beat=time.time())"
)


def test_a_silent_trainer_is_failed_as_stalled_while_a_slow_but_live_one_is_left_alone(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[], stall_seconds=2)
    silent = queue_fake(home, trainers, "silent", script=SILENT_TRAINER)
    beating = queue_fake(home, trainers, "beating", script=HEARTBEAT_TRAINER)
    tick_until(runner, lambda: state(silent) == "running")
    pids = read_pids(silent)
    assert all(alive(pid) for pid in pids.values())
    tick_until(runner, lambda: state(silent) != "running")
    silent_for = silent.read_killed()["at"] - (silent.path / "pids.json").stat().st_mtime
    assert 2 < silent_for < 4, silent_for  # the last sign of life came after pids.json
    status = silent.read_status()
    assert status["state"] == "failed" and "stalled: it reported no progress for 2 s" in status["error"]
    assert "its processes were killed" in status["error"]
    assert [name for name, pid in pids.items() if alive(pid)] == []  # the trainer and its helper
    assert not jobs.launched(silent)
    tick_until(runner, lambda: state(beating) == "running")
    time.sleep(3)  # longer than stall_seconds, ticking all along
    for _ in range(10):
        runner.tick()
        time.sleep(0.1)
    assert state(beating) == "running" and not beating.killed_path.exists()
    (beating.path / "release").touch()
    tick_until(runner, lambda: state(beating) == "finished" and not jobs.launched(beating))


def test_a_run_past_its_time_limit_is_stopped_though_it_keeps_reporting(home, trainers):
    runner = runner_for(home, trainers, gpu_ids=[], max_run_seconds=2)
    endless = queue_fake(home, trainers, "endless", script=HEARTBEAT_TRAINER)
    waiting = queue_fake(home, trainers, "waiting")
    tick_until(runner, lambda: state(endless) != "running" and state(endless) != "queued")
    status = endless.read_status()
    assert status["state"] == "failed" and "ran longer than the 2 s one run may take" in status["error"]
    tick_until(runner, lambda: state(waiting) == "running")  # its slot went to the next run
    (waiting.path / "release").touch()
    tick_until(runner, lambda: state(waiting) == "finished" and not jobs.launched(waiting))


# --- d. a pid reused by an unrelated process --------------------------------------------------------------


def test_a_reused_pid_is_neither_trusted_nor_signalled(home):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # dies of any signal
    try:
        started = process_start(bystander.pid)
        other_start = str(int(started) + 1)  # the recorded trainer had this pid, but started at another time
        reused = RunDirectory(home / "runs" / "reused")
        reused.update_status(state="running", pid=bystander.pid, pid_started=other_start)
        unstamped = RunDirectory(home / "runs" / "unstamped")
        unstamped.update_status(state="running", pid=bystander.pid)  # no start time: never alive
        relaunched = RunDirectory(home / "runs" / "relaunched")  # a launcher pid reused
        relaunched.update_status(state="queued", queued_at=time.time())
        write_json_atomic(
            relaunched.launch_path, {"pid": bystander.pid, "started": other_start, "gpu_ids": [], "launched_at": 0}
        )
        assert not any(jobs.is_active(r) for r in (reused, unstamped, relaunched))
        for run in (reused, unstamped, relaunched):
            jobs.cancel(run)
        assert not any(r.cancel_path.exists() for r in (reused, unstamped, relaunched))
        # Limits that would kill any live run at once: still nothing may touch the bystander.
        runner = loop.Runner(
            local_runs(home), gpu_ids=[], limits=settings.Settings(cancel_grace_seconds=0.01, stall_seconds=0.01)
        )
        for _ in range(3):
            runner.tick()
            time.sleep(0.1)
        for run in (reused, unstamped):
            assert state(run) == "failed" and "ended without reporting" in run.read_status()["error"], run.path.name
            jobs.cancel(run)
        assert state(relaunched) == "cancelled" and not jobs.launched(relaunched)
        assert not any(r.killed_path.exists() for r in (reused, unstamped, relaunched))
        assert bystander.poll() is None and process_start(bystander.pid) == started  # never signalled
    finally:
        bystander.kill()
        bystander.wait()


# --- e. processes that escape the launcher's process group ------------------------------------------------

# A rank in a session of its own (as torch's launcher starts them) that ignores SIGTERM, with a child of its
# own that does too. argv: run folder, "trainer" when it is the trainer (reports in status.json).
RANK = """
import json, os, signal, subprocess, sys, time
from finetune.rundir import RunDirectory, process_start
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                               "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "time.sleep(120)"], start_new_session=True)
if sys.argv[2] == "trainer":
    RunDirectory(sys.argv[1]).update_status(state="running", pid=os.getpid(), pid_started=process_start(os.getpid()))
tmp = os.path.join(sys.argv[1], "pids.tmp")
with open(tmp, "w") as f:
    json.dump({"rank": os.getpid(), "grandchild": grandchild.pid}, f)
os.replace(tmp, os.path.join(sys.argv[1], "pids.json"))
time.sleep(120)
"""

LAUNCHER = (
    """
import os, signal, subprocess, sys, time
from finetune.rundir import RunDirectory, process_start
mode, rank = sys.argv[2], [sys.executable, "-c", %r, sys.argv[1]]
if mode != "launcher-dies":
    signal.signal(signal.SIGTERM, lambda *_: None)  # like torchrun's agent: stays until its ranks are gone
if mode == "launcher-waits":  # the launcher reports; its rank is just a descendant
    RunDirectory(sys.argv[1]).update_status(state="running", pid=os.getpid(), pid_started=process_start(os.getpid()))
    subprocess.Popen(rank + ["rank"], start_new_session=True)
elif mode == "launcher-dies":  # the rank is the trainer; the launcher dies at SIGTERM, leaving it behind
    subprocess.Popen(rank + ["trainer"], start_new_session=True)
else:  # "trainer-detached": the trainer is started through a process that exits: no longer below the launcher
    subprocess.run([sys.executable, "-c",
                    "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"]
                   + rank + ["trainer"])
while True:
    time.sleep(1)
"""
    % RANK
)


@pytest.mark.parametrize("mode", ["launcher-waits", "launcher-dies", "trainer-detached"])
def test_cancel_kills_ranks_in_sessions_of_their_own_that_ignore_sigterm(home, trainers, mode):
    runner = runner_for(home, trainers, gpu_ids=[], cancel_grace_seconds=1)
    trainers.scripts["stubborn"] = LAUNCHER
    stubborn = RunDirectory(home / "runs" / "stubborn")
    jobs.enqueue(stubborn, jobs.Job("cpu", 1, 0))
    original = trainers.__call__
    runner.command_for = lambda run, job: original(run, job) + ([mode] if run.path.name == "stubborn" else [])
    after = queue_fake(home, trainers, "after")
    tick_until(runner, lambda: state(stubborn) == "running")
    pids = {"launcher": jobs.launched(stubborn)["pid"], **read_pids(stubborn)}
    assert len(pids) == 3 and all(alive(pid) for pid in pids.values())
    assert len({os.getsid(pid) for pid in pids.values()}) == 3  # three sessions: SIGTERM to a group misses two
    jobs.cancel(stubborn)
    time.sleep(0.3)
    runner.tick()
    assert alive(pids["rank"]) and alive(pids["grandchild"]) and state(stubborn) == "running"
    tick_until(runner, lambda: state(stubborn) != "running")
    assert 1 < killed_after_cancel(stubborn) < 30
    assert state(stubborn) == "cancelled" and "did not stop within 1 s of Cancel" in stubborn.read_status()["error"]
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert not jobs.launched(stubborn)
    release_when_running(runner, after)


# --- garbled bookkeeping files ------------------------------------------------------------------------------


@pytest.mark.parametrize("request_text", ["", '{"at": "yesterday"}', "[1, 2"])
def test_an_empty_or_garbled_cancel_request_still_escalates_and_garbled_times_do_not_stop_the_queue(
    home, trainers, request_text
):
    """An earlier version wrote cancel.requested empty: it counts from the file's time instead of never."""
    runner = runner_for(home, trainers, gpu_ids=[], cancel_grace_seconds=1)
    stuck = queue_fake(
        home, trainers, "stuck", script="import signal; signal.signal(15, signal.SIG_IGN)" + FAKE_TRAINER
    )
    garbled = queue_fake(home, trainers, "garbled")
    tick_until(runner, lambda: state(stuck) == "running")
    garbled.update_status(queued_at="tomorrow")  # counts as 0 instead of raising in every tick
    assert [r.path.name for r in queued_runs(home)] == ["garbled"]
    pid = stuck.read_status()["pid"]
    stuck.cancel_path.write_text(request_text)
    os.kill(pid, signal.SIGTERM)  # ignored
    cancel_time = stuck.cancel_path.stat().st_mtime
    assert stuck.cancel_requested_at() == cancel_time
    tick_until(runner, lambda: state(stuck) != "running")
    killed_after = stuck.read_killed()["at"] - cancel_time
    assert 1 < killed_after < 30 and state(stuck) == "cancelled" and not alive(pid)
    release_when_running(runner, garbled)
