"""The run directory: the only contract between the trainer, the web app and evaluation.

Layout (documented in docs/run-directory.md)::

    output_dir/config.yaml      resolved TrainConfig, runnable again with --config
    output_dir/status.json      state (queued|running|finished|failed|cancelled), error, times, progress
    output_dir/events.jsonl     one JSON object per line: {"event": "train"|"eval", "step": ..., ...}
    output_dir/metrics.json     final metrics: {"base": {...}, "finetuned": {...}, ...}
    output_dir/reproducibility.json  versions, device, data SHA-256, git commit and command of the run
    output_dir/examples/        per-example results of evaluations (.npz): the final scores' intervals
    output_dir/train.log        the trainer's log
    output_dir/adapter/         PEFT adapter (or full model) + tokenizer/processor + lora_lab.json
    output_dir/checkpoints/step_N/  accelerate save_state checkpoints for resuming (complete once
                                    checkpoint_complete.json, written last, is there)
    output_dir/job.json, launch.json, launch.log, cancel.requested, killed.json, .lock
                                the web app's job runner: how to launch the run, and what it did to it

Every file of a run has its path, reader and writer here and nowhere else. Readers never need the trainer's
code: everything is JSON, YAML, safetensors or npz. This module imports nothing heavy (no torch), so the web app
reads runs on page load.
"""

import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import yaml

# The source tree: runs are never written into it or over it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = (".git", "finetune", "webapp", "evaluation", "configs", "scripts", "tests", "docs")
STATES = ("queued", "running", "finished", "failed", "cancelled")
QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = STATES
ACTIVE = (QUEUED, RUNNING)  # a run the runner still owes something: to start it, or to settle it
TRAINER_STATE = "trainer_state.json"  # in each checkpoint, beside accelerate's own files
CHECKPOINT_COMPLETE = "checkpoint_complete.json"  # written last: the checkpoint is whole
# Throughput figures: their names in a train event (keys) and in metrics.json (values), see docs/run-directory.md.
THROUGHPUT_METRICS = {
    "tokens_per_second": "train_tokens_per_second",
    "images_per_second": "train_images_per_second",
    "tflops": "train_tflops",
    "mfu": "mfu",
}


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers, and a kill -9 at any moment, see the old or the new file whole.

    The temporary file gets a unique name (the app writes from several threads), is fsynced before the
    rename, and the folder after it, so the rename survives a power cut too.
    """
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


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


def pid_alive(pid: Optional[int], started: Optional[str]) -> bool:
    """True when ``pid`` is a live process that started at ``started`` (a pid without its start time never is)."""
    return bool(pid and started) and process_start(pid) == started


def read_json(path: Path) -> Optional[dict]:
    """The JSON object in ``path``; None when it is missing, unreadable, not UTF-8, not JSON or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


