"""The run directory: the only contract between the trainer, the web app and evaluation.

Layout (documented in docs/run-directory.md)::

    output_dir/config.yaml      resolved TrainConfig, runnable again with --config
    output_dir/status.json      state (queued|running|finished|failed|cancelled), error, times, progress
    output_dir/events.jsonl     one JSON object per line: {"event": "train"|"eval", "step": ..., ...}
    output_dir/metrics.json     final metrics: {"base": {...}, "finetuned": {...}, ...}
    output_dir/train.log        the trainer's log
    output_dir/adapter/         PEFT adapter (or full model) + tokenizer/processor + lora_lab.json
    output_dir/checkpoints/step_N/  accelerate save_state checkpoints for resuming

Readers never need the trainer's code: everything is JSON, YAML or safetensors. This module imports
nothing heavy (no torch), so the web app reads runs on page load.
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

STATES = ("queued", "running", "finished", "failed", "cancelled")
TRAINER_STATE = "trainer_state.json"  # in each checkpoint, beside accelerate's own files


def _write_json_atomic(path: Path, data: Any) -> None:
    # Readers poll these files while the trainer writes them: replace, never truncate in place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunDirectory:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.status_path = self.path / "status.json"
        self.events_path = self.path / "events.jsonl"
        self.metrics_path = self.path / "metrics.json"
        self.log_path = self.path / "train.log"
        self.adapter_dir = self.path / "adapter"
        self.checkpoints_dir = self.path / "checkpoints"

    def is_run(self) -> bool:
        return self.config_path.is_file() or self.status_path.is_file()

    def read_status(self) -> dict:
        return _read_json(self.status_path) or {}

    def update_status(self, **fields: Any) -> dict:
        """Merge ``fields`` into status.json (``state`` must be one of STATES)."""
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown run state {fields['state']!r}")
        status = {**self.read_status(), **fields, "updated_at": time.time()}
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.status_path, status)
        return status

    def append_event(self, event: dict) -> None:
        with self.events_path.open("a") as f:
            f.write(json.dumps(event, default=float) + "\n")
            f.flush()

    def read_events(self) -> list[dict]:
        if not self.events_path.is_file():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
        return events

    def read_metrics(self) -> dict:
        return _read_json(self.metrics_path) or {}

    def write_metrics(self, metrics: dict) -> None:
        _write_json_atomic(self.metrics_path, metrics)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (trainer_state.json is written last: a save cut short has none)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.glob("step_*")
                 if p.name.split("_")[-1].isdigit() and (p / TRAINER_STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[-1]))

    def latest_checkpoint(self) -> Optional[Path]:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None
