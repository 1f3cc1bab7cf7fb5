"""An experiment: the runs of one hyperparameter sweep, grouped, with the best run picked (docs/sweeps.md).

Layout of a sweep started from the command line (``python -m finetune.sweep``)::

    <output_dir>/<name>/experiment.json      the grid, the points (run name -> varied settings), the primary
                                             metric, the pruned runs and, once done, the best run
    <output_dir>/<name>/<name>-01/ ...       one run directory per point (finetune/rundir.py)

Run folders are named by the experiment's name and a number, never by a value of the grid. ``Experiment`` names
every file here and holds its reader and writer; ``best_run`` ranks runs for the CLI and the web app alike.
Imports nothing heavy.
"""

import math
import time
from pathlib import Path
from typing import Any, Optional

from finetune.checks import experiment_name_problem
from finetune.rundir import RunDirectory, read_json, write_json_atomic
from finetune.task_kinds import LOWER_IS_BETTER

EXPERIMENT_FILE = "experiment.json"
MAX_POINTS = 99  # run names end in a two-digit number


def run_name(experiment: str, index: int) -> str:
    """The name of the experiment's run for point ``index`` (1-based): the project's naming, no user values."""
    return f"{experiment}-{index:02d}"


class Experiment:
    """Paths and the reader/writer of one experiment folder."""

    def __init__(self, root: str | Path, name: str):
        problem = experiment_name_problem(name)
        if problem:
            raise ValueError(problem)
        self.name = name
        self.path = Path(root) / name
        self.json_path = self.path / EXPERIMENT_FILE

    def run(self, index: int) -> RunDirectory:
        return RunDirectory(self.path / run_name(self.name, index))

    def read(self) -> dict:
        """experiment.json as written ({} when missing or garbled)."""
        return read_json(self.json_path) or {}

    def update(self, **fields: Any) -> dict:
        """Merge ``fields`` into experiment.json, written atomically."""
        record = {**self.read(), **fields, "updated_at": time.time()}
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.json_path, record)
        return record


def primary_value(metrics: dict, metric: str) -> Optional[float]:
    """The fine-tuned model's ``metric`` in a run's metrics.json; None when it has none (not finished) or it is no
    finite number."""
    value = (metrics.get("finetuned") or {}).get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def best_run(values: dict[str, Optional[float]], metric: str) -> Optional[str]:
    """The run with the best ``metric`` among ``values`` (run -> value; None: no score), lower better for the
    metrics in LOWER_IS_BETTER; on a tie the first run in ``values``. None when no run has a score."""
    scored = [(name, value) for name, value in values.items() if value is not None]
    if not scored:
        return None
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(scored, key=lambda item: sign * item[1])[0]
