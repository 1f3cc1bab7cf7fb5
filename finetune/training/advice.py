"""Advice on valid settings that still train badly: warned about before launch, never refused."""

import math
from typing import Optional

from finetune.config import TrainConfig
from finetune.task_kinds import TASKS

# Valid settings that still train badly are warned about (never refused). A learning rate past these
# diverges or collapses every prediction to one class; LoRA adapters start at zero and tolerate about 10x
# the full fine-tuning rate; a new head tolerates 10x more again.
WARN_LR_ABOVE = {"lora": 1e-2, "full": 1e-3}
WARN_HEAD_LR_ABOVE = 1e-1
# lora_alpha / lora_r multiplies the adapter's update (default 32 / 16 = 2): outside this range it acts like
# a learning rate over 8x larger or 16x smaller than intended.
LORA_SCALE_RANGE = (0.125, 16.0)
# Rough training cost of one example (forward + backward + step; LoRA r=16, batch 8, texts of 128 tokens,
# 224x224 images). CPU: CPU-seconds, measured with full-size random-init gpt2, bert-base, vit-base and
# resnet-50 on a 2-core x86 machine (wall time: this over the cores used). GPU: seconds, assumed for one
# data-centre GPU in fp32, where batch-8 steps take ~30-40 ms; not measured.
SECONDS_PER_EXAMPLE = {
    "cpu": {"gpt2": 2.0, "bert": 1.5, "vit": 1.6, "resnet": 1.4},
    "gpu": {"gpt2": 0.005, "bert": 0.004, "vit": 0.005, "resnet": 0.004},
}
WARN_LONGER_THAN_S = 3600


def warnings_for(
    cfg: TrainConfig, num_examples: int, model_type: Optional[str] = None, gpus: int = 0, cpu_cores: int = 1
) -> dict[str, str]:
    """Settings of a valid ``cfg`` far outside what trains well, as {field: message}; nothing is refused.

    The duration estimate needs ``model_type`` (a key of SECONDS_PER_EXAMPLE) and the device: ``gpus`` GPUs,
    or ``cpu_cores`` cores when ``gpus`` is 0.
    """
    found = {}
    lr, method = cfg.learning_rate_or_default, cfg.finetune_method
    if lr > WARN_LR_ABOVE[method]:
        kind = "LoRA" if method == "lora" else "full fine-tuning"
        found["learning_rate"] = (
            f"{lr:g} is far above what works for {kind} (usually 1e-5..{WARN_LR_ABOVE[method]:g}); "
            "the loss may diverge or every prediction collapse to one class"
        )
    # A task whose table entry lists head_learning_rate among its not_settings trains no new head.
    new_head = cfg.task is None or "head_learning_rate" not in TASKS[cfg.task].not_settings
    if new_head and cfg.head_learning_rate_or_default > WARN_HEAD_LR_ABOVE:
        found["head_learning_rate"] = (
            f"{cfg.head_learning_rate_or_default:g} is far above what works for a new "
            f"head (usually 1e-4..{WARN_HEAD_LR_ABOVE:g}); its logits may blow up"
        )
    scale = cfg.lora_alpha / cfg.lora_r
    if method == "lora" and not LORA_SCALE_RANGE[0] <= scale <= LORA_SCALE_RANGE[1]:
        found["lora_alpha"] = (
            f"lora_alpha / lora_r = {scale:g} multiplies every LoRA update (usually 1-2); outside "
            f"{LORA_SCALE_RANGE[0]:g}..{LORA_SCALE_RANGE[1]:g} it acts like a far "
            f"{'larger' if scale > 1 else 'smaller'} learning rate"
        )
    duration = _duration_warning(cfg, num_examples, model_type, gpus, cpu_cores)
    if duration:
        found["max_steps" if cfg.max_steps > 0 else "num_train_epochs"] = duration
    return found


def _duration_warning(
    cfg: TrainConfig, num_examples: int, model_type: Optional[str], gpus: int, cpu_cores: int
) -> Optional[str]:
    """A warning when training alone would take over WARN_LONGER_THAN_S (evaluation not counted)."""
    device = "gpu" if gpus else "cpu"
    cost = SECONDS_PER_EXAMPLE[device].get(model_type or "")
    if cost is None:
        return None
    if cfg.max_steps > 0:
        examples = cfg.max_steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * max(gpus, 1)
    else:
        held_out = 0 if cfg.validation_file else cfg.validation_split_percentage / 100
        train_examples = num_examples * (1 - held_out)
        batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * max(gpus, 1)
        examples = cfg.epochs_for(math.ceil(train_examples / batch)) * train_examples
    seconds = examples * cost / (gpus or max(cpu_cores, 1))
    if seconds <= WARN_LONGER_THAN_S:
        return None
    count, unit = (gpus, "GPU") if gpus else (cpu_cores, "CPU core")
    where = f"{count} {unit}{'s' if count > 1 else ''}"
    return (
        f"training may take about {seconds / 3600:.1f} h on {where} (a rough estimate: {examples:,.0f} examples "
        f"at ~{cost:g} {'s' if gpus else 'CPU-s'} each for {model_type}); fewer epochs, a max_steps limit"
        f"{'' if gpus else ' or a GPU'} make it shorter"
    )
