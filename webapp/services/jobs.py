"""The job runner: starts queued runs first in, first out, at most one per GPU (one at a time on CPU).

A run is queued by writing RUN/config.yaml, RUN/job.json (its launch command) and status "queued".
The runner is a process of its own (``python -m webapp.services.jobs``), started by the app when none
holds LORA_LAB_HOME/runner.lock, so no browser session owns it. It launches each trainer in a new
session: trainers outlive the runner and the app alike, and a later runner picks up their state from
disk. It never writes status.json while a trainer may (only after the trainer's processes are gone).
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from finetune.rundir import RunDirectory
from webapp.services import devices, workspace

JOB_FILE = "job.json"  # {"command": [...], "gpus": N}: written when queued
LAUNCH_FILE = "launch.json"  # {"pid": ..., "gpu_ids": [...], "launched_at": ...}: written by the runner
LAUNCH_LOG = "launch.log"  # the launcher's stdout/stderr: errors from before the trainer's own log starts
CANCEL_FILE = "cancel.requested"
POLL_SECONDS = 1.0
IDLE_EXIT_SECONDS = 900  # a runner with nothing to do exits; the app starts a new one when needed
GPU_CHECK_SECONDS = 60


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable, half-written or not UTF-8
        return {}


def process_start(pid: Optional[int]) -> Optional[str]:
    """The process's start time (clock ticks since boot), None when there is no such live process.

    Stored beside a pid, it tells the process apart from a later one that reuses the pid (after a restart).
    Zombies count as gone: nothing reaps the orphans of a container whose PID 1 is the app.
    """
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError, TypeError):
        return None
    return None if fields[0] == "Z" else fields[19]


def pid_alive(pid: Optional[int], started: Optional[str] = None) -> bool:
    now = process_start(pid) if pid else None
    return now is not None and (started is None or now == started)


def launched(run: RunDirectory) -> dict:
    return read_json(run.path / LAUNCH_FILE)


def is_active(run: RunDirectory) -> bool:
    """True while the launcher or the trainer of this run is alive."""
    status, launch = run.read_status(), launched(run)
    return pid_alive(launch.get("pid"), launch.get("started")) or \
        (status.get("state") == "running" and pid_alive(status.get("pid")))


@contextlib.contextmanager
def run_lock(run: RunDirectory):
    """Serialises "launch it" (runner) against "cancel it while queued" (app) for one run."""
    with (run.path / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def enqueue(run: RunDirectory, command: list[str], gpus: int) -> None:
    """Queue ``command`` for ``run`` and make sure a runner will start it."""
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / JOB_FILE).write_text(json.dumps({"command": command, "gpus": gpus}, indent=2))
    for stale in (LAUNCH_FILE, CANCEL_FILE):
        (run.path / stale).unlink(missing_ok=True)
    run.update_status(state="queued", queued_at=time.time(), error=None, ended_at=None)
    ensure_runner()


def queued(runs_root: Path) -> list[RunDirectory]:
    """Runs waiting for the runner, oldest first."""
    waiting = [RunDirectory(p) for p in runs_root.iterdir() if p.is_dir()]
    waiting = [r for r in waiting if r.read_status().get("state") == "queued" and not launched(r)]
    return sorted(waiting, key=lambda r: r.read_status().get("queued_at", 0))


def cancel(run: RunDirectory) -> None:
    """Stop a run: a queued one at once, a launched one by SIGTERM (the trainer saves a checkpoint first)."""
    with run_lock(run):
        launch, status = launched(run), run.read_status()
        if pid_alive(launch.get("pid"), launch.get("started")):
            (run.path / CANCEL_FILE).touch()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launch["pid"], signal.SIGTERM)  # the launcher and its trainer processes share this group
        elif status.get("state") == "running" and pid_alive(status.get("pid")):
            os.kill(status["pid"], signal.SIGTERM)  # started outside the app (command line): rank 0 tells the rest
        elif status.get("state") == "queued":
            run.update_status(state="cancelled", ended_at=time.time())


def _fail(run: RunDirectory, error: str) -> None:
    run.update_status(state="failed", ended_at=time.time(), error=error)


class Runner:
    """One pass of ``tick`` settles ended runs and starts what fits, in queue order."""

    def __init__(self, runs_root: Path, gpu_ids: list[int]):
        self.runs_root, self.gpu_ids = runs_root, gpu_ids
        self.children: dict[Path, subprocess.Popen] = {}

    def tick(self) -> bool:
        """Returns whether anything is running or waiting."""
        runs = [RunDirectory(p) for p in self.runs_root.iterdir() if p.is_dir()]
        busy = [r for r in runs if launched(r) and not self._reap_if_done(r)]
        for run in runs:
            self._settle_if_orphaned(run)
        used = {i for r in busy for i in launched(r).get("gpu_ids", [])}
        cpu_busy = any(not launched(r).get("gpu_ids") for r in busy)
        waiting = queued(self.runs_root)
        for run in waiting:
            need = read_json(run.path / JOB_FILE).get("gpus", 0)
            if need > len(self.gpu_ids):
                _fail(run, f"needs {need} GPU(s) but this machine has {len(self.gpu_ids)}; queue it again on a setup that fits")
                continue
            free = [i for i in self.gpu_ids if i not in used]
            if (need and len(free) < need) or (not need and cpu_busy):
                break  # first in, first out: later runs wait behind the head of the queue
            ids = free[:need]
            if self._launch(run, ids):
                used.update(ids)
                cpu_busy = cpu_busy or not need
        return bool(busy or waiting)

    def _launch(self, run: RunDirectory, gpu_ids: list[int]) -> bool:
        """Start the run's command on ``gpu_ids``; False when it could not start (the run is then settled)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
        with run_lock(run):
            if run.read_status().get("state") != "queued":
                return False  # cancelled a moment ago
            try:
                command = _resolve(read_json(run.path / JOB_FILE)["command"])
                with (run.path / LAUNCH_LOG).open("ab") as log:
                    child = subprocess.Popen(command, cwd=workspace.REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            except (OSError, KeyError, IndexError, TypeError) as err:  # a bad job must not stop the queue
                _fail(run, f"could not launch: {type(err).__name__}: {err}")
                return False
            self.children[run.path] = child
            (run.path / LAUNCH_FILE).write_text(json.dumps({"pid": child.pid, "started": process_start(child.pid),
                                                            "gpu_ids": gpu_ids, "launched_at": time.time()}))
        return True

    def _reap_if_done(self, run: RunDirectory) -> bool:
        """True (and the run's final state settled) when its processes are gone."""
        child = self.children.get(run.path)
        code = child.poll() if child is not None else None
        if (child is not None and code is None) or is_active(run):
            return False
        self.children.pop(run.path, None)
        state = run.read_status().get("state")
        if state in ("queued", "running"):  # the trainer never wrote how it ended
            if (run.path / CANCEL_FILE).is_file():
                run.update_status(state="cancelled", ended_at=time.time())
            else:
                _fail(run, f"the trainer exited (code {code}) before finishing: {log_tail(run, 3)}")
        (run.path / LAUNCH_FILE).unlink(missing_ok=True)
        return True

    @staticmethod
    def _settle_if_orphaned(run: RunDirectory) -> None:
        """A run left "running" by a trainer that is gone (killed, machine restarted) is marked failed."""
        status = run.read_status()
        if status.get("state") == "running" and not launched(run) and not pid_alive(status.get("pid")):
            _fail(run, f"the trainer (pid {status.get('pid')}) ended without reporting; resume it from its last checkpoint")


def _resolve(command: list[str]) -> list[str]:
    """`accelerate` from this environment when the job names it bare (the app's own virtual environment)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return [str(accelerate), *command[1:]] if command[0] == "accelerate" and accelerate.is_file() else command


def log_tail(run: RunDirectory, lines: int = 40) -> str:
    """The last lines of the trainer's log, or of the launcher's output when the trainer logged nothing."""
    for path in (run.log_path, run.path / LAUNCH_LOG):
        if path.is_file() and path.stat().st_size:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def runner_alive() -> bool:
    with (workspace.home() / "runner.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def ensure_runner() -> None:
    """Start the runner unless one is alive (a second one started at the same time exits at once)."""
    if runner_alive():
        return
    env = {**os.environ, "LORA_LAB_HOME": str(workspace.home())}  # the runner starts elsewhere (in REPO)
    with (workspace.home() / "runner.log").open("ab") as log:
        subprocess.Popen([sys.executable, "-m", "webapp.services.jobs"], cwd=workspace.REPO, env=env, stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def main() -> int:
    lock = (workspace.home() / "runner.lock").open("a")
    runner = Runner(workspace.runs_dir(), [])
    while _take(lock):
        _serve(runner)
        fcntl.flock(lock, fcntl.LOCK_UN)
        if not queued(runner.runs_root):  # else a run was queued as this runner went idle: serve it too
            return 0
    return 0  # another runner has the lock


def _take(lock, seconds: float = 2.0) -> bool:
    """The runner lock, waiting out the app's momentary probes (runner_alive) but not another runner."""
    deadline = time.time() + seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.time() > deadline:
                return False
            time.sleep(0.1)


def _serve(runner: Runner) -> None:
    """Tick until nothing has been queued or running for IDLE_EXIT_SECONDS."""
    idle_since, checked_gpus = time.time(), 0.0
    while time.time() - idle_since < IDLE_EXIT_SECONDS:
        if time.time() - checked_gpus > GPU_CHECK_SECONDS:  # a slow nvidia-smi at start must not stick
            runner.gpu_ids, checked_gpus = [gpu.index for gpu in devices.detect_gpus()], time.time()
        try:
            busy = runner.tick()
        except Exception:  # keep serving the queue; the traceback goes to runner.log
            traceback.print_exc()
            busy = True
        if busy:
            idle_since = time.time()
        time.sleep(POLL_SECONDS)

if __name__ == "__main__":
    sys.exit(main())
