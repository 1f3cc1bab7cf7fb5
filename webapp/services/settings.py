"""Operator settings of the web app, read from the environment (a Space's variables) with safe defaults.

    LORA_LAB_CANCEL_GRACE_SECONDS   after Cancel's SIGTERM, seconds before the run's processes are killed (60)
    LORA_LAB_STALL_SECONDS          a running run that reports nothing for this long is failed as stalled (1800)
    LORA_LAB_MAX_UNPACKED_MB        largest total size an uploaded .zip may unpack to, MiB (2048)
    LORA_LAB_MAX_COMPRESSION_RATIO  largest unpacked/packed ratio of a member of an uploaded .zip (100)
"""

import os
from dataclasses import dataclass

from finetune.archive import Limits


@dataclass(frozen=True)
class Settings:
    cancel_grace_seconds: float = 60.0
    # Model loading and the base-model evaluation write nothing for a while; half an hour of silence is
    # far beyond either on any machine this app runs on.
    stall_seconds: float = 1800.0
    max_unpacked_mb: int = 2048
    max_compression_ratio: float = 100.0

    @property
    def archive_limits(self) -> Limits:
        return Limits(self.max_unpacked_mb * 2**20, self.max_compression_ratio)


def load() -> Settings:
    """The settings in force now; a malformed or non-positive value falls back to its default (and says so)."""
    values = {}
    for name, default in Settings.__dataclass_fields__.items():
        raw = os.environ.get(f"LORA_LAB_{name.upper()}")
        if raw is None:
            continue
        kind = type(default.default)
        try:
            value = kind(float(raw)) if kind is int else kind(raw)
        except ValueError:
            value = None
        if value is None or not value > 0:
            print(f"LORA_LAB_{name.upper()}={raw!r} is not a positive number; using {default.default}")
            continue
        values[name] = value
    return Settings(**values)
