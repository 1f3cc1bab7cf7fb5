"""Operator settings of the web app, read from the environment (a Space's variables) with safe defaults.

LORA_LAB_USERS                  who uses the app: local (one user, the default), huggingface (sign-in with
                                Hugging Face on a Space with hf_oauth: true) or anonymous (one workspace
                                per browser address)
LORA_LAB_OPERATORS              comma-separated Hugging Face user names who see and manage every run
LORA_LAB_MAX_QUEUED_RUNS        runs one user may have waiting in the queue (4)
LORA_LAB_MAX_RUNNING_RUNS       runs of one user that train at the same time (1)
LORA_LAB_MAX_UPLOAD_MB          largest upload, MiB (1024)
LORA_LAB_MAX_STORAGE_MB         disk one user's runs and uploads may fill, MiB (20480)
LORA_LAB_CANCEL_GRACE_SECONDS   after Cancel's SIGTERM, seconds before the run's processes are killed (60)
LORA_LAB_STALL_SECONDS          a running run that reports nothing for this long is failed as stalled (1800)
LORA_LAB_MAX_RUN_SECONDS        a run still training after this long is stopped, freeing its slot (86400)
LORA_LAB_MAX_UNPACKED_MB        largest total size an uploaded .zip may unpack to, MiB (2048)
LORA_LAB_MAX_COMPRESSION_RATIO  largest unpacked/packed ratio of a member of an uploaded .zip (100)
LORA_LAB_MAX_ARCHIVE_MEMBERS    most files and folders an uploaded .zip may hold (5000)
On a shared app (users not local), ceilings no run may go past, whatever its settings (a run may set lower ones):
LORA_LAB_MAX_STEPS              max_steps (20000)
LORA_LAB_MAX_TRAIN_EPOCHS       num_train_epochs (50)
LORA_LAB_MAX_BATCH_SIZE         per_device_train_batch_size and per_device_eval_batch_size (256)
LORA_LAB_MAX_GRADIENT_ACCUMULATION_STEPS  gradient_accumulation_steps (64)
LORA_LAB_MAX_DATALOADER_WORKERS dataloader_num_workers (4)
LORA_LAB_MAX_SAVE_TOTAL_LIMIT   save_total_limit: checkpoints kept per run (5)
LORA_LAB_MAX_SEQ_LENGTH         max_seq_length (2048)
LORA_LAB_MAX_BLOCK_SIZE         block_size (1024)
LORA_LAB_MAX_EVAL_SAMPLES       max_eval_samples (5000)
Anonymous visitors (users anonymous) all share these, however many addresses they open:
LORA_LAB_MAX_ANONYMOUS_RUNS     runs of all visitors together queued or training at once (4)
LORA_LAB_ANONYMOUS_MAX_RUN_SECONDS  a visitor's run still training after this long is stopped (1800)
"""

import dataclasses
import os
import sys
from dataclasses import dataclass

from finetune.data.archive import Limits

USER_MODES = ("local", "huggingface", "anonymous")


@dataclass(frozen=True)
class Settings:
    users: str = "local"
    operators: tuple[str, ...] = ()
    max_queued_runs: int = 4
    max_running_runs: int = 1
    max_upload_mb: int = 1024
    max_storage_mb: int = 20480
    cancel_grace_seconds: float = 60.0
    # Model loading and the base-model evaluation write nothing for a while; half an hour of silence is
    # far beyond either on any machine this app runs on.
    stall_seconds: float = 1800.0
    # A run that keeps reporting is never "stalled"; this bounds how long any one run holds its slot.
    max_run_seconds: float = 86400.0
    max_unpacked_mb: int = 2048
    max_compression_ratio: float = 100.0
    # 100,000 empty files took the upload preview past 9 minutes; 5,000 images preview in seconds.
    max_archive_members: int = 5000
    max_steps: int = 20000
    max_train_epochs: float = 50.0
    max_batch_size: int = 256
    max_gradient_accumulation_steps: int = 64
    max_dataloader_workers: int = 4
    max_save_total_limit: int = 5
    max_seq_length: int = 2048
    max_block_size: int = 1024
    max_eval_samples: int = 5000
    max_anonymous_runs: int = 4
    anonymous_max_run_seconds: float = 1800.0

    @property
    def archive_limits(self) -> Limits:
        return Limits(self.max_unpacked_mb * 2**20, self.max_compression_ratio, self.max_archive_members)

    @property
    def shared(self) -> bool:
        """Whether strangers use this app (every mode but local)."""
        return self.users != "local"


def load() -> Settings:
    """The settings in force now; a malformed value falls back to its default, with a line on stderr."""
    values = {}
    for field in dataclasses.fields(Settings):
        raw = os.environ.get(f"LORA_LAB_{field.name.upper()}")
        if raw is None:
            continue
        try:
            values[field.name] = _parse(field.name, raw.strip(), field.default)
        except ValueError as err:
            print(f"LORA_LAB_{field.name.upper()}={raw!r}: {err}; using {field.default!r}", file=sys.stderr)
    return Settings(**values)


def _parse(name: str, raw: str, default):
    if name == "users":
        if raw not in USER_MODES:
            raise ValueError(f"expected one of {', '.join(USER_MODES)}")
        return raw
    if name == "operators":
        return tuple(n.strip() for n in raw.split(",") if n.strip())
    value = type(default)(float(raw)) if isinstance(default, int) else float(raw)
    if not value > 0:
        raise ValueError("expected a positive number")
    return value
