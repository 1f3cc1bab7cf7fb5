"""The job runner: starts queued runs first in, first out, at most one per GPU (one at a time on CPU).

A run is queued by writing RUN/config.yaml, RUN/job.json (its launch command) and status "queued".
The runner is a process of its own (``python -m webapp.services.jobs``), started by the app when none
holds LORA_LAB_HOME/runner.lock, so no browser session owns it. It launches each trainer in a new
session: trainers outlive the runner and the app alike, and a later runner picks up their state from
disk. It never writes status.json while a trainer may (only after the trainer's processes are gone).
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def launched(run: RunDirectory) -> dict:
    return read_json(run.path / LAUNCH_FILE)


def is_active(run: RunDirectory) -> bool:
    """True while the launcher or the trainer of this run is alive."""
    status = run.read_status()
    return pid_alive(launched(run).get("pid")) or (status.get("state") == "running" and pid_alive(status.get("pid")))


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
    pid = launched(run).get("pid")
    if not pid_alive(pid):
        if run.read_status().get("state") == "queued":
            run.update_status(state="cancelled", ended_at=time.time())
        return
    (run.path / CANCEL_FILE).touch()
    try:
        os.killpg(pid, signal.SIGTERM)  # the launcher and its trainer processes share this group
    except ProcessLookupError:
        pass


class Runner:
    """One pass of ``tick`` reaps finished launches and starts what fits, in queue order."""

    def __init__(self, runs_root: Path, gpu_ids: list[int]):
        self.runs_root, self.gpu_ids = runs_root, gpu_ids
        self.children: dict[Path, subprocess.Popen] = {}

    def tick(self) -> bool:
        """Returns whether anything is running or waiting."""
        running = [r for r in (RunDirectory(p) for p in self.runs_root.iterdir() if p.is_dir()) if launched(r)]
        busy = [r for r in running if not self._reap_if_done(r)]
        used = {i for r in busy for i in launched(r).get("gpu_ids", [])}
        cpu_busy = any(not launched(r).get("gpu_ids") for r in busy)
        waiting = queued(self.runs_root)
        for run in waiting:
            need = read_json(run.path / JOB_FILE).get("gpus", 0)
            free = [i for i in self.gpu_ids if i not in used]
            if (need and len(free) < need) or (not need and cpu_busy):
                break  # first in, first out: later runs wait behind the head of the queue
            ids = free[:need]
            self._launch(run, ids)
            used.update(ids)
            cpu_busy = cpu_busy or not need
        return bool(busy or waiting)

    def _launch(self, run: RunDirectory, gpu_ids: list[int]) -> None:
        command = read_json(run.path / JOB_FILE)["command"]
        accelerate = Path(sys.executable).with_name("accelerate")
        if command[0] == "accelerate" and accelerate.is_file():
            command = [str(accelerate), *command[1:]]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
        with (run.path / LAUNCH_LOG).open("ab") as log:
            child = subprocess.Popen(command, cwd=workspace.REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.children[run.path] = child
        (run.path / LAUNCH_FILE).write_text(json.dumps({"pid": child.pid, "gpu_ids": gpu_ids, "launched_at": time.time()}))

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
                run.update_status(state="failed", ended_at=time.time(),
                                  error=f"the trainer exited (code {code}) before finishing: {log_tail(run, 3)}")
        (run.path / LAUNCH_FILE).unlink(missing_ok=True)
        return True


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
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another runner has it
    runner = Runner(workspace.runs_dir(), [gpu.index for gpu in devices.detect_gpus()])
    idle_since = time.time()
    while time.time() - idle_since < IDLE_EXIT_SECONDS:
        if runner.tick():
            idle_since = time.time()
        time.sleep(POLL_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
