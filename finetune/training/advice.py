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
# Rough training cost of one example (forward + backward + step; LoRA r=16, batch 8, texts of EXAMPLE_TOKENS
# tokens, 224x224 images). CPU: CPU-seconds, measured with full-size random-init gpt2, bert-base, vit-base and
# resnet-50 on a 2-core x86 machine (wall time: this over the cores used). GPU: seconds, assumed for one
# data-centre GPU in fp32, where batch-8 steps take ~30-40 ms; not measured.
SECONDS_PER_EXAMPLE = {
    "cpu": {"gpt2": 2.0, "bert": 1.5, "vit": 1.6, "resnet": 1.4},
    "gpu": {"gpt2": 0.005, "bert": 0.004, "vit": 0.005, "resnet": 0.004},
}
EXAMPLE_TOKENS = 128
# A task trained on the text's volume (causal LM: blocks of tokens, not rows) counts its examples as the file's
# bytes over BYTES_PER_TOKEN x EXAMPLE_TOKENS: English in GPT-2's byte-level BPE runs ~4 bytes a token.
BYTES_PER_TOKEN = 4
# A run estimated to train longer than this (s) on the chosen device is warned about before launch, and Check's
# verdict says what to change: 30 min is past what a first try or a tuning round should cost.
WARN_LONGER_THAN_S = 1800


def warnings_for(
    cfg: TrainConfig,
    num_examples: int,
    model_type: Optional[str] = None,
    gpus: int = 0,
    cpu_cores: int = 1,
    text_bytes: Optional[int] = None,
    seconds_per_example: Optional[float] = None,
) -> dict[str, str]:
    """Settings of a valid ``cfg`` far outside what trains well, as {field: message}; nothing is refused.

    The duration warning takes estimated_training_seconds' arguments.
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
    seconds = estimated_training_seconds(
        cfg, num_examples, model_type, gpus, cpu_cores, text_bytes, seconds_per_example
    )
    duration = duration_warning(seconds, gpus, cpu_cores)
    if duration:
        found["max_steps" if cfg.max_steps > 0 else "num_train_epochs"] = duration
    return found


def estimated_training_seconds(
    cfg: TrainConfig,
    num_examples: int,
    model_type: Optional[str],
    gpus: int,
    cpu_cores: int,
    text_bytes: Optional[int] = None,
    seconds_per_example: Optional[float] = None,
) -> Optional[float]:
    """Rough seconds of training alone (evaluation not counted) for ``cfg`` on ``num_examples`` rows (``text_bytes``:
    the data file's size, which sets a causal LM's volume), or None when the model's cost is unknown.

    The cost of one example is ``seconds_per_example`` (CPU-seconds; e.g. measured for a small local checkpoint)
    or SECONDS_PER_EXAMPLE's for ``model_type`` on ``gpus`` GPUs, or ``cpu_cores`` cores when ``gpus`` is 0.
    """
    cost = seconds_per_example or SECONDS_PER_EXAMPLE["gpu" if gpus else "cpu"].get(model_type or "")
    if cost is None:
        return None
    return _trained_examples(cfg, num_examples, text_bytes, gpus) * cost / (gpus or max(cpu_cores, 1))


def _trained_examples(cfg: TrainConfig, num_examples: int, text_bytes: Optional[int], gpus: int) -> float:
    """Examples (of EXAMPLE_TOKENS tokens for a task trained on text volume) the whole run trains on."""
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * max(gpus, 1)
    if cfg.max_steps > 0:
        return cfg.max_steps * batch
    kind = TASKS[cfg.task] if cfg.task else None
    if kind and kind.columns == ("text",) and text_bytes:
        num_examples = math.ceil(text_bytes / BYTES_PER_TOKEN / EXAMPLE_TOKENS)
    held_out = 0 if cfg.validation_file else cfg.validation_split_percentage / 100
    train_examples = num_examples * (1 - held_out)
    return cfg.epochs_for(math.ceil(train_examples / batch)) * train_examples


def readable_duration(seconds: float) -> str:
    """ "59 s", "4 min 21 s", "3 h 29 min"."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def duration_warning(seconds: Optional[float], gpus: int, cpu_cores: int) -> Optional[str]:
    """What to change when a run's estimated ``seconds`` on ``gpus`` GPUs (or ``cpu_cores`` cores) pass
    WARN_LONGER_THAN_S; None when they do not."""
    if seconds is None or seconds <= WARN_LONGER_THAN_S:
        return None
    count, unit = (gpus, "GPU") if gpus else (cpu_cores, "CPU core")
    return (
        f"training may take about {readable_duration(seconds)} on {count} {unit}{'s' if count > 1 else ''} (a rough "
        f"estimate from the model and the data's size), over {WARN_LONGER_THAN_S // 60} min: fewer epochs, a "
        f"max_steps limit, a smaller sample of the data{'' if gpus else ' or a GPU'} make it shorter"
    )


def shorter_run_advice(
    cfg: TrainConfig, seconds: Optional[float], seconds_per_step: Optional[float], steps: int, on_gpu: bool
) -> list[str]:
    """Settings that bring a run measured at ``seconds`` in all (``seconds_per_step`` per step of ``steps``) within
    WARN_LONGER_THAN_S; [] when it is within already."""
    if seconds is None or seconds_per_step is None or seconds <= WARN_LONGER_THAN_S:
        return []
    fixed = seconds - steps * seconds_per_step  # set-up and evaluations
    fitting = max(1, int((WARN_LONGER_THAN_S - fixed) / seconds_per_step)) if fixed < WARN_LONGER_THAN_S else None
    advice = []
    if fitting:
        advice.append(f"max_steps = {fitting} (of {steps}): stops within {WARN_LONGER_THAN_S // 60} min")
    if cfg.max_steps <= 0 and cfg.num_train_epochs > 1:
        epoch = readable_duration(steps * seconds_per_step / cfg.num_train_epochs)
        advice.append(f"num_train_epochs below {cfg.num_train_epochs:g}: each epoch takes {epoch}")
    if fixed > 0.3 * seconds:
        advice.append(
            "fewer evaluations (a larger eval_steps) or a smaller max_eval_samples: they take "
            f"{readable_duration(fixed)} of it"
        )
    advice.append("a smaller sample of the data (fewer rows in the file)")
    if not on_gpu:
        advice.append("a GPU: the same run takes minutes there")
    return advice
