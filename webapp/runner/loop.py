"""The job runner: starts queued runs first in, first out (round-robin across users), at most one per GPU (one at a
time on CPU), and settles them on disk.

The runner is a process of its own (``python -m webapp.runner``), started by the app when none holds
LORA_LAB_HOME/runner.lock, so no browser session owns it; ``python -m webapp.runner status`` reports on it and
``... stop`` stops it (it records its pid in LORA_LAB_HOME/runner.json). It launches each trainer in a new session:
trainers outlive the runner and the app alike, and a later runner picks up their state from disk. It never writes
status.json while a trainer may (only after the trainer's processes are gone). A run that reports nothing for too
long, or trains past its time, is killed and failed (webapp/services/settings.py has the times). Every run passes
the app's gate (webapp/services/gate.py) once more right before it starts.
"""

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from finetune.errors import ConfigError
from finetune.rundir import CANCELLED, FAILED, QUEUED, RUNNING, RunDirectory, process_start, write_json_atomic
from webapp.runner import fair_queue
from webapp.runner.fair_queue import as_number
from webapp.runner.jobs import (
    RUNNER_FILE,
    Job,
    child_env,
    detached,
    gpu_in_check,
    is_active,
    launch_command,
    launched,
    launcher_alive,
    log_tail,
    queued,
    run_lock,
)
from webapp.services import devices, gate, mirror, registry, settings, workspace
from webapp.services.identity import LOCAL_KEY, is_visitor_key

POLL_SECONDS = 1.0
IDLE_EXIT_SECONDS = 900  # a runner with nothing to do exits; the app starts a new one when needed
GPU_CHECK_SECONDS = 60
# Set by SIGTERM: the runner ends the tick it is in, then exits. Killed mid-launch it could leave a trainer
# started without its launch.json, and the next runner would start that run a second time.
STOP = threading.Event()


def _fail(run: RunDirectory, error: str) -> None:
    run.update_status(state=FAILED, ended_at=time.time(), error=error)


def last_progress(run: RunDirectory) -> float:
    """When the run last showed a sign of life: a status, event or log line, or its launch."""
    times = [as_number(launched(run).get("launched_at"))]
    for path in (run.status_path, run.events_path, run.log_path, run.launch_log_path):
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times)


