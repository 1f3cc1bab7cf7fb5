"""Reading and managing runs for the pages: summaries with progress and ETA; resume, delete, export, push (one
run's details: run_detail.py). Plain Python: no streamlit, no pandas."""

import dataclasses
import functools
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from finetune.checks import experiment_name_problem
from finetune.errors import ConfigError, UserError
from finetune.rundir import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, RunDirectory, read_json
from webapp.runner import jobs, loop
from webapp.services import devices, eta, gate, identity, merged_export, quotas, registry, settings, workspace
from webapp.services.identity import User

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class RunSummary:
    name: str
    path: Path
    owner: str  # the user key of the folder the run lives in
    ref: str  # what pages pass back: the name for the user's own runs, "owner/name" for others' (operators)
    state: str  # queued | starting | running | stopping | finished | failed | cancelled
    task: Optional[str]
    model: Optional[str]
    step: int
    total_steps: Optional[int]
    eta_seconds: Optional[float]
    error: Optional[str]
    created_at: float
    stopped_early: bool = False  # finished at ``step``, short of total_steps, because eval loss stopped improving
    experiment: Optional[str] = None  # the experiment (sweep) the run belongs to: config.yaml's experiment_name

    @property
    def progress(self) -> float:
        if self.state == FINISHED:  # done, whether every planned step ran or early stopping ended it
            return 1.0
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def model_label(self) -> str:
        """The hub id, or a local checkpoint's folder name (full paths crowd the tables)."""
        return Path(self.model).name if self.model and Path(self.model).is_absolute() else (self.model or "?")

    @property
    def label(self) -> str:
        """The run as lists name it: its ref, and its experiment when it belongs to one."""
        return f"{self.ref} · experiment {self.experiment}" if self.experiment else self.ref

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, "starting", RUNNING, "stopping")


def owner_of(path: Path) -> str:
    """The user key of a run folder: LORA_LAB_HOME/runs/NAME is the local user's, users/KEY/runs/NAME KEY's."""
    return identity.LOCAL_KEY if path.parent.parent == workspace.home() else path.parent.parent.name


def summarize(path: Path, viewer: Optional[User] = None) -> RunSummary:
    run = RunDirectory(path)
    owner = owner_of(path)
    status = run.read_status()
    state = status.get("state", "unknown")
    if jobs.launched(run) and state in (QUEUED, CANCELLED, FAILED):
        # Launched but not settled: the trainer is starting, or has reported its end and is still exiting.
        state = "starting" if state == QUEUED else "stopping"
    config, logged = run.read_config(), _logged_steps(run, status)
    # The last train event may precede the early stop (train events come every logging_steps).
    stopped_at = status.get("stopped_early_at_step") if state == FINISHED else None
    # A cancelled or failed run is at its latest checkpoint's step: the one Resume continues from.
    saved = status.get("checkpoint_step") if state in (CANCELLED, FAILED) else None
    step = stopped_at or saved or max((e.get("step") or 0 for e in logged), default=0)
    ref = _ref(owner, path.name, viewer)
    return RunSummary(
        name=path.name,
        path=path,
        owner=owner,
        ref=ref,
        state=state,
        task=config.get("task"),
        model=config.get("model_name_or_path"),
        step=step,
        total_steps=status.get("total_steps"),
        eta_seconds=eta.eta(status, logged + run.read_events(eta.EVENTS_TAIL_BYTES)) if state == RUNNING else None,
        error=status.get("error"),
        created_at=status.get("queued_at") or status.get("started_at") or _mtime(path),
        stopped_early=bool(stopped_at),
        experiment=_experiment(config),
    )


def _experiment(config: dict) -> Optional[str]:
    """config.yaml's experiment_name when it is a valid name (the file may have been edited by hand)."""
    name = config.get("experiment_name")
    return None if experiment_name_problem(name) else name


