"""The one typed configuration of a fine-tuning run, shared by YAML files, the command line and the web app.

Field names follow transformers' example scripts. Every field carries its help text in
``metadata["help"]``: the CLI's ``--help``, the web form and the commented YAMLs all read it from here.
Values may arrive as strings (command line, YAML scalars like ``2e-4``); ``TrainConfig.from_dict``
coerces them to the annotated types and reports every problem at once, before any model loads.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from finetune.errors import ConfigError
from finetune.rundir import write_text_atomic

TaskName = Literal["causal-lm", "text-classification", "image-classification"]
SchedulerName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
TASKS = typing.get_args(TaskName)

# The model families LoRA Lab is built and tested for, with the task each one trains by default.
DEFAULT_TASK = {
    "gpt2": "causal-lm",
    "bert": "text-classification",
    "vit": "image-classification",
    "resnet": "image-classification",
}
TASK_FAMILIES = {
    "causal-lm": ("gpt2",),
    "text-classification": ("bert", "gpt2"),
    "image-classification": ("vit", "resnet"),
}

# Learning rates when none is given. LoRA adapters start at zero and need a larger step than
# full fine-tuning; a freshly initialised classification head needs a larger one still.
DEFAULT_LORA_LR = 2e-4
DEFAULT_FULL_LR = 2e-5
DEFAULT_HEAD_LR = 2e-3
# Default length of a run: LoRA fine-tuning of these models reaches its plateau in about 1,000 optimizer steps
# (MiniLM on 2,700 tweets: eval accuracy 0.72 at step 680, 0.74 from step 850 on; docs/benchmarks.md). Large data
# sets get one epoch, small ones up to ten (the best evaluation's weights are kept, so extra epochs cost time only).
TARGET_STEPS, MIN_EPOCHS, MAX_EPOCHS = 1000, 1, 10
# Sizes past these only exhaust memory or diverge (a learning rate of 50 collapses any run to one class);
# they are refused before a model loads. Model-specific limits (rank vs layer width, block size vs
# context) are checked once the model is known.
UPPER_BOUNDS = {"learning_rate": 1.0, "head_learning_rate": 1.0, "lora_r": 4096, "per_device_train_batch_size": 65536,
                "per_device_eval_batch_size": 65536, "gradient_accumulation_steps": 65536, "max_seq_length": 1_000_000,
                "block_size": 1_000_000, "num_train_epochs": 10_000, "lora_alpha": 1_000_000, "max_steps": 10_000_000,
                "eval_steps": 10_000_000, "save_steps": 10_000_000, "logging_steps": 10_000_000}


def _help(text: str, **kwargs) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """A fine-tuning run: which checkpoint, which data, how to train it, where to write it."""

    model_name_or_path: str = _help("Hub id (e.g. gpt2, bert-base-uncased) or local path of the base checkpoint.")
    train_file: str = _help(
        "Training data: .txt/.csv/.jsonl for text; an image folder, .zip, or .csv/.jsonl of image paths for images."
    )
    output_dir: str = _help("Run directory to write: config, status, events, metrics, adapter and checkpoints.")
    task: Optional[TaskName] = _help(
        "What to train. Inferred from the checkpoint when absent (GPT-2: causal-lm, BERT: text-classification,"
        " ViT/ResNet: image-classification).",
        default=None,
    )
    validation_file: Optional[str] = _help("Evaluation data in the same format; split off train_file when absent.", default=None)
    validation_split_percentage: float = _help(
        "Percent of train_file held out for evaluation when no validation_file is given.", default=10.0
    )
    text_column: Optional[str] = _help("Column holding the text; guessed from the data when absent.", default=None)
    label_column: Optional[str] = _help("Column holding the class label; guessed when absent.", default=None)
    image_column: Optional[str] = _help("Column holding image file paths (csv/jsonl image data); guessed when absent.", default=None)
    num_train_epochs: Optional[float] = _help(
        f"Passes over the training data (ignored when max_steps > 0). Default: enough for about {TARGET_STEPS:,}"
        f" optimizer steps, at least {MIN_EPOCHS} and at most {MAX_EPOCHS} epochs.",
        default=None,
    )
    max_steps: int = _help("Total optimizer steps; overrides num_train_epochs when > 0.", default=-1)
    per_device_train_batch_size: int = _help("Training examples per device per forward pass.", default=8)
    per_device_eval_batch_size: int = _help("Evaluation examples per device per forward pass.", default=16)
    learning_rate: Optional[float] = _help(
        f"Peak learning rate. Default: {DEFAULT_LORA_LR} for LoRA, {DEFAULT_FULL_LR} for full fine-tuning.", default=None
    )
    head_learning_rate: Optional[float] = _help(
        f"Peak learning rate of a newly initialised classification head. Default: {DEFAULT_HEAD_LR} with LoRA,"
        " learning_rate with full fine-tuning.",
        default=None,
    )
    weight_decay: float = _help("AdamW weight decay (not applied to biases and norms).", default=0.0)
    warmup_ratio: float = _help("Fraction of training steps spent warming the learning rate up from 0.", default=0.1)
    lr_scheduler_type: SchedulerName = _help("Learning-rate schedule after warmup.", default="linear")
    gradient_accumulation_steps: int = _help("Forward passes accumulated per optimizer step.", default=1)
    max_grad_norm: float = _help("Gradient clipping norm; 0 disables clipping.", default=1.0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _help(
        "auto: bf16 on GPUs that have it, fp16 on older GPUs, bf16 autocast on CPUs with native bf16 (AVX512-BF16,"
        " AMX), else fp32 (no). Weights stay fp32 either way.",
        default="auto",
    )
    group_by_length: bool = _help(
        "Text classification: batch texts of similar length together (shuffled by seed and epoch), so batches carry"
        " little padding.",
        default=True,
    )
    dataloader_num_workers: Optional[int] = _help(
        "Processes preparing batches; default: 0 on CPU, up to 4 per GPU for image tasks (decoding beside training).",
        default=None,
    )
    torch_compile: bool = _help("Compile the model with torch.compile (inductor): faster steps after a warm-up.",
                                default=False)
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass: much less memory for ~30% more compute (not for ResNet).",
        default=False,
    )
    seed: int = _help("Random seed for data split, shuffling, head initialisation and dropout.", default=42)
    logging_steps: int = _help("Write a train event every this many optimizer steps.", default=10)
    eval_steps: Optional[int] = _help("Evaluate every this many optimizer steps; default once per epoch.", default=None)
    save_steps: Optional[int] = _help("Save a resumable checkpoint every this many steps; default once per epoch.", default=None)
    save_total_limit: Optional[int] = _help("Keep at most this many checkpoints (oldest deleted); all when absent.", default=2)
    max_seq_length: Optional[int] = _help(
        "Token length for text classification; default: the longest example (95th percentile), capped at the model's limit.",
        default=None,
    )
    block_size: Optional[int] = _help(
        "Token block length for causal LM; default: the model's context, capped at 512 and at what the data fills.",
        default=None,
    )
    finetune_method: Literal["lora", "full"] = _help("lora trains a small adapter; full trains every weight.", default="lora")
    lora_r: int = _help("LoRA rank: size of the low-rank update.", default=16)
    lora_alpha: float = _help("LoRA scaling numerator (update is scaled by alpha / r).", default=32.0)
    lora_dropout: float = _help("Dropout on the LoRA input.", default=0.05)
    lora_target_modules: Optional[list[str]] = _help(
        "Module names to adapt (e.g. c_attn or query,value); discovered from the model when absent.", default=None
    )
    resume_from_checkpoint: Optional[Union[bool, str]] = _help(
        "Checkpoint directory to resume from, or true for the latest one in output_dir/checkpoints.", default=None
    )
    early_stopping_patience: Optional[int] = _help(
        "Stop after this many evaluations without a better eval loss; never when absent.", default=None
    )
    load_best_model_at_end: bool = _help(
        "Keep the weights of the best evaluation (lowest eval loss) as the result when later ones scored worse.",
        default=True,
    )
    max_eval_samples: Optional[int] = _help(
        "Evaluate on at most this many examples (drawn with seed), so evaluation never dominates a run;"
        " all when absent.",
        default=2000,
    )
    data_cache_dir: Optional[str] = _help(
        "Folder where .zip data archives are unpacked, once per archive content; default ~/.cache/lora-lab/unpacked.",
        default=None,
    )
    max_unpacked_mb: int = _help("Largest total size (MiB) a .zip data archive may unpack to.", default=2048)
    max_compression_ratio: float = _help(
        "Largest unpacked/packed size ratio of a member of a .zip data archive (refuses zip bombs).", default=100.0
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        """Every invalid value, one message each (empty when the config is valid)."""
        p = []
        for name in ("model_name_or_path", "train_file", "output_dir"):
            if not str(getattr(self, name) or "").strip():
                p.append(f"{name}: required, got nothing")
        positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "logging_steps", "lora_r", "eval_steps", "save_steps", "save_total_limit", "max_seq_length",
                    "block_size", "early_stopping_patience", "max_eval_samples", "max_unpacked_mb")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                p.append(f"{name}: must be a positive integer, got {value}")
        for name in ("learning_rate", "head_learning_rate", "num_train_epochs", "lora_alpha", "max_compression_ratio"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                p.append(f"{name}: must be a positive number, got {value}")
        for name, upper in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value > upper:
                p.append(f"{name}: {value:g} is beyond any useful value; expected at most {upper:g}")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                p.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name, upper in (("warmup_ratio", 1.0), ("lora_dropout", 1.0)):
            if not 0 <= getattr(self, name) < upper:
                p.append(f"{name}: must be in [0, {upper}), got {getattr(self, name)}")
        if self.dataloader_num_workers is not None and not 0 <= self.dataloader_num_workers <= 64:
            p.append(f"dataloader_num_workers: must be between 0 and 64, got {self.dataloader_num_workers}")
        if not 0 < self.validation_split_percentage < 100:
            p.append(f"validation_split_percentage: must be between 0 and 100, got {self.validation_split_percentage}")
        return p

    def epochs_for(self, steps_per_epoch: int) -> float:
        """num_train_epochs, or the default for data giving ``steps_per_epoch`` optimizer steps per epoch."""
        if self.num_train_epochs is not None:
            return self.num_train_epochs
        return float(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / max(steps_per_epoch, 1)))))

    @property
    def learning_rate_or_default(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LORA_LR if self.finetune_method == "lora" else DEFAULT_FULL_LR

    @property
    def head_learning_rate_or_default(self) -> float:
        if self.head_learning_rate is not None:
            return self.head_learning_rate
        return DEFAULT_HEAD_LR if self.finetune_method == "lora" else self.learning_rate_or_default

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from loosely typed values (YAML, CLI strings, form fields), listing every problem at once."""
        hints = typing.get_type_hints(cls)
        problems = [f"{key}: unknown setting (known settings: see --help)" for key in values if key not in hints]
        coerced = {}
        for key, raw in values.items():
            if key in hints:
                try:
                    coerced[key] = coerce(raw, hints[key])
                except ValueError as err:
                    problems.append(f"{key}: {err}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in coerced]
        problems += [f"{name}: required, got nothing" for name in missing]
        if problems:
            # Still validate what could be read, so the user sees every problem in one go.
            filled = {f.name: "x" for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
            problems += _value_problems(cls, {**filled, **coerced})
            raise ConfigError(problems)
        return cls(**coerced)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[dict[str, Any]] = None) -> "TrainConfig":
        return cls.from_dict({**read_yaml(path), **(overrides or {})})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        write_text_atomic(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def _value_problems(cls: type, values: dict[str, Any]) -> list[str]:
    try:
        cls(**values)
    except ConfigError as err:
        return err.problems
    return []


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"--config: file {path} does not exist; expected a YAML file of run settings"])
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"--config: {path} is not valid YAML ({err})"]) from err
    if not isinstance(values, dict):
        raise ConfigError([f"--config: {path} must hold a mapping of setting: value, got {type(values).__name__}"])
    return values


