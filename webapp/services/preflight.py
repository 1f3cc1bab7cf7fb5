"""The New run page's Check: `python -m finetune.preflight --json` on the form's config, in a subprocess.

The check loads the model and trains a few steps; in its own process the page itself never imports torch, and the
memory it measures is that process's alone (a trainer's process, like the run's).
"""

import contextlib
import fcntl
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.preflight import BAD_INPUT, DOES_NOT_FIT, FITS, Report
from webapp.runner import jobs
from webapp.services import devices, registry, settings, workspace

# One check at a time on this machine: each loads a model and trains, and a shared app must not be made to run many.
LOCK_FILE = "preflight.lock"

# Loading a large checkpoint on a CPU and training 4 steps takes minutes; past this the page stops waiting (s).
TIMEOUT_S = 600
KILLED = -9  # returncode of a process ended by SIGKILL: on Linux, the kernel's out-of-memory killer


def check(cfg: TrainConfig, shared: bool, use_gpu: bool = True, timeout_s: float = TIMEOUT_S) -> Report:
    """The preflight report of ``cfg`` on the device the run was set to (``use_gpu``: a GPU no run is training on;
    else the CPU), one check at a time.

    Raises UserError with the check's own message for bad settings or data, a timeout or a crash. On a shared app
    the operator's Hub token is withheld, as for the runs themselves (webapp/runner/).
    """
    env = jobs.child_env(shared)
    gpu = free_gpu([g.index for g in devices.detect_gpus()], busy_gpus()) if use_gpu else None
    # A run set to the CPU is checked on the CPU, even on a machine with GPUs.
    env["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    with _one_at_a_time(), jobs.gpu_held_for_check(gpu):
        return _run_check(cfg, env, timeout_s)


def _run_check(cfg: TrainConfig, env: dict, timeout_s: float) -> Report:
    with tempfile.TemporaryDirectory(prefix="lora-lab-check-") as folder:
        config = Path(folder) / "preflight.yaml"
        cfg.to_yaml(config)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "finetune.preflight", "--config", str(config), "--json"],
                cwd=workspace.REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"check: no answer within {timeout_s:.0f} s; the run itself will be slow on this "
                "device: try a smaller model, shorter texts or a GPU"
            ) from None
    if done.returncode in (FITS, DOES_NOT_FIT):
        # The report is the last line of stdout: libraries may print notes before it.
        return Report(**json.loads(done.stdout.strip().splitlines()[-1]))
    raise UserError(_failure(done.returncode, done.stderr))


def busy_gpus() -> set[int]:
    """GPUs that runs of any user are training on now (launch.json of each active run)."""
    busy = set()
    for runs in registry.all_runs(settings.load().shared).values():
        for run in runs:
            if jobs.is_active(run):
                busy.update(jobs.launched(run).get("gpu_ids", []))
    return busy


def free_gpu(gpus: list[int], busy: set[int]) -> Optional[int]:
    """The GPU a check may use (None on a machine without GPUs); UserError when every GPU trains a run, since a
    check beside a run could take the memory the run needs."""
    if not gpus:
        return None
    free = [gpu for gpu in gpus if gpu not in busy]
    if not free:
        raise UserError(
            "check: every GPU of this machine is training a run now, and a check beside it could take "
            "the memory it needs; check again when a GPU is free"
        )
    return free[0]


@contextlib.contextmanager
def _one_at_a_time():
    with (workspace.home() / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                "check: another check is running on this machine (one at a time: each loads a model "
                "and trains); try again when it has finished"
            ) from None
        yield


def _failure(returncode: int, stderr: str) -> str:
    """What went wrong, in the check's own words where it gave them (its `error: ...` lines)."""
    if returncode == KILLED:
        return (
            "check: the process was killed, most likely out of memory: the run would not fit on this machine; "
            "lower per_device_train_batch_size or the sequence length, or pick a smaller model"
        )
    lines = stderr.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if returncode == BAD_INPUT and starts:
        return "\n".join(lines[starts[-1] :])[len("error: ") :]
    last = lines[-1] if lines else "no output"
    return f"check: the preflight failed (exit status {returncode}): {last}"
