"""The one typed configuration of a fine-tuning run, shared by YAML files, the command line and the web app.

Field names follow transformers' example scripts. Every field carries its help text in
``metadata["help"]``: the CLI's ``--help``, the web form and the commented YAMLs all read it from here.
Values may arrive as strings (command line, YAML scalars like ``2e-4``); ``TrainConfig.from_dict``
coerces them to the annotated types and reports every problem at once, before any model loads.
"""

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from finetune.checks import value_problems
from finetune.coercion import coerce, read_yaml
from finetune.errors import ConfigError, Problem
from finetune.rundir import write_text_atomic
from finetune.task_kinds import DEFAULT_TASK, TASKS

SchedulerName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]

# Learning rates when none is given. LoRA adapters start at zero and need a larger step than
# full fine-tuning; a freshly initialised classification head needs a larger one still.
DEFAULT_LORA_LR = 2e-4
DEFAULT_FULL_LR = 2e-5
DEFAULT_HEAD_LR = 2e-3
# Default length of a run: LoRA fine-tuning of these models reaches its plateau in about 1,000 optimizer steps
# (MiniLM on 2,700 tweets: eval accuracy 0.72 at step 680, 0.74 from step 850 on; docs/benchmarks.md). Large data
# sets get one epoch, small ones up to ten (the best evaluation's weights are kept, so extra epochs cost time only).
TARGET_STEPS, MIN_EPOCHS, MAX_EPOCHS = 1000, 1, 10
# Who may set each field on a shared app (webapp/services/gate.py applies it at the launch of every run):
USER = "user"  # any valid value
PATH = "path"  # a path or hub id the app offers: this user's upload or run, a demo checkpoint, a hub id
BOUND = "bound"  # a size that protects the server: the operator's ceiling, which a user may lower only
APP = "app"  # chosen by the app alone (where a run writes, caches and resumes from)
POLICIES = (USER, PATH, BOUND, APP)


def _help(policy: str, text: str, **kwargs) -> Any:
    return field(metadata={"help": text, "policy": policy}, **kwargs)


def _task_help() -> str:
    """The task field's help, written from the task table so that a new task kind appears in --help and the form."""
    types_by_task: dict[str, list[str]] = {}
    for model_type, task in DEFAULT_TASK.items():
        types_by_task.setdefault(task, []).append(model_type)
    defaults = ", ".join(f"{'/'.join(types)}: {task}" for task, types in types_by_task.items())
    return f"What to train: {', '.join(TASKS)}. Inferred from the checkpoint's model_type when absent ({defaults})."