def _logged_steps(run: RunDirectory, status: dict) -> list[dict]:
    """The train records that progress and pace are read from, as {"event", "step", "time"}: the latest one, which
    the trainer keeps in status.json, so the list of runs reads one small file per run on each refresh; for a run
    from before it did so, every train event of events.jsonl (read again only when that file has changed)."""
    if isinstance(status.get("step"), int):
        return [{"event": "train", "step": status["step"], "time": status.get("step_at")}]
    try:
        stat = run.events_path.stat()
    except OSError:
        return []
    return list(_train_events(run.events_path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=256)
def _train_events(events_path: Path, mtime_ns: int, size: int) -> tuple[dict, ...]:
    """The train events of ``events_path`` as it was at (mtime_ns, size): the key that makes a changed file new."""
    events = RunDirectory(events_path.parent).read_events()
    return tuple(
        {"event": "train", "step": e.get("step"), "time": e.get("time")} for e in events if e.get("event") == "train"
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # deleted from another tab a moment ago
        return 0.0


def default_selection(summaries: list[RunSummary], last: Optional[str]) -> int:
    """Which run the Runs page opens on (index into ``summaries``, newest first): the one the user last selected
    while it is still there, else a running one (not the newest, which may only be queued), else the newest."""
    refs = [s.ref for s in summaries]
    if last in refs:
        return refs.index(last)
    return next((i for i, s in enumerate(summaries) if s.state == RUNNING), 0)


def list_runs(user: User) -> list[RunSummary]:
    """The user's runs (every user's for an operator), newest first."""
    dirs = workspace.all_runs_dirs() if user.is_operator else {user.key: workspace.runs_dir(user.key)}
    shared = settings.load().shared
    found = [summarize(run.path, user) for owner, root in dirs.items() for run in registry.runs_in(owner, root, shared)]
    return sorted(found, key=lambda s: s.created_at, reverse=True)


def locate(user: User, ref: str) -> Path:
    """The folder of the run ``ref`` names ("name", or "owner/name" for an operator); UserError unless ``user``
    may see it."""
    owner, _, name = (ref or "").rpartition("/")
    owner = identity.check_key(owner) if owner else user.key
    if owner != user.key and not user.is_operator:
        raise UserError(f"run: {ref!r} belongs to another user")
    if not RUN_NAME.fullmatch(name):
        raise UserError(f"run: {ref!r} is not a run name")
    path = workspace.runs_dir(owner) / name
    if not registry.is_run(owner, path, settings.load().shared):
        raise UserError(f"run: there is no run called {name!r}")
    return path


def summary(user: User, ref: str) -> RunSummary:
    return summarize(locate(user, ref), user)


def owner_names() -> dict[str, str]:
    """Display names of the users with folders here, by key (for an operator's view)."""
    names = {identity.LOCAL_KEY: "local"}
    for key in workspace.owners()[1:]:
        names[key] = (read_json(workspace.user_root(key) / workspace.USER_FILE) or {}).get("name", key)
    return names


def queue_positions(user: User) -> dict[str, int]:
    """Place in the queue (1 = next, round-robin across users) of each waiting run the user can see, by ref."""
    order = jobs.queued(registry.all_runs(settings.load().shared))
    return {
        _ref(owner, run.path.name, user): i
        for i, (owner, run) in enumerate(order, start=1)
        if owner == user.key or user.is_operator
    }


def _ref(owner: str, name: str, viewer: Optional[User]) -> str:
    return name if viewer is None or owner == viewer.key else f"{owner}/{name}"


def check_new_name(user: User, name: str) -> Path:
    """The folder for ``user``'s new run called ``name``; UserError when the name is unusable or taken."""
    if not RUN_NAME.fullmatch(name or ""):
        raise UserError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", field="run name")
    path = workspace.runs_dir(user.key) / name
    if path.exists():
        raise UserError(f"a run called {name!r} exists already; choose another name", field="run name")
    return path


def push_token(user: User) -> tuple[str, Optional[str]]:
    """How ``user`` may push to the Hub: ("user", their sign-in token), ("server", None: HF_TOKEN, local mode
    with LORA_LAB_ALLOW_PUSH=1 only) or ("off", None)."""
    if user.hub_token:
        return "user", user.hub_token
    if user.key == identity.LOCAL_KEY and os.environ.get("LORA_LAB_ALLOW_PUSH") == "1":
        return "server", None
    return "off", None


def cancel(user: User, ref: str) -> None:
    jobs.cancel(RunDirectory(locate(user, ref)))


def resume(user: User, ref: str) -> None:
    """Queue a cancelled or failed run to continue from its latest checkpoint (from step 0 when it has none yet)."""
    path = locate(user, ref)
    run = RunDirectory(path)
    state = run.state
    if jobs.launched(run):
        raise UserError(f"resume: {path.name} is still stopping; try again in a moment")
    if state not in (CANCELLED, FAILED):
        raise UserError(f"resume: {path.name} is {state}; only a cancelled or failed run can resume")
    try:
        job = jobs.Job.read(run)
    except ValueError:  # trained from the command line into the runs folder: this machine's default setup
        setup = devices.setups(devices.detect_gpus())[0]
        job = jobs.Job(setup.preset, setup.num_processes, setup.num_processes if setup.uses_gpus else 0)
    limits = settings.load()
    try:  # the app's rules may have changed since the run was queued, or its config.yaml been edited
        gate.admit_run_config(owner_of(path), path, run.read_config(), limits)
    except ConfigError as err:
        problems = "; ".join(map(str, err.problems))
        raise UserError(f"resume: this app no longer accepts {path.name}'s settings: {problems}") from None
    quotas.check_can_queue(owner_of(path), limits)
    jobs.enqueue(run, dataclasses.replace(job, resume=True))


def delete(user: User, ref: str) -> None:
    """Remove a run that is not active (cancel it first)."""
    path = locate(user, ref)
    run = RunDirectory(path)
    if jobs.is_active(run) or jobs.launched(run) or run.state == QUEUED:
        raise UserError(f"delete: {path.name} is still queued or running; cancel it first")
    if merged_export.status(path).state == "building":
        raise UserError(f"delete: {path.name}'s merged model is being built; delete it once that is done")
    shutil.rmtree(path)


def adapter_zip(user: User, ref: str) -> bytes:
    """The run's adapter folder (weights, tokenizer or processor, label maps) with its model card, as a zip archive.

    It travels to other machines: the base model is named by its hub id or folder name, never by a path on this
    server (finetune.export).
    """
    from finetune.export.local import export_adapter

    path = locate(user, ref)
    if not RunDirectory(path).adapter_dir.is_dir():
        raise UserError(f"download: {path.name} has no adapter yet; it is written when the run finishes")
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as staging:
        merged_export.zip_folder(export_adapter(path, Path(staging) / "export"), path.name, buffer)
    return buffer.getvalue()


def merged_build(user: User, ref: str) -> merged_export.MergedBuild:
    """Where the zip of the run's merged model stands: built in the background (start_merged_build)."""
    return merged_export.status(locate(user, ref))


def start_merged_build(user: User, ref: str) -> merged_export.MergedBuild:
    """Start building the zip of the finished run's merged model in the background, unless it is under way or
    ready; a failed build starts again."""
    path = locate(user, ref)
    merged_export.start(path)
    return merged_export.status(path)


def merged_zip(user: User, ref: str) -> bytes:
    """The zip of the run's model with the adapter merged into the base weights (loads with plain
    from_pretrained), its processor and model card; built first, and waited for, unless it is ready."""
    return merged_export.wait(locate(user, ref)).read_bytes()


def push(user: User, ref: str, repo_id: str, private: bool, token: Optional[str], update_existing: bool) -> str:
    """Upload the run's adapter with its model card to the Hub repository ``repo_id``; returns its URL."""
    from finetune.export import hub  # huggingface_hub: only when the user pushes

    return hub.push_to_hub(
        locate(user, ref), repo_id.strip(), private=private, token=token, update_existing=update_existing
    )


@dataclass(frozen=True)
class RunnerState:
    """The job runner as the machine's operator sees it."""

    alive: bool  # a runner holds runner.lock
    pid: Optional[int]  # its pid, when runner.json names that live process
    log: Path
    idle_exit_minutes: int  # it exits by itself after this long with nothing to do


def runner_state() -> RunnerState:
    return RunnerState(
        alive=jobs.runner_alive(),
        pid=jobs.runner_pid(),
        log=workspace.home() / jobs.RUNNER_LOG,
        idle_exit_minutes=loop.IDLE_EXIT_SECONDS // 60,
    )
