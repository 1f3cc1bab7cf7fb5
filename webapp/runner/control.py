"""Seeing and stopping the job runner from a terminal: ``python -m webapp.runner status|stop``.

The runner records itself in LORA_LAB_HOME/runner.json (pid and process start time); nothing is signalled
unless both match the live process that holds runner.lock.
"""

import os
import signal
import time

from finetune.rundir import RunDirectory, process_start
from webapp.runner.jobs import RUNNER_LOG, is_active, launched, queued, runner_alive, runner_pid
from webapp.services import registry, settings, workspace
from webapp.services.identity import LOCAL_KEY


def status_report() -> str:
    """What ``python -m webapp.runner status`` prints: the runner, the queue and the runs in progress."""
    pid, home = runner_pid(), workspace.home()
    state = f"running (pid {pid})" if pid else "running (pid not recorded)" if runner_alive() else "not running"
    by_owner = registry.all_runs(settings.load().shared)
    waiting = [_label(owner, run) for owner, run in queued(by_owner)]
    active = [
        f"{_label(owner, run)} (pid {launched(run).get('pid') or run.read_status().get('pid')})"
        for owner, runs in by_owner.items()
        for run in runs
        if is_active(run)
    ]
    return "\n".join(
        [
            f"Job runner: {state}; lock {home / 'runner.lock'}, log {home / RUNNER_LOG}",
            f"Queued: {', '.join(waiting) or 'none'}",
            f"Running: {', '.join(active) or 'none'}",
        ]
    )


def _label(owner: str, run: RunDirectory) -> str:
    return run.path.name if owner == LOCAL_KEY else f"{owner}/{run.path.name}"


def stop_runner(wait_seconds: float = 15.0) -> tuple[bool, str]:
    """SIGTERM the runner (pid checked with its start time first); (whether none is left, what happened).

    Runs in progress keep training: each trainer runs in a session of its own, and a later runner settles them.
    """
    pid = runner_pid()
    if pid is None and runner_alive():
        return False, "A job runner holds runner.lock but runner.json does not name it; nothing was signalled."
    if pid is None:
        return True, "No job runner is running; nothing to stop."
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + wait_seconds  # it ends the tick it is in first (seconds)
    while process_start(pid) is not None and time.time() < deadline:
        time.sleep(0.1)
    if process_start(pid) is not None:
        return False, f"The job runner (pid {pid}) is still running after {wait_seconds:g} s; see {RUNNER_LOG}."
    return True, (
        f"Stopped the job runner (pid {pid}). Runs in progress keep training; queued runs wait for the "
        "next runner (the app starts one at its next page load, as does `python -m webapp.runner`)."
    )