@dataclass
class TrainConfig:
    """A fine-tuning run: which checkpoint, which data, how to train it, where to write it."""

    model_name_or_path: str = _help(PATH, "Hub id (e.g. gpt2, bert-base-uncased) or local path of the base checkpoint.")
    train_file: str = _help(
        PATH,
        "Training data: .txt/.csv/.jsonl for text; an image folder, .zip, or .csv/.jsonl of image paths for images.",
    )
    output_dir: str = _help(APP, "Run directory to write: config, status, events, metrics, adapter and checkpoints.")
    task: Optional[str] = _help(USER, _task_help(), default=None)
    validation_file: Optional[str] = _help(
        PATH, "Evaluation data in the same format; split off train_file when absent.", default=None
    )
    test_file: Optional[str] = _help(
        PATH,
        "Test data in the same format, never trained or selected on: the base and the fine-tuned model are scored on "
        "it once (metrics.json's test section).",
        default=None,
    )
    validation_split_percentage: float = _help(
        USER, "Percent of train_file held out for evaluation when no validation_file is given.", default=10.0
    )
    text_column: Optional[str] = _help(
        USER, "Column holding the text; guessed from the data when absent.", default=None
    )
    label_column: Optional[str] = _help(USER, "Column holding the class label; guessed when absent.", default=None)
    image_column: Optional[str] = _help(
        USER, "Column holding image file paths (csv/jsonl image data); guessed when absent.", default=None
    )
    num_train_epochs: Optional[float] = _help(
        BOUND,
        f"Passes over the training data (ignored when max_steps > 0). Default: enough for about {TARGET_STEPS:,}"
        f" optimizer steps, at least {MIN_EPOCHS} and at most {MAX_EPOCHS} epochs.",
        default=None,
    )
    max_steps: int = _help(BOUND, "Total optimizer steps; overrides num_train_epochs when > 0.", default=-1)
    per_device_train_batch_size: int = _help(BOUND, "Training examples per device per forward pass.", default=8)
    per_device_eval_batch_size: int = _help(BOUND, "Evaluation examples per device per forward pass.", default=16)
    learning_rate: Optional[float] = _help(
        USER,
        f"Peak learning rate. Default: {DEFAULT_LORA_LR} for LoRA, {DEFAULT_FULL_LR} for full fine-tuning.",
        default=None,
    )
    head_learning_rate: Optional[float] = _help(
        USER,
        f"Peak learning rate of a newly initialised classification head. Default: {DEFAULT_HEAD_LR} with LoRA,"
        " learning_rate with full fine-tuning.",
        default=None,
    )
    weight_decay: float = _help(USER, "AdamW weight decay (not applied to biases and norms).", default=0.0)
    warmup_ratio: float = _help(
        USER, "Fraction of training steps spent warming the learning rate up from 0.", default=0.1
    )
    lr_scheduler_type: SchedulerName = _help(USER, "Learning-rate schedule after warmup.", default="linear")
    gradient_accumulation_steps: int = _help(BOUND, "Forward passes accumulated per optimizer step.", default=1)
    max_grad_norm: float = _help(USER, "Gradient clipping norm; 0 disables clipping.", default=1.0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _help(
        USER,
        "auto: bf16 on GPUs that have it, fp16 on older GPUs, bf16 autocast on CPUs with native bf16 (AVX512-BF16,"
        " AMX), else fp32 (no). Weights stay fp32 either way.",
        default="auto",
    )
    group_by_length: bool = _help(
        USER,
        "Text classification: batch texts of similar length together (shuffled by seed and epoch), so batches carry"
        " little padding.",
        default=True,
    )
    dataloader_num_workers: Optional[int] = _help(
        BOUND,
        "Processes preparing batches; default: 0 on CPU, up to 4 per GPU for image tasks (decoding beside training).",
        default=None,
    )
    torch_compile: bool = _help(
        USER, "Compile the model with torch.compile (inductor): faster steps after a warm-up.", default=False
    )
    gradient_checkpointing: bool = _help(
        USER,
        "Recompute activations in the backward pass: much less memory for ~30% more compute (not for ResNet).",
        default=False,
    )
    seed: int = _help(USER, "Random seed for data split, shuffling, head initialisation and dropout.", default=42)
    logging_steps: int = _help(USER, "Write a train event every this many optimizer steps.", default=10)
    eval_steps: Optional[int] = _help(
        USER, "Evaluate every this many optimizer steps; default once per epoch.", default=None
    )
    save_steps: Optional[int] = _help(
        USER, "Save a resumable checkpoint every this many steps; default once per epoch.", default=None
    )
    save_minutes: Optional[float] = _help(
        USER,
        "Also save a checkpoint once this many minutes of training have passed since the last one, so that a crash"
        " loses at most that much whatever the epoch length; only by steps when absent.",
        default=10.0,
    )
    save_total_limit: Optional[int] = _help(
        BOUND, "Keep at most this many checkpoints (oldest deleted); all when absent.", default=2
    )
    max_seq_length: Optional[int] = _help(
        BOUND,
        "Token length for text classification; default: the longest example (95th percentile), capped at the"
        " model's limit.",
        default=None,
    )
    block_size: Optional[int] = _help(
        BOUND,
        "Token block length for causal LM; default: the model's context, capped at 512 and at what the data fills.",
        default=None,
    )
    finetune_method: Literal["lora", "full"] = _help(
        USER, "lora trains a small adapter; full trains every weight.", default="lora"
    )
    lora_r: int = _help(USER, "LoRA rank: size of the low-rank update.", default=16)
    lora_alpha: float = _help(USER, "LoRA scaling numerator (update is scaled by alpha / r).", default=32.0)
    lora_dropout: float = _help(USER, "Dropout on the LoRA input.", default=0.05)
    lora_target_modules: Optional[list[str]] = _help(
        USER,
        "Layers to adapt: attention (the attention projections, discovered from the model; the default when absent),"
        " all-linear (every linear layer but the output head; convolutions for conv nets), or module names"
        " (e.g. c_attn or query,value).",
        default=None,
    )
    use_dora: bool = _help(
        USER,
        "DoRA: split each adapted weight into magnitude and direction and train both; often better than LoRA at the"
        " same rank, ~2x slower steps.",
        default=False,
    )
    use_rslora: bool = _help(
        USER,
        "rsLoRA: scale updates by lora_alpha / sqrt(lora_r) instead of / lora_r, so high ranks keep learning.",
        default=False,
    )
    init_lora_weights: Literal["default", "gaussian", "pissa", "olora"] = _help(
        USER,
        "How adapters start: default (B = 0, A random: the model is unchanged at step 0), gaussian, pissa (from the"
        " weight's principal singular vectors) or olora (orthonormal QR); pissa/olora converge faster and are saved"
        " as ordinary LoRA adapters of the original base.",
        default="default",
    )
    loraplus_lr_ratio: Optional[float] = _help(
        USER,
        "LoRA+: train the B matrices at this multiple of the learning rate (e.g. 16); off when absent.",
        default=None,
    )
    load_in_4bit: bool = _help(
        USER,
        "QLoRA: load the frozen base weights in 4-bit NF4 (bitsandbytes) to fit larger models; CUDA GPUs only.",
        default=False,
    )
    resume_from_checkpoint: Optional[Union[bool, str]] = _help(
        APP, "Checkpoint directory to resume from, or true for the latest one in output_dir/checkpoints.", default=None
    )
    early_stopping_patience: Optional[int] = _help(
        USER, "Stop after this many evaluations without a better eval loss; never when absent.", default=None
    )
    load_best_model_at_end: bool = _help(
        USER,
        "Keep the weights of the best evaluation (lowest eval loss) as the result when later ones scored worse.",
        default=True,
    )
    max_eval_samples: Optional[int] = _help(
        BOUND,
        "Evaluate on at most this many examples (drawn with seed), so evaluation never dominates a run;"
        " all when absent.",
        default=2000,
    )
    report_to: Literal["none", "tensorboard", "mlflow"] = _help(
        USER,
        "Also log to TensorBoard (output_dir/tracking) or MLflow (MLFLOW_TRACKING_URI, else output_dir/tracking);"
        " events.jsonl is written either way.",
        default="none",
    )
    experiment_name: Optional[str] = _help(
        USER, "The experiment (a sweep) this run belongs to; the web app groups an experiment's runs.", default=None
    )
    data_cache_dir: Optional[str] = _help(
        APP,
        "Folder where .zip data archives are unpacked, once per archive content; default ~/.cache/lora-lab/unpacked.",
        default=None,
    )
    max_unpacked_mb: int = _help(BOUND, "Largest total size (MiB) a .zip data archive may unpack to.", default=2048)
    max_compression_ratio: float = _help(
        BOUND,
        "Largest unpacked/packed size ratio of a member of a .zip data archive (refuses zip bombs).",
        default=100.0,
    )
    max_archive_members: int = _help(
        BOUND,
        "Most files and folders a .zip data archive may hold (each one costs the loader time and the disk an inode).",
        default=200_000,
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[Problem]:
        """Every invalid value, one problem each (empty when the config is valid): finetune/checks.py."""
        return value_problems(self)

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
        problems = [Problem(key, "unknown setting (known settings: see --help)") for key in values if key not in hints]
        coerced = {}
        for key, raw in values.items():
            if key in hints:
                try:
                    coerced[key] = coerce(raw, hints[key])
                except ValueError as err:
                    problems.append(Problem(key, str(err)))
        missing = [
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in coerced
        ]
        problems += [Problem(name, "required, got nothing") for name in missing]
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


def _value_problems(cls: type, values: dict[str, Any]) -> list[Problem]:
    try:
        cls(**values)
    except ConfigError as err:
        return err.problems
    return []


def field_policies() -> dict[str, str]:
    """Who may set each field on a shared app (USER, PATH, BOUND or APP), by name."""
    return {f.name: f.metadata["policy"] for f in dataclasses.fields(TrainConfig)}


def field_help() -> dict[str, str]:
    """Help text of every field, by name."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def parse_args(argv: Optional[list[str]] = None, description: Optional[str] = None) -> TrainConfig:
    """The command line's config: --config YAML plus --key value overrides, all validated together."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of settings (see configs/)")
    for name, text in field_help().items():
        parser.add_argument(f"--{name}", default=argparse.SUPPRESS, help=text.replace("%", "%%"))  # argparse formats %
    args, unknown = parser.parse_known_args(argv)
    values = read_yaml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    problems = [Problem(flag, "unknown command-line argument") for flag in unknown if flag.startswith("--")]
    try:
        cfg = TrainConfig.from_dict(values)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg
