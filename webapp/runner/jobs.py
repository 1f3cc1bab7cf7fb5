"""The jobs: the queue of runs, as the app and the runner both see it: what to launch and how, queueing, cancelling, and
starting the runner process (webapp/runner/loop.py) when none is alive.

A run is queued by writing RUN/config.yaml, RUN/job.json (which preset, how many processes and GPUs, whether to
resume: names and counts, never a command) and status "queued". The runner builds the `accelerate launch` command
itself from those checked values, so nothing in a run folder can become a command. Cancel sends SIGTERM (the trainer
saves a checkpoint); the runner escalates to SIGKILL after a grace period (webapp/services/settings.py).
"""

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from finetune.rundir import (
    CANCELLED,
    QUEUED,
    RUNNING,
    RunDirectory,
    pid_alive,
    process_start,
    read_json,
    write_json_atomic,
)
from webapp.runner import fair_queue
from webapp.services import devices, workspace

# The runner's files in each run folder (job.json, launch.json, launch.log, cancel.requested, killed.json) are
# RunDirectory's: paths, readers and writers in finetune/rundir.py, described in docs/run-directory.md.
LOG_TAIL_BYTES = 64 * 1024  # enough for the last 40 lines of any log
MAX_PROCESSES = 64
CHECK_FILE = "preflight.json"  # {"gpu": ..., "pid": ..., "started": ...}: the GPU a Check trains on, in LORA_LAB_HOME
RUNNER_FILE = "runner.json"  # {"pid": ..., "started": ...}: the runner holding runner.lock, in LORA_LAB_HOME
RUNNER_LOG = "runner.log"  # the runner's output, in LORA_LAB_HOME


