"""Sweeps from the web app: one queued run per point of a grid, grouped as one experiment, the best run marked.

The grid is read and checked by the engine's own parser (finetune.sweep.grid). Each point is a normal run of the user's,
named <experiment>-NN in their runs folder, with experiment_name in its config.yaml, queued like any other run
(webapp/services/launch.py). The Runs and Compare pages group runs by that experiment_name and rank an experiment's
runs by its task's primary metric (finetune.sweep.experiment.best_run). Plain Python: no streamlit.
"""

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from finetune.checks import experiment_name_problem
from finetune.config import TrainConfig
from finetune.errors import ConfigError, Problem, UserError
from finetune.rundir import FINISHED, RunDirectory
from finetune.sweep import grid as sweep_grid
from finetune.sweep.experiment import best_run, primary_value, run_name
from finetune.task_kinds import LOWER_IS_BETTER, primary_metric
from webapp.services import gate, launch, quotas, runs, settings
from webapp.services.devices import Setup
from webapp.services.identity import User
from webapp.services.runs import RunSummary

# Settings that differ between any two runs and say nothing about the point.
NOT_VARIED = ("output_dir", "resume_from_checkpoint")


@dataclass
class SweepPlan:
    """A checked sweep of ``user``'s: nothing written yet."""

    experiment: str
    names: list[str]  # the runs' names, <experiment>-NN
    points: list[dict[str, str]]  # the settings each run varies, as typed
    configs: list[TrainConfig]


def plan(
    user: User, experiment: str, grid_text: str, random_count: int, seed: int, values: dict[str, Any]
) -> SweepPlan:
    """The configs of a sweep over ``grid_text`` (one key=v1,v2 per line; ``random_count`` > 0: that many points
    drawn with ``seed``) on the New run form's ``values``. ConfigError or UserError says what is wrong."""
    problem = experiment_name_problem(experiment)
    if problem:
        raise ConfigError([Problem("experiment", problem)])
    grid = sweep_grid.parse_grid_text(grid_text)
    points = sweep_grid.grid_points(grid, random_count or None, seed)
    names = [run_name(experiment, index) for index in range(1, len(points) + 1)]
    try:
        run_dirs = [runs.check_new_name(user, name) for name in names]
    except UserError as err:
        raise UserError(f"experiment: {experiment!r} is taken ({err}); choose another experiment name") from None
    configs = sweep_grid.configs_for(launch.filled(values), points, experiment, run_dirs)
    return SweepPlan(experiment, names, points, [gate.admit(user.key, cfg, settings.load()) for cfg in configs])


def queue(user: User, planned: SweepPlan, setup: Setup) -> list[RunDirectory]:
    """Queue every run of ``planned`` on ``setup``, after checking the user may queue them all: every point passes
    the app's gate before the first is queued."""
    limits = settings.load()
    configs = [gate.admit(user.key, cfg, limits) for cfg in planned.configs]
    quotas.check_can_queue(user.key, limits, adding=len(configs))
    return [launch.launch(user, cfg, setup) for cfg in configs]


@dataclass
class ExperimentSummary:
    """An experiment's runs as the Runs and Compare pages show them."""

    name: str  # the experiment's name ("owner/name" for another user's, as refs are)
    task: Optional[str]
    metric: str  # the task's primary metric: what ranks the runs
    runs: list[RunSummary]  # by name: the order of the points
    values: dict[str, Optional[float]]  # the fine-tuned primary metric of each run, by ref (None: not finished)
    best: Optional[str]  # the ref of the best finished run
    varied: dict[str, dict]  # the settings that differ between the runs, by ref

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def refs(self) -> list[str]:
        return [s.ref for s in self.runs]

    def rows(self) -> list[dict]:
        """One row per run: ★ for the best, run, state, the primary metric, the varied settings."""
        return [
            {
                "best": "★" if s.ref == self.best else "",
                "run": s.ref,
                "state": s.state,
                self.metric: self.values[s.ref],
                **self.varied[s.ref],
            }
            for s in self.runs
        ]


def experiments(summaries: list[RunSummary]) -> list[ExperimentSummary]:
    """The experiments among ``summaries``, newest first (by their newest run)."""
    groups: dict[str, list[RunSummary]] = {}
    for s in summaries:
        if s.experiment:
            owner = s.ref.rpartition("/")[0]
            groups.setdefault(f"{owner}/{s.experiment}" if owner else s.experiment, []).append(s)
    return [_summarize(name, sorted(members, key=lambda s: s.name)) for name, members in groups.items()]


def _summarize(name: str, members: list[RunSummary]) -> ExperimentSummary:
    task = next((s.task for s in members if s.task), None)
    metric = primary_metric(task)
    read = {s.ref: _metrics_and_config(RunDirectory(s.path)) for s in members}
    values = {s.ref: primary_value(read[s.ref][0], metric) if s.state == FINISHED else None for s in members}
    configs = {s.ref: read[s.ref][1] for s in members}
    keys = dict.fromkeys(key for config in configs.values() for key in config if key not in NOT_VARIED)
    differing = [key for key in keys if len({repr(config.get(key)) for config in configs.values()}) > 1]
    varied = {ref: {key: _cell(config.get(key)) for key in differing} for ref, config in configs.items()}
    return ExperimentSummary(name, task, metric, members, values, best_run(values, metric), varied)


def _metrics_and_config(run: RunDirectory) -> tuple[dict, dict]:
    """metrics.json and config.yaml of ``run``, read again only when either file changed: the Runs page summarises
    every experiment every 2 s."""
    return _read_files(str(run.path), _stamp(run.metrics_path), _stamp(run.config_path))


def _stamp(path: Path) -> Optional[tuple[int, int]]:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=1024)
def _read_files(path: str, metrics_stamp, config_stamp) -> tuple[dict, dict]:
    run = RunDirectory(path)
    return run.read_metrics(), run.read_config()


def _cell(value: Any) -> Any:
    """A setting as one table cell: lists (lora_target_modules) as text."""
    return ", ".join(map(str, value)) if isinstance(value, list) else value
