"""The launch boundary: the app's policy applied to the final config of every run, whichever route made it.

New run form, Sweep grid, Resume and the job runner's start of a queued run all pass ``admit`` with the run's
owner. On a shared app (LORA_LAB_USERS not local) it holds each field to what the schema says of it
(finetune/config.py: USER, PATH, BOUND or APP):
- PATH fields name only what the app offers this owner: their uploads, their runs, the demo checkpoints and
  sample data, or a hub id; never another path on this server (another user's files, /etc, /proc, the app's own);
- BOUND fields stay at or under the operator's ceilings (settings.py): a user may lower a bound, not raise it;
- APP fields are the app's: the run writes into its own folder, unpacks archives into its owner's cache (counted
  in their quota, deleted with their account's files), and resumes only through the runner.
In local mode the one user owns the machine and every setting is theirs.
"""

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from finetune.config import BOUND, PATH, TrainConfig, field_policies
from finetune.errors import ConfigError, Problem
from webapp.services import settings, workspace

# Each BOUND field and the Settings attribute holding its ceiling on a shared app.
CEILINGS = {
    "num_train_epochs": "max_train_epochs",
    "max_steps": "max_steps",
    "per_device_train_batch_size": "max_batch_size",
    "per_device_eval_batch_size": "max_batch_size",
    "gradient_accumulation_steps": "max_gradient_accumulation_steps",
    "dataloader_num_workers": "max_dataloader_workers",
    "save_total_limit": "max_save_total_limit",
    "max_seq_length": "max_seq_length",
    "block_size": "max_block_size",
    "max_eval_samples": "max_eval_samples",
    "max_unpacked_mb": "max_unpacked_mb",
    "max_compression_ratio": "max_compression_ratio",
    "max_archive_members": "max_archive_members",
}
# BOUND fields whose absence means "no limit" (keep every checkpoint, evaluate on everything): on a shared app
# they take the ceiling. The others mean "the model's or the data's own size" when absent, which the trainer caps.
UNLIMITED_WHEN_ABSENT = ("save_total_limit", "max_eval_samples")
# A hub repository id: "name" or "owner/name" (huggingface_hub's rules: letters, digits, '-', '_', '.').
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
CACHE = "cache"  # in each user's folder: archives their runs unpack (workspace.user_root)


def admit(owner: str, cfg: TrainConfig, limits: settings.Settings) -> TrainConfig:
    """``cfg`` as the app lets ``owner`` (a user key) run it: app-owned fields set, the rest checked.

    ConfigError lists every refused field ("name: message"); on a shared app only.
    """
    if not limits.shared:
        return cfg
    problems = []
    for name, policy in field_policies().items():
        value = getattr(cfg, name)
        if policy == PATH and value is not None:
            problems += _path_problems(name, value, owner)
        elif policy == BOUND:
            problems += _bound_problems(name, value, limits)
    problems += _app_problems(owner, cfg)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(cfg, data_cache_dir=str(cache_dir(owner)), **_lowered(cfg, limits))


def cache_dir(owner: str) -> Path:
    """Where ``owner``'s runs unpack .zip archives: inside their folder, so their quota counts it."""
    return workspace.user_root(owner) / CACHE


def _path_problems(name: str, value: str, owner: str) -> list[Problem]:
    if name == "model_name_or_path" and _is_hub_id(value):
        return []
    roots = _offered_roots(name, owner)
    if any(_inside(value, root) for root in roots):
        return []
    what = (
        "a hub id (e.g. gpt2), a demo checkpoint or one of your runs"
        if name == "model_name_or_path"
        else "one of your uploads or the sample data"
    )
    return [Problem(name, f"{value!r} is not offered on this shared app; expected {what}, chosen on the New run page")]


def _offered_roots(name: str, owner: str) -> list[Path]:
    demo = workspace.demo_dir()
    if name == "model_name_or_path":
        return [demo / "checkpoints", workspace.runs_dir(owner)]
    return [demo / "samples", workspace.uploads_dir(owner)]


def _is_hub_id(value: str) -> bool:
    """A hub id that no local folder shadows: from_pretrained reads a folder of that name first (the trainer runs
    in the source tree, which holds folders such as configs/ and tests/)."""
    if not HUB_ID.fullmatch(value) or ".." in value:
        return False
    return not (workspace.REPO / value).exists() and not Path(value).exists()


def _inside(value: str, root: Path) -> bool:
    """Whether the path ``value`` names something under ``root``, symbolic links and '..' resolved."""
    if not os.path.isabs(value):
        return False  # relative paths resolve against the trainer's folder, not a user's
    resolved, base = os.path.realpath(value), os.path.realpath(root)
    return resolved.startswith(base + os.sep)


def _bound_problems(name: str, value: Any, limits: settings.Settings) -> list[Problem]:
    ceiling = getattr(limits, CEILINGS[name])
    if value is None or (name == "max_steps" and value <= 0) or value <= ceiling or value == _default(name):
        return []  # a default above the ceiling is lowered to it (_lowered), not refused: the user chose nothing
    env = f"LORA_LAB_{CEILINGS[name].upper()}"
    return [Problem(name, f"{value:g} is above this app's limit of {ceiling:g} (set by the operator: {env})")]


def _lowered(cfg: TrainConfig, limits: settings.Settings) -> dict[str, Any]:
    """The ceiling for each BOUND field left unlimited (absent) or at a default above the ceiling."""
    lowered = {}
    for name, attribute in CEILINGS.items():
        value, ceiling = getattr(cfg, name), getattr(limits, attribute)
        if value is None:
            if name in UNLIMITED_WHEN_ABSENT:
                lowered[name] = ceiling
        elif value == _default(name) and value > ceiling:
            lowered[name] = ceiling
    return lowered


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _app_problems(owner: str, cfg: TrainConfig) -> list[Problem]:
    p = []
    run = Path(cfg.output_dir)
    if not run.is_absolute() or os.path.realpath(run.parent) != os.path.realpath(workspace.runs_dir(owner)):
        p.append(
            Problem("output_dir", f"{cfg.output_dir!r} is not a run folder of yours; the app chooses where runs write")
        )
    if cfg.data_cache_dir is not None and not _same(cfg.data_cache_dir, cache_dir(owner)):
        p.append(Problem("data_cache_dir", "chosen by the app on a shared app; leave it out"))
    if cfg.resume_from_checkpoint not in (None, False, True):
        p.append(Problem("resume_from_checkpoint", "a run resumes from its own checkpoints only (the Resume button)"))
    return p


def _same(a: str, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def admit_run_config(owner: str, run_dir: Path, values: dict[str, Any], limits: settings.Settings) -> TrainConfig:
    """A queued run's config.yaml ``values`` through ``admit``, as the trainer will read them: into ``run_dir``."""
    return admit(owner, TrainConfig.from_dict({**values, "output_dir": str(run_dir)}), limits)
