"""The sweep's grid: read from the command line or the Sweep form, every key and value checked against TrainConfig,
and turned into one config per point.
"""

import difflib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from finetune.checks import experiment_name_problem
from finetune.coercion import read_yaml
from finetune.config import TrainConfig, field_help
from finetune.errors import ConfigError, Problem, UserError
from finetune.rundir import output_dir_problem
from finetune.sweep.experiment import MAX_POINTS, Experiment
from finetune.task_kinds import TASKS

# Set by the sweep itself for each run: varying them would break the grouping or the run folders.
NOT_SWEPT = ("output_dir", "experiment_name", "resume_from_checkpoint")


def setting_name(typed: str) -> str:
    """A setting as typed in a grid, its name (learning_rate) or the New run form's label (Learning rate)."""
    return typed.strip().lower().replace(" ", "_").replace("-", "_")


def _unknown(typed: str, key: str, fields: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "expected a setting's name (learning_rate) or its label"
    return f"{typed!r} is not a setting; {hint}"


def parse_grid(items: Iterable[str]) -> dict[str, list[str]]:
    """``["key=v1,v2", ...]`` as {key: [v1, v2]}; ConfigError names every bad key or value (values are checked
    against TrainConfig by ``configs_for``)."""
    fields, grid, problems = set(field_help()), {}, []
    for item in items:
        typed, sep, values = (part.strip() for part in item.partition("="))
        key = setting_name(typed)
        choices = [value.strip() for value in values.split(",")]
        if not sep or not key:
            problems.append(Problem("grid", f"{item!r} is not key=value[,value...]"))
        elif key not in fields:
            problems.append(Problem(typed, _unknown(typed, key, fields)))
        elif key in NOT_SWEPT:
            problems.append(Problem(key, "set by the sweep for each run; it cannot be varied"))
        elif key in grid:
            problems.append(Problem(key, "given twice; expected one key=v1,v2 per setting"))
        elif not all(choices) or len(set(choices)) < len(choices):
            problems.append(
                Problem(key, f"{values!r} has an empty or repeated value; expected distinct comma-separated values")
            )
        else:
            grid[key] = choices
    if not grid and not problems:
        problems.append(Problem("grid", "nothing to vary; expected key=v1,v2 (e.g. learning_rate=1e-4,3e-4)"))
    if problems:
        raise ConfigError(problems)
    return grid


def parse_grid_text(text: str) -> dict[str, list[str]]:
    """The web form's grid: one ``key=v1,v2`` per line; blank lines and lines starting with # are skipped."""
    return parse_grid(line for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def grid_points(grid: dict[str, list[str]], random_count: Optional[int] = None, seed: int = 0) -> list[dict]:
    """The points to run, in grid order: every point of the cartesian product, or ``random_count`` distinct ones
    drawn with ``seed`` (the same draw for the same grid and seed)."""
    sizes = [len(values) for values in grid.values()]
    total = math.prod(sizes)
    if random_count is None:
        if total > MAX_POINTS:
            raise ConfigError(
                [Problem("grid", f"{total} points; at most {MAX_POINTS} per experiment (or draw some with --random)")]
            )
        indices: Iterable[int] = range(total)
    elif not 1 <= random_count <= min(total, MAX_POINTS):
        raise ConfigError(
            [
                Problem(
                    "random",
                    f"expected 1 to {min(total, MAX_POINTS)} (the grid has {total} points), got {random_count}",
                )
            ]
        )
    else:
        # Indices, not points, are drawn: a large grid is never spelled out.
        indices = sorted(random.Random(seed).sample(range(total), random_count))
    return [_point(grid, sizes, index) for index in indices]


def _point(grid: dict[str, list[str]], sizes: list[int], index: int) -> dict[str, str]:
    """Point ``index`` of the cartesian product in itertools.product order (the last key varies fastest)."""
    point = {}
    for key, size in reversed(list(zip(grid, sizes))):
        index, position = divmod(index, size)
        point[key] = grid[key][position]
    return {key: point[key] for key in grid}


def configs_for(base: dict, points: list[dict], experiment: str, run_dirs: list[Path]) -> list[TrainConfig]:
    """The config of each point's run (the shared settings, the point's, its folder ``run_dirs[i]`` and the
    experiment's name); ConfigError names every bad key=value with what is expected."""
    problems, configs = [], []
    for point, run_dir in zip(points, run_dirs):
        values = {**base, **point, "output_dir": str(run_dir), "experiment_name": experiment}
        try:
            configs.append(TrainConfig.from_dict(values))
        except ConfigError as err:
            problems += [_blame(problem, point) for problem in err.problems]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return configs


def _blame(problem: Problem, point: dict) -> Problem:
    """A problem of one point's config, named by the point: "key=value: message" for a key the point varies, else
    prefixed with the whole point."""
    if problem.field in point:
        return Problem(f"{problem.field}={point[problem.field]}", problem.message)
    return Problem(" ".join(f"{k}={v}" for k, v in point.items()), str(problem))


@dataclass
class Sweep:
    """A checked plan: nothing has been written yet."""

    experiment: Experiment
    grid: dict[str, list[str]]
    points: list[dict]
    configs: list[TrainConfig]
    task: str
    metric: str


def plan(
    config: str, grid_items: list[str], random_count: Optional[int], seed: int, experiment: Optional[str]
) -> Sweep:
    """Read and check everything (YAML, grid, every point's config, the experiment folder, the checkpoint's task)."""
    base = read_yaml(config)
    base_cfg = TrainConfig.from_dict(base)  # the YAML alone must be a valid run: its output_dir holds the experiment
    name = experiment or base_cfg.experiment_name or time.strftime("sweep-%Y%m%d-%H%M%S")
    if experiment_name_problem(name):
        raise ConfigError([Problem("experiment", experiment_name_problem(name))])
    grid = parse_grid(grid_items)
    points = grid_points(grid, random_count, seed)
    folder = Experiment(Path(base_cfg.output_dir).expanduser().resolve(), name)
    configs = configs_for(base, points, name, [folder.run(index).path for index in range(1, len(points) + 1)])
    if folder.path.is_dir() and any(folder.path.iterdir()):
        raise UserError(f"experiment: {folder.path} exists already; choose another --experiment name")
    if output_dir_problem(folder.path, resuming=False):
        raise UserError(f"experiment: {output_dir_problem(folder.path, resuming=False)}")
    task = _task(base_cfg)
    return Sweep(folder, grid, points, configs, task, TASKS[task].primary_metric)


def _task(cfg: TrainConfig) -> str:
    """The task every point trains: the YAML's, else the checkpoint's default (read from its config.json)."""
    from finetune.tasks import load_model_config, resolve_task

    return resolve_task(load_model_config(cfg.model_name_or_path), cfg.task, cfg.model_name_or_path)
