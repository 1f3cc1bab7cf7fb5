"""What each task is, in one table that imports nothing heavy (no torch, transformers or datasets).

Every module that needs a fact about a task (which checkpoints train it, which columns and upload types it
takes, its sample data, its main metric, its hub pipeline tag, how the playground shows it) reads it here.
The task classes in finetune/tasks/ keep only what needs torch: loading, encoding, the evaluation step.

Adding a task kind is one `TaskKind` entry below plus its module in finetune/tasks/ (docs/adding-a-task.md).
"""

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass(frozen=True)
class TaskKind:
    """The facts about one task that the engine, evaluation and the web app share."""

    name: str
    """The task's name in configs, run directories and the CLI (e.g. "causal-lm")."""
    module: str
    """finetune.tasks.<module>.<task_class> implements it (imported only when a run needs it)."""
    task_class: str
    """Class name of the torch-side implementation in ``module``."""
    auto_class: str
    """The transformers Auto class that loads a trained model of this task (model cards' usage snippets)."""
    families: tuple[str, ...]
    """model_type values of the checkpoints that can train this task."""
    columns: tuple[str, ...]
    """The data columns it needs, as roles: "text", "label", "image"."""
    uploads: tuple[str, ...]
    """File extensions an upload may have (without the dot)."""
    expected_upload: str
    """What an upload must hold, in words, for error messages and the upload widget."""
    sample: str
    """File (or folder) name of the built-in sample data for this task."""
    primary_metric: str
    """The metric that ranks runs (Compare, sweeps); see LOWER_IS_BETTER for its direction."""
    curve_metrics: tuple[str, ...]
    """Evaluation metrics the Runs page draws (one scale per chart)."""
    pipeline_tag: str
    """The Hugging Face hub pipeline tag of the trained model (model cards, pushes)."""
    playground: Literal["generate", "classify-text", "classify-image"]
    """How the playground tries the trained model."""
    unit: Literal["tokens", "images"]
    """What throughput counts: non-padding tokens of text, or images."""
    not_settings: frozenset[str] = frozenset()
    """TrainConfig fields that mean nothing for this task (hidden in the form)."""

    @property
    def title(self) -> str:
        return self.name.replace("-", " ")


TASKS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        TaskKind(
            name="causal-lm",
            module="causal_lm",
            task_class="CausalLMTask",
            auto_class="AutoModelForCausalLM",
            families=("gpt2",),
            columns=("text",),
            uploads=("txt", "csv", "jsonl", "json"),
            expected_upload="a .txt file (one document per line) or a .csv/.jsonl with a text column",
            sample="stories.txt",
            primary_metric="perplexity",
            curve_metrics=("perplexity",),
            pipeline_tag="text-generation",
            playground="generate",
            unit="tokens",
            not_settings=frozenset({"head_learning_rate", "max_seq_length", "group_by_length"}),
        ),
        TaskKind(
            name="text-classification",
            module="text_classification",
            task_class="TextClassificationTask",
            auto_class="AutoModelForSequenceClassification",
            families=("bert", "gpt2"),
            columns=("text", "label"),
            uploads=("csv", "jsonl", "json"),
            expected_upload="a .csv/.jsonl with a text column and a label column",
            sample="reviews.csv",
            primary_metric="accuracy",
            curve_metrics=("accuracy", "f1", "precision", "recall"),
            pipeline_tag="text-classification",
            playground="classify-text",
            unit="tokens",
            not_settings=frozenset({"block_size"}),
        ),
        TaskKind(
            name="image-classification",
            module="image_classification",
            task_class="ImageClassificationTask",
            auto_class="AutoModelForImageClassification",
            families=("vit", "resnet"),
            columns=("image", "label"),
            uploads=("zip",),
            expected_upload="a .zip holding one sub-folder of images per class",
            sample="digits",
            primary_metric="accuracy",
            curve_metrics=("accuracy", "f1", "precision", "recall"),
            pipeline_tag="image-classification",
            playground="classify-image",
            unit="images",
            not_settings=frozenset({"block_size", "max_seq_length", "group_by_length"}),
        ),
    )
}

# The model families LoRA Lab is built and tested for, with the task each one trains by default.
DEFAULT_TASK = {
    "gpt2": "causal-lm",
    "bert": "text-classification",
    "vit": "image-classification",
    "resnet": "image-classification",
}
# Metrics where smaller is better; every other score is better when larger.
LOWER_IS_BETTER = ("eval_loss", "perplexity")


def task_kind(name: str) -> TaskKind:
    """The facts of task ``name``; ValueError names the known tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def primary_metric(task: Optional[str], default: str = "eval_loss") -> str:
    """The metric that ranks runs of ``task`` (``default`` for a task this version does not know)."""
    return TASKS[task].primary_metric if task in TASKS else default


def tasks_for(model_type: str) -> list[str]:
    """The tasks a checkpoint of ``model_type`` can train, its default first."""
    default = DEFAULT_TASK.get(model_type)
    found = [name for name, kind in TASKS.items() if model_type in kind.families]
    return sorted(found, key=lambda name: name != default)