@dataclass(frozen=True)
class Job:
    """How to launch a run: an accelerate preset, its process count, the GPUs it needs, whether to resume."""

    preset: str
    num_processes: int
    gpus: int
    resume: bool = False

    @classmethod
    def read(cls, run: RunDirectory) -> "Job":
        """The run's job.json, checked field by field; ValueError says what is wrong."""
        raw, name = run.read_job(), run.job_path.name
        preset, processes, gpus, resume = (raw.get(k) for k in ("preset", "num_processes", "gpus", "resume"))
        if preset not in devices.LAUNCHABLE_PRESETS:
            raise ValueError(f"{name} names no known launch preset (got {preset!r})")
        if not (_count(processes) and 1 <= processes <= MAX_PROCESSES and _count(gpus) and 0 <= gpus <= MAX_PROCESSES):
            raise ValueError(f"{name} has bad process or GPU counts ({processes!r}, {gpus!r})")
        if not isinstance(resume, bool):
            raise ValueError(f"{name} has a bad resume flag ({resume!r})")
        return cls(preset, processes, gpus, resume)

    def write(self, run: RunDirectory) -> None:
        run.write_job(asdict(self))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def launch_command(run: RunDirectory, job: Job) -> list[str]:
    """The trainer's command: this environment's accelerate, the preset, the run's own config and folder."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    command = devices.launch_command(accelerate, job.preset, job.num_processes, run.config_path)
    # Into this very folder, whatever output_dir config.yaml recorded (the run may have been moved).
    return command + ["--output_dir", str(run.path)] + (["--resume_from_checkpoint", "true"] if job.resume else [])


def launched(run: RunDirectory) -> dict:
    return run.read_launch()


def launcher_alive(run: RunDirectory) -> bool:
    launch = launched(run)
    return pid_alive(launch.get("pid"), launch.get("started"))


def is_active(run: RunDirectory) -> bool:
    """True while the launcher or the trainer of this run is alive (pids checked with their start times)."""
    return launcher_alive(run) or (run.state == RUNNING and run.trainer_alive())


@contextlib.contextmanager
def run_lock(run: RunDirectory):
    """Serialises "launch it" (runner) against "cancel it while queued" (app) for one run."""
    with run.lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def enqueue(run: RunDirectory, job: Job) -> None:
    """Queue ``job`` for ``run`` and make sure a runner will start it."""
    run.path.mkdir(parents=True, exist_ok=True)
    job.write(run)
    run.clear_runner_files()
    run.update_status(state=QUEUED, queued_at=time.time(), error=None, ended_at=None)
    ensure_runner()


def queued(runs_by_owner: dict[str, list[RunDirectory]]) -> list[tuple[str, RunDirectory]]:
    """Runs waiting for the runner, by user key, in the order they would start (round-robin across users)."""
    return fair_queue.round_robin(fair_queue.waiting(runs_by_owner, launched), fair_queue.last_launches(runs_by_owner))


def cancel(run: RunDirectory) -> None:
    """Stop a run: a queued one at once, a launched one by SIGTERM (the trainer saves a checkpoint first).

    The runner escalates to SIGKILL when the run is still alive after the grace period.
    """
    with run_lock(run):
        launch, status = launched(run), run.read_status()
        if launcher_alive(run):
            run.request_cancel()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launch["pid"], signal.SIGTERM)  # the launcher and its trainer processes share this group
        elif status.get("state") == RUNNING and run.trainer_alive():
            run.request_cancel()
            with contextlib.suppress(ProcessLookupError):
                os.kill(status["pid"], signal.SIGTERM)  # started outside the app (command line): rank 0 tells the rest
        elif status.get("state") == QUEUED:
            run.update_status(state=CANCELLED, ended_at=time.time())


def detached(command: list[str], env: dict, log) -> subprocess.Popen:
    """``command`` in its own session (a signal to the app's process group never reaches it), output to ``log``."""
    return subprocess.Popen(
        command,
        cwd=workspace.REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def child_env(shared: bool) -> dict:
    """The environment of a trainer or check the app starts. On a shared app the operator's token must not fetch
    private or gated models for any user."""
    # nvidia-smi numbers GPUs in PCI bus order, and the runner assigns them by those numbers; CUDA's own default order
    # (fastest first) can differ on a machine with mixed GPUs.
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if shared:
        env = {k: v for k, v in env.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    return env


@contextlib.contextmanager
def gpu_held_for_check(gpu: Optional[int]):
    """While a preflight check trains on ``gpu``, the runner starts no run there (CHECK_FILE, with this process)."""
    path = workspace.home() / CHECK_FILE
    if gpu is not None:
        write_json_atomic(path, {"gpu": gpu, "pid": os.getpid(), "started": process_start(os.getpid())})
    try:
        yield
    finally:
        if gpu is not None:
            path.unlink(missing_ok=True)


def gpu_in_check() -> Optional[int]:
    """The GPU a live preflight check holds (a record left by a process that died holds nothing)."""
    record = read_json(workspace.home() / CHECK_FILE) or {}
    gpu = record.get("gpu")
    return gpu if isinstance(gpu, int) and pid_alive(record.get("pid"), record.get("started")) else None


def log_tail(run: RunDirectory, lines: int = 40) -> str:
    """The last lines of the trainer's log, or of the launcher's output when the trainer logged nothing."""
    for path in (run.log_path, run.launch_log_path):
        if path.is_file() and path.stat().st_size:
            with path.open("rb") as f:  # only the end: a log grows for as long as the run trains
                f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
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
    with (workspace.home() / RUNNER_LOG).open("ab") as log:
        detached([sys.executable, "-m", "webapp.runner"], env, log)


def runner_pid() -> Optional[int]:
    """The pid of the runner holding runner.lock, as runner.json records it; None when no runner holds the lock
    or the record does not name that live process (pid and start time must both match)."""
    record = read_json(workspace.home() / RUNNER_FILE) or {}
    pid = record.get("pid")
    alive = isinstance(pid, int) and pid_alive(pid, record.get("started")) and runner_alive()
    return pid if alive else None