class Runner:
    """One pass of ``tick`` settles ended runs, stops overdue ones and starts what fits, in queue order.

    ``command_for`` turns a run and its checked Job into the command to start (the trainer's, by default).
    """

    def __init__(
        self,
        runs_dirs: Callable[[], dict[str, Path]],
        gpu_ids: list[int],
        command_for: Callable[[RunDirectory, Job], list[str]] = launch_command,
        limits: Optional[settings.Settings] = None,
    ):
        self.runs_dirs, self.gpu_ids, self.command_for = runs_dirs, gpu_ids, command_for
        self.limits = limits or settings.load()
        self.children: dict[Path, subprocess.Popen] = {}

    def tick(self) -> bool:
        """Returns whether anything is running or waiting."""
        by_owner = registry.runs_by_owner(self.runs_dirs(), self.limits.shared)
        runs = {run: owner for owner, owned in by_owner.items() for run in owned}
        busy = [r for r in runs if launched(r) and not self._reap_if_done(r)]
        for run, owner in runs.items():
            self._stop_if_overdue(run, self._max_run_seconds(owner))
            self._settle_if_orphaned(run)
        # A GPU a preflight check is training on is not free either (the check could take a run's memory).
        free_of_checks = [gpu for gpu in self.gpu_ids if gpu != gpu_in_check()]
        slots = fair_queue.Slots(free_of_checks, {r.path: (runs[r], launched(r).get("gpu_ids", [])) for r in busy})
        waiting = queued(by_owner)
        for owner, run in waiting:
            try:
                job = Job.read(run)
            except ValueError as err:
                _fail(run, f"could not launch: {err}; start it again from the New run page")
                continue
            if devices.unavailable(job.preset):
                _fail(run, f"could not launch: {devices.unavailable(job.preset)}; queue it again on another setup")
                continue
            if job.gpus > len(self.gpu_ids):
                _fail(
                    run,
                    f"needs {job.gpus} GPU(s) but this machine has {len(self.gpu_ids)}; "
                    "queue it again on a setup that fits",
                )
                continue
            if slots.running.get(owner, 0) >= self.limits.max_running_runs and owner != LOCAL_KEY:
                continue  # this user trains as many runs at once as allowed; the next user's turn
            ids = slots.take(job.gpus)
            if ids is None:
                break  # first come, first served (in round-robin order): later runs wait behind this one
            if self._launch(run, job, ids, owner):
                slots.started(owner, ids)
        return bool(busy or waiting)

    def _max_run_seconds(self, owner: str) -> float:
        """How long one run of ``owner``'s may train: anonymous visitors share a shorter limit."""
        if is_visitor_key(owner):
            return min(self.limits.max_run_seconds, self.limits.anonymous_max_run_seconds)
        return self.limits.max_run_seconds

    def _admitted(self, run: RunDirectory, owner: str) -> bool:
        """Whether the run's config.yaml passes the app's gate now, as the trainer will read it (webapp/services/
        gate.py): the last route every run takes, a hand-edited queue entry included. A refused run is failed."""
        if not self.limits.shared:
            return True
        try:
            cfg = gate.admit_run_config(owner, run.path, run.read_config(), self.limits)
        except ConfigError as err:
            _fail(run, f"refused by this app's rules: {'; '.join(map(str, err.problems))}")
            return False
        cfg.to_yaml(run.config_path)  # with the app's own fields (where it unpacks archives) filled in
        return True

    def _launch(self, run: RunDirectory, job: Job, gpu_ids: list[int], owner: str) -> bool:
        """Start the run's command on ``gpu_ids``; False when it could not start (the run is then settled)."""
        env = {**child_env(shared=self.limits.users != "local"), "PYTHONUNBUFFERED": "1"}
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
        with run_lock(run):
            if run.state != QUEUED or not self._admitted(run, owner):
                return False  # cancelled a moment ago, or refused
            run.update_status(launched_at=time.time())  # the fair queue's memory of whom it served last
            try:
                command = self.command_for(run, job)
                with run.launch_log_path.open("ab") as log:
                    child = detached(command, env, log)
            except (OSError, ValueError) as err:  # a bad job must not stop the queue
                _fail(run, f"could not launch: {type(err).__name__}: {err}")
                return False
            self.children[run.path] = child
            run.write_launch(child.pid, process_start(child.pid), gpu_ids)
        return True

    def _reap_if_done(self, run: RunDirectory) -> bool:
        """True (and the run's final state settled) when its processes are gone."""
        child = self.children.get(run.path)
        code = child.poll() if child is not None else None
        if (child is not None and code is None) or is_active(run):
            return False
        self.children.pop(run.path, None)
        if run.state in (QUEUED, RUNNING):  # the trainer never wrote how it ended
            killed = run.read_killed().get("reason")
            if run.cancel_path.is_file():
                run.update_status(state=CANCELLED, ended_at=time.time(), error=killed)
            elif killed:
                _fail(run, f"{killed}; its processes were killed. Resume it from its last checkpoint")
            else:
                how = f"exited (code {code})" if code is not None else "ended"
                _fail(run, f"the trainer {how} before finishing: {log_tail(run, 3)}")
        run.launch_path.unlink(missing_ok=True)
        return True

    def _stop_if_overdue(self, run: RunDirectory, max_seconds: float) -> None:
        """SIGKILL a run still alive long after Cancel, silent for longer than the stall limit, or over
        ``max_seconds`` of training."""
        if not is_active(run) or run.killed_path.is_file():
            return
        cancelled, now = run.cancel_requested_at(), time.time()
        if cancelled is not None and now - cancelled > self.limits.cancel_grace_seconds:
            reason = f"did not stop within {self.limits.cancel_grace_seconds:g} s of Cancel"
        elif now - last_progress(run) > self.limits.stall_seconds:
            reason = f"stalled: it reported no progress for {self.limits.stall_seconds:g} s"
        elif launched(run) and now - as_number(launched(run).get("launched_at")) > max_seconds:
            reason = f"ran longer than the {max_seconds:g} s one run may take on this app"
        else:
            return
        run.record_killed(reason)
        status, launch = run.read_status(), launched(run)
        roots = ([launch["pid"]] if launcher_alive(run) else []) + ([status["pid"]] if run.trainer_alive() else [])
        # Listed before the first kill: a killed parent's children are re-parented out of reach.
        doomed = dict.fromkeys(roots + [p for root in roots for p in descendants(root)])
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # also ends a stopped (SIGSTOP) process

    @staticmethod
    def _settle_if_orphaned(run: RunDirectory) -> None:
        """A run left "running" by a trainer that is gone (killed, machine restarted) is marked failed."""
        status = run.read_status()
        if status.get("state") == RUNNING and not launched(run) and not run.trainer_alive():
            _fail(
                run,
                f"the trainer (pid {status.get('pid')}) ended without reporting; resume it from its last checkpoint",
            )


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torch's launcher may start ranks in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(proc.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def serve() -> int:
    lock = (workspace.home() / "runner.lock").open("a")
    runner = Runner(workspace.all_runs_dirs, [])
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())  # only sets a flag: see STOP
    while not STOP.is_set() and _take(lock):
        write_json_atomic(workspace.home() / RUNNER_FILE, {"pid": os.getpid(), "started": process_start(os.getpid())})
        _serve(runner)
        fcntl.flock(lock, fcntl.LOCK_UN)
        if not queued(registry.all_runs(runner.limits.shared)):  # else a run was queued as this runner went idle
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
    """Tick until nothing has been queued or running for IDLE_EXIT_SECONDS; keep the mirror (if any) up to date."""
    idle_since, checked_gpus, pusher = time.time(), 0.0, mirror.Pusher(mirror.mirror_root())
    while not STOP.is_set() and time.time() - idle_since < IDLE_EXIT_SECONDS:
        if time.time() - checked_gpus > GPU_CHECK_SECONDS:  # a slow nvidia-smi at start must not stick
            runner.gpu_ids, checked_gpus = [gpu.index for gpu in devices.detect_gpus()], time.time()
        try:
            busy = runner.tick()
        except Exception:  # keep serving the queue; the traceback goes to runner.log
            traceback.print_exc()
            busy = True
        if busy:
            idle_since = time.time()
        pusher.due()
        time.sleep(POLL_SECONDS)
    pusher.now()
