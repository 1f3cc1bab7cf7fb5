"""Reading and managing runs for the pages: summaries with progress and ETA, resume, delete, export."""

import dataclasses
import io
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from finetune.errors import UserError
from finetune.rundir import RunDirectory
from webapp.services import devices, jobs, workspace

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class RunSummary:
    name: str
    path: Path
    state: str  # queued | starting | running | stopping | finished | failed | cancelled
    task: Optional[str]
    model: Optional[str]
    step: int
    total_steps: Optional[int]
    eta_seconds: Optional[float]
    error: Optional[str]
    created_at: float

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def model_label(self) -> str:
        """The hub id, or a local checkpoint's folder name (full paths crowd the tables)."""
        return Path(self.model).name if self.model and Path(self.model).is_absolute() else (self.model or "?")

    @property
    def active(self) -> bool:
        return self.state in ("queued", "starting", "running", "stopping")


def summarize(path: Path) -> RunSummary:
    run = RunDirectory(path)
    status = run.read_status()
    state = status.get("state", "unknown")
    if jobs.launched(run) and state in ("queued", "cancelled", "failed"):
        # Launched but not settled: the trainer is starting, or has reported its end and is still exiting.
        state = "starting" if state == "queued" else "stopping"
    config = _read_config(run)
    step = max((e.get("step") or 0 for e in run.read_events() if e.get("event") == "train"), default=0)
    return RunSummary(name=path.name, path=path, state=state, task=config.get("task"),
                      model=config.get("model_name_or_path"), step=step, total_steps=status.get("total_steps"),
                      eta_seconds=_eta(status, step) if state == "running" else None, error=status.get("error"),
                      created_at=status.get("queued_at") or status.get("started_at") or _mtime(path))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # deleted from another tab a moment ago
        return 0.0


def _eta(status: dict, step: int) -> Optional[float]:
    """Seconds left at the pace so far (the base-model evaluation at start is counted in the pace)."""
    total, started = status.get("total_steps"), status.get("started_at")
    if not (total and started and step):
        return None
    return (time.time() - started) / step * (total - step)


def _read_config(run: RunDirectory) -> dict:
    try:
        return yaml.safe_load(run.config_path.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}


def list_runs(root: Optional[Path] = None) -> list[RunSummary]:
    """Every run under the runs folder, newest first."""
    root = root or workspace.runs_dir()
    found = [summarize(p) for p in root.iterdir() if p.is_dir() and RunDirectory(p).is_run()]
    return sorted(found, key=lambda s: s.created_at, reverse=True)


def queue_positions(root: Optional[Path] = None) -> dict[str, int]:
    """Place in the FIFO queue (1 = next) of each waiting run."""
    return {run.path.name: i for i, run in enumerate(jobs.queued(root or workspace.runs_dir()), start=1)}


def check_new_name(name: str, root: Optional[Path] = None) -> Path:
    """The folder for a new run called ``name``; UserError when the name is unusable or taken."""
    if not RUN_NAME.match(name or ""):
        raise UserError("run name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    path = (root or workspace.runs_dir()) / name
    if path.exists():
        raise UserError(f"run name: a run called {name!r} exists already; choose another name")
    return path


def resume(path: Path) -> None:
    """Queue a cancelled or failed run to continue from its latest checkpoint."""
    run = RunDirectory(path)
    state = run.read_status().get("state")
    if jobs.launched(run):
        raise UserError(f"resume: {path.name} is still stopping; try again in a moment")
    if state not in ("cancelled", "failed") or run.latest_checkpoint() is None:
        raise UserError(f"resume: {path.name} is {state} with {'a' if run.latest_checkpoint() else 'no'} checkpoint; "
                        "only a cancelled or failed run with a checkpoint can resume")
    try:
        job = jobs.Job.read(run)
    except ValueError:  # trained from the command line into the runs folder: this machine's default setup
        setup = devices.setups(devices.detect_gpus())[0]
        job = jobs.Job(setup.preset, setup.num_processes, setup.num_processes if setup.uses_gpus else 0)
    jobs.enqueue(run, dataclasses.replace(job, resume=True))


def delete(path: Path) -> None:
    """Remove a run that is not active (cancel it first)."""
    run = RunDirectory(path)
    if jobs.is_active(run) or jobs.launched(run) or run.read_status().get("state") == "queued":
        raise UserError(f"delete: {path.name} is still queued or running; cancel it first")
    shutil.rmtree(path)


def adapter_zip(path: Path) -> bytes:
    """The run's adapter folder (weights, tokenizer or processor, label maps) as a zip archive."""
    adapter = RunDirectory(path).adapter_dir
    if not adapter.is_dir():
        raise UserError(f"download: {path.name} has no adapter yet; it is written when the run finishes")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(adapter.rglob("*")):
            if file.is_file():
                archive.write(file, Path(path.name) / file.relative_to(adapter))
    return buffer.getvalue()
