"""The New run page's Check: `python -m finetune.preflight --json` on the form's config, in a subprocess.

The check loads the model and trains a few steps; in its own process the page itself never imports torch, and the
memory it measures is that process's alone (a trainer's process, like the run's).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.preflight import BAD_INPUT, DOES_NOT_FIT, FITS, Report
from webapp.services import workspace

# Loading a large checkpoint on a CPU and training 4 steps takes minutes; past this the page stops waiting (s).
TIMEOUT_S = 600
KILLED = -9  # returncode of a process ended by SIGKILL: on Linux, the kernel's out-of-memory killer


def check(cfg: TrainConfig, shared: bool, timeout_s: float = TIMEOUT_S) -> Report:
    """The preflight report of ``cfg`` on this machine's first visible device (GPU 0, else the CPU).

    Raises UserError with the check's own message for bad settings or data, a timeout or a crash. On a shared app
    the operator's Hub token is withheld, as for the runs themselves (webapp/services/jobs.py).
    """
    env = {**os.environ}
    if shared:
        env = {k: v for k, v in env.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
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