class RunDirectory:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.status_path = self.path / "status.json"
        self.events_path = self.path / "events.jsonl"
        self.metrics_path = self.path / "metrics.json"
        self.reproducibility_path = self.path / "reproducibility.json"
        self.log_path = self.path / "train.log"
        self.examples_dir = self.path / "examples"  # see examples_path
        self.adapter_dir = self.path / "adapter"
        self.adapter_info_path = self.adapter_dir / "lora_lab.json"
        self.checkpoints_dir = self.path / "checkpoints"
        self.tracking_dir = self.path / "tracking"  # TensorBoard or local MLflow logs (report_to)
        # The web app's job runner (webapp/runner/): what to launch, and what it did to the run.
        self.job_path = self.path / "job.json"
        self.launch_path = self.path / "launch.json"
        self.launch_log_path = self.path / "launch.log"
        self.cancel_path = self.path / "cancel.requested"
        self.killed_path = self.path / "killed.json"
        self.lock_path = self.path / ".lock"

    def is_run(self) -> bool:
        return self.config_path.is_file() or self.status_path.is_file()

    @property
    def state(self) -> Optional[str]:
        """One of STATES, or None before the run was queued (or for a folder that is no run)."""
        return self.read_status().get("state")

    def read_status(self) -> dict:
        return read_json(self.status_path) or {}

    def update_status(self, **fields: Any) -> dict:
        """Merge ``fields`` into status.json (``state`` must be one of STATES)."""
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown run state {fields['state']!r}")
        status = {**self.read_status(), **fields, "updated_at": time.time()}
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.status_path, status)
        return status

    def record_progress(self, step: int, epoch: float) -> dict:
        """Merge the latest logged step (optimizer steps done), its epoch and when it was logged into status.json.

        The Runs list reads progress and pace from this one small file instead of the whole events.jsonl.
        """
        return self.update_status(step=step, epoch=epoch, step_at=time.time())

    def record_checkpoint(self, step: int, at: float) -> dict:
        """Merge a complete checkpoint's step into status.json as ``checkpoint_step`` and as the progress (``step``,
        its epoch, ``step_at``: ``at``, Unix s, when that step was trained, before the save began).

        Steps are logged every logging_steps, while a cancel saves at the step it stopped at: its status must read
        that step, the one a resume continues from, not the last logged one.
        """
        per_epoch = self.read_status().get("steps_per_epoch")
        epoch = {"epoch": round(step / per_epoch, 4)} if isinstance(per_epoch, int) and per_epoch > 0 else {}
        return self.update_status(step=step, step_at=at, checkpoint_step=step, **epoch)

    def read_config(self) -> dict:
        """config.yaml as a plain mapping ({} when missing or not a YAML mapping); TrainConfig.from_dict checks it."""
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
            return {}
        return config if isinstance(config, dict) else {}

    def append_event(self, event: dict) -> None:
        with self.events_path.open("a") as f:
            f.write(json.dumps(event, default=float) + "\n")
            f.flush()

    def start_segment(self, pid: int) -> None:
        """status.json of a starting trainer (``pid``): running, and nothing of an earlier segment's end, error, loop
        start or early stop, which a resumed run no longer has."""
        cleared = dict.fromkeys(("error", "ended_at", "loop_started_at", "loop_start_step", "stopped_early_at_step"))
        self.update_status(state=RUNNING, started_at=time.time(), pid=pid, pid_started=process_start(pid), **cleared)

    def evaluation_at(self, step: int) -> Optional[dict]:
        """The metrics of the evaluation logged at ``step`` (a checkpoint is saved after its step's evaluation), or
        None: a run resumed there need not score the same weights again."""
        found = [e for e in self.read_events() if e.get("event") == "eval" and e.get("step") == step]
        return {k: v for k, v in found[-1].items() if k not in ("event", "step", "time")} if found else None

    def keep_events_up_to(self, step: int) -> None:
        """Drop the events after ``step`` (atomically): a run resumed from its checkpoint at ``step`` logs them again,
        so events.jsonl reads as the uninterrupted run's would."""
        kept = [
            event for event in self.read_events() if not (isinstance(event.get("step"), int) and event["step"] > step)
        ]
        write_text_atomic(self.events_path, "".join(json.dumps(event, default=float) + "\n" for event in kept))

    def read_events(self, tail_bytes: Optional[int] = None) -> list[dict]:
        """The events of events.jsonl; with ``tail_bytes``, only those in its last tail_bytes (the latest events of a
        long run, read without reading the whole file)."""
        try:
            with self.events_path.open("rb") as f:
                start = max(0, f.seek(0, os.SEEK_END) - tail_bytes) if tail_bytes else 0
                f.seek(start)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return []
        events = []
        for line in lines[1 if start else 0 :]:  # a tail starts inside a line
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if isinstance(event, dict):
                events.append(event)
        return events

    def read_metrics(self) -> dict:
        return read_json(self.metrics_path) or {}

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics_path, metrics)

    def read_reproducibility(self) -> dict:
        """reproducibility.json: versions, device, data hashes, commit and command ({} for a run from before it)."""
        return read_json(self.reproducibility_path) or {}

    def write_reproducibility(self, record: dict) -> None:
        write_json_atomic(self.reproducibility_path, record)

    def examples_path(self, split: str, tag: int | str) -> Path:
        """Per-example results of one evaluation pass (.npz), kept for the bootstrap intervals of the final scores:
        ``split`` "validation" by step (0: the base model), or "test" by model ("base", "finetuned")."""
        return self.examples_dir / f"{split}_{tag}.npz"

    def write_examples(self, path: Path, arrays: dict) -> None:
        import numpy as np  # only the trainer writes these: page loads need no numpy from here

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())

    def read_examples(self, path: Path) -> Optional[dict]:
        """The arrays write_examples kept at ``path``; None when missing or unreadable."""
        import numpy as np

        try:
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            return None

    def read_adapter_info(self) -> dict:
        """adapter/lora_lab.json: task, base_model, finetune_method, labels ... ({} before the run has finished)."""
        return read_json(self.adapter_info_path) or {}

    def write_adapter_info(self, info: dict) -> None:
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.adapter_info_path, info)

    def read_job(self) -> dict:
        """job.json as written ({} when missing or garbled): the runner checks every field before using it."""
        return read_json(self.job_path) or {}

    def write_job(self, job: dict) -> None:
        write_json_atomic(self.job_path, job)

    def read_launch(self) -> dict:
        """launch.json: the launcher's pid, its start time, its GPU ids and when it was launched ({} when none)."""
        return read_json(self.launch_path) or {}

    def write_launch(self, pid: int, started: Optional[str], gpu_ids: list[int]) -> None:
        write_json_atomic(
            self.launch_path, {"pid": pid, "started": started, "gpu_ids": gpu_ids, "launched_at": time.time()}
        )

    def request_cancel(self) -> None:
        write_json_atomic(self.cancel_path, {"at": time.time()})

    def cancel_requested_at(self) -> Optional[float]:
        """When Cancel was sent (None when it was not); an empty or garbled request counts from its file's time."""
        at = (read_json(self.cancel_path) or {}).get("at")
        try:
            return float(at) if _is_time(at) else self.cancel_path.stat().st_mtime
        except OSError:
            return None

    def read_killed(self) -> dict:
        """killed.json: why the runner SIGKILLed the run, and when ({} when it did not)."""
        return read_json(self.killed_path) or {}

    def record_killed(self, reason: str) -> None:
        write_json_atomic(self.killed_path, {"reason": reason, "at": time.time()})

    def clear_runner_files(self) -> None:
        """Forget a launch, a cancel request and a kill of an earlier attempt (the run is queued again)."""
        for path in (self.launch_path, self.cancel_path, self.killed_path):
            path.unlink(missing_ok=True)

    def trainer_alive(self) -> bool:
        """True while the trainer recorded in status.json (pid and its start time) is running."""
        status = self.read_status()
        return pid_alive(status.get("pid"), status.get("pid_started"))

    def checkpoints(self, complete: bool = True) -> list[Path]:
        """Complete checkpoints (or, with complete=False, those a kill cut short), oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [
            p
            for p in self.checkpoints_dir.glob("step_*")
            if p.name.split("_")[-1].isdigit() and _is_complete(p) == complete
        ]
        return sorted(found, key=lambda p: int(p.name.split("_")[-1]))

    def latest_checkpoint(self) -> Optional[Path]:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    @property
    def initial_adapter_dir(self) -> Path:
        # PiSSA/OLoRA runs: the adapter as initialised, subtracted at the end to save an adapter of the original base.
        return self.path / "adapter_init"


def output_dir_problem(path: Path, resuming: bool) -> Optional[str]:
    """Why ``path`` must not receive a run (None when it may): a run never overwrites anything not its own.

    Accepted: a new or empty folder, a run queued there by the web app, or (when resuming) an earlier run.
    """
    path = Path(path).expanduser().resolve()
    source = [PROJECT_ROOT / name for name in SOURCE_FOLDERS]
    if path in {Path("/"), Path.home().resolve(), PROJECT_ROOT} or any(path.is_relative_to(s) for s in source):
        return f"{path} is a system, home or project folder; choose a new folder for the run"
    if path.exists() and not path.is_dir():
        return f"{path} is a file; expected a new or empty folder"
    if not path.exists() or not [p for p in path.iterdir() if not _left_by_a_start(p)]:
        return None
    if _set_up_by_hand(path):
        return None
    run = RunDirectory(path)
    state = run.read_status().get("state")
    if state is None and resuming and run.latest_checkpoint() is not None:
        return None  # checkpoints of ours, copied or left by a run whose status was lost
    if state not in STATES:
        found = sorted(p.name for p in path.iterdir())[:5]
        return f"{path} is not empty (holds {', '.join(found)}) and holds no LoRA Lab run; choose a new or empty folder"
    if state != "queued" and not resuming:
        return (
            f"{path} already holds a {state} run; choose a new output_dir "
            "or pass --resume_from_checkpoint true to continue it"
        )
    return None


def _is_time(value: Any) -> bool:
    """A Unix time as a user could have edited it into a JSON file: a positive number, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _set_up_by_hand(path: Path) -> bool:
    """A folder holding only a run's config.yaml that names it as output_dir: the settings the New run page shows,
    saved where its command reads them (anyone else's config.yaml is left alone)."""
    if [p.name for p in path.iterdir() if not _left_by_a_start(p)] != ["config.yaml"]:
        return False
    named = RunDirectory(path).read_config().get("output_dir")
    return isinstance(named, str) and Path(named).expanduser().resolve() == path


def _left_by_a_start(path: Path) -> bool:
    """What a trainer killed while starting leaves before its first state file: its log, a partial write."""
    return path.name == "train.log" or _is_partial_write(path)


def _is_partial_write(path: Path) -> bool:
    """A temporary file of write_bytes_atomic left by a process killed mid-write."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _is_complete(checkpoint: Path) -> bool:
    marker = read_json(checkpoint / CHECKPOINT_COMPLETE)
    return bool(marker and marker.get("complete")) and read_json(checkpoint / TRAINER_STATE) is not None