def field_help() -> dict[str, str]:
    """Help text of every field, by name."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


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
SECONDS_PER_EXAMPLE = {"cpu": {"gpt2": 2.0, "bert": 1.5, "vit": 1.6, "resnet": 1.4},
                       "gpu": {"gpt2": 0.005, "bert": 0.004, "vit": 0.005, "resnet": 0.004}}
WARN_LONGER_THAN_S = 3600


def warnings_for(cfg: TrainConfig, num_examples: int, model_type: Optional[str] = None, gpus: int = 0,
                 cpu_cores: int = 1) -> dict[str, str]:
    """Settings of a valid ``cfg`` far outside what trains well, as {field: message}; nothing is refused.

    The duration estimate needs ``model_type`` (a key of SECONDS_PER_EXAMPLE) and the device: ``gpus`` GPUs,
    or ``cpu_cores`` cores when ``gpus`` is 0.
    """
    found = {}
    lr, method = cfg.learning_rate_or_default, cfg.finetune_method
    if lr > WARN_LR_ABOVE[method]:
        kind = "LoRA" if method == "lora" else "full fine-tuning"
        found["learning_rate"] = (f"{lr:g} is far above what works for {kind} (usually 1e-5..{WARN_LR_ABOVE[method]:g}); "
                                  "the loss may diverge or every prediction collapse to one class")
    if cfg.task != "causal-lm" and cfg.head_learning_rate_or_default > WARN_HEAD_LR_ABOVE:
        found["head_learning_rate"] = (f"{cfg.head_learning_rate_or_default:g} is far above what works for a new "
                                       f"head (usually 1e-4..{WARN_HEAD_LR_ABOVE:g}); its logits may blow up")
    scale = cfg.lora_alpha / cfg.lora_r
    if method == "lora" and not LORA_SCALE_RANGE[0] <= scale <= LORA_SCALE_RANGE[1]:
        found["lora_alpha"] = (f"lora_alpha / lora_r = {scale:g} multiplies every LoRA update (usually 1-2); outside "
                               f"{LORA_SCALE_RANGE[0]:g}..{LORA_SCALE_RANGE[1]:g} it acts like a far "
                               f"{'larger' if scale > 1 else 'smaller'} learning rate")
    duration = _duration_warning(cfg, num_examples, model_type, gpus, cpu_cores)
    if duration:
        found["max_steps" if cfg.max_steps > 0 else "num_train_epochs"] = duration
    return found


def _duration_warning(cfg: TrainConfig, num_examples: int, model_type: Optional[str], gpus: int,
                      cpu_cores: int) -> Optional[str]:
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
    return (f"training may take about {seconds / 3600:.1f} h on {where} (a rough estimate: {examples:,.0f} examples "
            f"at ~{cost:g} {'s' if gpus else 'CPU-s'} each for {model_type}); fewer epochs, a max_steps limit"
            f"{'' if gpus else ' or a GPU'} make it shorter")


def coerce(raw: Any, annotation: Any) -> Any:
    """Convert ``raw`` to ``annotation`` (str, int, float, bool, Literal, list[str], Optional/Union of those)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null", "")):
            if type(None) in options:
                return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(raw, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(" or ".join(errors))
    if origin is Literal:
        choices = typing.get_args(annotation)
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {raw!r}")
        return raw
    if origin is list:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a list of names, got {raw!r}")
        return [str(item).strip() for item in items if str(item).strip()]
    return _coerce_scalar(raw, annotation)


def _coerce_scalar(raw: Any, annotation: type) -> Any:
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "yes", "1", "false", "no", "0"):
            return str(raw).lower() in ("true", "yes", "1")
        raise ValueError(f"expected true or false, got {raw!r}")
    if annotation is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"expected an integer, got {raw!r}")
        try:
            return int(float(raw)) if isinstance(raw, str) and "e" in raw.lower() else int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if annotation is float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
    if annotation is str:
        if isinstance(raw, (dict, list)):
            raise ValueError(f"expected text, got {raw!r}")
        return str(raw)
    raise TypeError(f"unsupported annotation {annotation}")
