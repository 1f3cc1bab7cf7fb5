"""The value checks of a run's settings (TrainConfig.problems): ranges, sizes, and combinations of LoRA variants.

Every problem is reported at once, before any model loads. Model-specific limits (rank vs layer width, block size vs
context) are checked once the model is known.
"""

import math
import re
import shutil
from typing import Any, Optional

from finetune.errors import Problem
from finetune.task_kinds import TASKS

# Experiment names become folder names and labels: a safe, short subset.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,59}")  # + "-NN": run names stay within 64
# Sizes past these only exhaust memory or diverge (a learning rate of 50 collapses any run to one class).
UPPER_BOUNDS = {
    "learning_rate": 1.0,
    "head_learning_rate": 1.0,
    "lora_r": 4096,
    "per_device_train_batch_size": 65536,
    "per_device_eval_batch_size": 65536,
    "gradient_accumulation_steps": 65536,
    "max_seq_length": 1_000_000,
    "block_size": 1_000_000,
    "num_train_epochs": 10_000,
    "lora_alpha": 1_000_000,
    "max_steps": 10_000_000,
    "eval_steps": 10_000_000,
    "save_steps": 10_000_000,
    "logging_steps": 10_000_000,
}


# Counts and sizes that must be at least 1 when given.
POSITIVE_INTEGERS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "logging_steps",
    "lora_r",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "max_seq_length",
    "block_size",
    "early_stopping_patience",
    "max_eval_samples",
    "max_unpacked_mb",
    "max_archive_members",
)


def experiment_name_problem(name: Any) -> Optional[str]:
    """Why ``name`` cannot name an experiment (None when it can): it becomes folder and run names."""
    if isinstance(name, str) and EXPERIMENT_NAME.fullmatch(name):
        return None
    return (
        f"{name!r} is not a valid experiment name; expected 1-60 letters, digits, '-', '_' or '.', starting with a "
        "letter or digit"
    )


def value_problems(cfg) -> list[Problem]:
    """Every invalid value of the TrainConfig ``cfg``, one problem each (empty when the config is valid)."""
    p = []
    for name in ("model_name_or_path", "train_file", "output_dir"):
        if not str(getattr(cfg, name) or "").strip():
            p.append(Problem(name, "required, got nothing"))
    for name in POSITIVE_INTEGERS:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            p.append(Problem(name, f"must be a positive integer, got {value}"))
    for name in (
        "learning_rate",
        "head_learning_rate",
        "num_train_epochs",
        "lora_alpha",
        "max_compression_ratio",
        "save_minutes",
    ):
        value = getattr(cfg, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            p.append(Problem(name, f"must be a positive number, got {value}"))
    for name, upper in UPPER_BOUNDS.items():
        value = getattr(cfg, name)
        if value is not None and value > upper:
            p.append(Problem(name, f"{value:g} is beyond any useful value; expected at most {upper:g}"))
    for name in ("weight_decay", "max_grad_norm"):
        if getattr(cfg, name) < 0:
            p.append(Problem(name, f"must be >= 0, got {getattr(cfg, name)}"))
    for name, upper in (("warmup_ratio", 1.0), ("lora_dropout", 1.0)):
        if not 0 <= getattr(cfg, name) < upper:
            p.append(Problem(name, f"must be in [0, {upper}), got {getattr(cfg, name)}"))
    if cfg.dataloader_num_workers is not None and not 0 <= cfg.dataloader_num_workers <= 64:
        p.append(Problem("dataloader_num_workers", f"must be between 0 and 64, got {cfg.dataloader_num_workers}"))
    if cfg.task is not None and cfg.task not in TASKS:
        p.append(Problem("task", f"expected one of {', '.join(TASKS)}, got {cfg.task!r}"))
    if not 0 < cfg.validation_split_percentage < 100:
        p.append(
            Problem("validation_split_percentage", f"must be between 0 and 100, got {cfg.validation_split_percentage}")
        )
    return p + _variant_problems(cfg)


def _variant_problems(cfg) -> list[Problem]:
    """LoRA variants and experiment names (their combinations with each other)."""
    p = []
    if cfg.loraplus_lr_ratio is not None and not 1 <= cfg.loraplus_lr_ratio <= 1000:
        p.append(Problem("loraplus_lr_ratio", f"must be between 1 and 1000 (usually 16), got {cfg.loraplus_lr_ratio}"))
    if cfg.finetune_method == "full" and (cfg.load_in_4bit or cfg.use_dora or cfg.loraplus_lr_ratio):
        p.append(
            Problem(
                "finetune_method",
                "full trains every weight; load_in_4bit, use_dora and loraplus_lr_ratio apply to LoRA only",
            )
        )
    if cfg.init_lora_weights in ("pissa", "olora") and (cfg.use_dora or cfg.load_in_4bit):
        p.append(
            Problem(
                "init_lora_weights",
                f"{cfg.init_lora_weights} rewrites the base weights; it works without use_dora and load_in_4bit"
                " only (or use default/gaussian)",
            )
        )
    if cfg.experiment_name is not None and experiment_name_problem(cfg.experiment_name):
        p.append(Problem("experiment_name", experiment_name_problem(cfg.experiment_name)))
    return p


# torch.compile's inductor builds its kernels with one of these (C++ on CPU, Triton's launchers on GPU).
C_COMPILERS = ("cc", "gcc", "clang")


def c_compiler() -> Optional[str]:
    """The path of a C compiler on PATH, or None: torch_compile cannot run without one."""
    return next((path for path in map(shutil.which, C_COMPILERS) if path), None)
