"""Turning the New run form into a validated config, a run directory and a queued launch."""

import os
from pathlib import Path
from typing import Any, Optional

from finetune.config import TrainConfig
from finetune.errors import ConfigError, Problem, UserError
from finetune.rundir import RunDirectory
from finetune.training.advice import estimated_training_seconds, warnings_for
from webapp.runner import jobs
from webapp.services import catalog, gate, quotas, registry, runs, settings, workspace
from webapp.services.catalog import Checkpoint
from webapp.services.devices import Setup
from webapp.services.identity import User
from webapp.services.uploads import DataReport


def build_config(values: dict[str, Any], run_dir: Path) -> TrainConfig:
    """A TrainConfig from form values; ConfigError lists every bad field ("name: message")."""
    return TrainConfig.from_dict({**filled(values), "output_dir": str(run_dir)})


def filled(values: dict[str, Any]) -> dict[str, Any]:
    """The form fields given a value: a blank field keeps its default."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def problems_by_field(err: ConfigError) -> dict[str, list[str]]:
    """The problems' messages by field, so the form shows each next to its input."""
    grouped: dict[str, list[str]] = {}
    for problem in err.problems:
        grouped.setdefault(problem.field, []).append(problem.message)
    return grouped


def warnings(cfg: TrainConfig, data: DataReport, checkpoint: Checkpoint, setup: Setup) -> dict[str, str]:
    """Settings of a valid ``cfg`` far outside what trains well, as {field: note} (finetune.training.advice), the
    training time included (``estimate``'s)."""
    return warnings_for(cfg, *_cost_inputs(data, checkpoint, setup))


def estimate(cfg: TrainConfig, data: DataReport, checkpoint: Checkpoint, setup: Setup) -> Optional[float]:
    """Rough seconds of training ``checkpoint`` on ``data`` with ``cfg`` on ``setup``'s GPUs or this machine's cores
    (None for a model of unknown cost): a demo checkpoint at its measured cost, others at their family's."""
    return estimated_training_seconds(cfg, *_cost_inputs(data, checkpoint, setup))


def _cost_inputs(data: DataReport, checkpoint: Checkpoint, setup: Setup) -> tuple:
    """estimated_training_seconds' arguments after the config: rows, family, GPUs, cores, bytes, per-example cost."""
    gpus = setup.num_processes if setup.uses_gpus else 0
    demo_cost = catalog.DEMO_SECONDS_PER_EXAMPLE.get(checkpoint.model_type) if checkpoint.demo else None
    return data.num_examples, checkpoint.model_type, gpus, cpu_cores(), data.file_bytes, demo_cost


def cpu_cores() -> int:
    """Cores this process may use: a container's CPU set, not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan(user: User, name: str, values: dict[str, Any], setup: Setup) -> tuple[TrainConfig, list[str]]:
    """The validated config and the exact launch command of ``user``'s new run called ``name`` (nothing written)."""
    try:
        run_dir = runs.check_new_name(user, name)
    except UserError as err:
        # Checked with the settings, so the form shows every problem at once.
        run_dir, name_problem = workspace.runs_dir(user.key) / "unnamed", Problem(err.field or "run name", err.message)
    else:
        name_problem = None
    try:
        cfg = gate.admit(user.key, build_config(values, run_dir), settings.load())
    except ConfigError as err:
        raise ConfigError(([name_problem] if name_problem else []) + err.problems) from None
    if name_problem:
        raise ConfigError([name_problem])
    return cfg, setup.command(RunDirectory(run_dir).config_path)


def launch(user: User, cfg: TrainConfig, setup: Setup) -> RunDirectory:
    """Write the run's config.yaml and queue it on ``setup``; the runner starts it when a slot is free.

    ``cfg.output_dir`` must be the new run folder of ``user``'s that plan() chose. The config passes the app's gate
    (webapp/services/gate.py) here, whatever built it; ConfigError says what it refused.
    """
    limits = settings.load()
    cfg = gate.admit(user.key, cfg, limits)
    quotas.check_can_queue(user.key, limits)
    run = RunDirectory(runs.check_new_name(user, Path(cfg.output_dir).name))
    if Path(cfg.output_dir) != run.path:
        raise UserError(f"run: {cfg.output_dir} is not a folder of yours; plan the run again")
    workspace.register(user.key, user.name)
    run.path.mkdir(parents=True, exist_ok=False)
    registry.seal(user.key, run.path)
    cfg.to_yaml(run.config_path)
    jobs.enqueue(run, jobs.Job(setup.preset, setup.num_processes, setup.num_processes if setup.uses_gpus else 0))
    return run
