"""One module per task; this package picks the task for a config and checks the checkpoint's kind."""

from transformers import AutoConfig, PretrainedConfig

from finetune.config import DEFAULT_TASK, TASK_FAMILIES
from finetune.errors import UserError


def load_model_config(model_name_or_path: str) -> PretrainedConfig:
    """The checkpoint's config, or a UserError saying why it could not be read."""
    try:
        return AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"model_name_or_path: cannot load {model_name_or_path!r}; expected a hub id (e.g. gpt2, bert-base-uncased)"
            f" reachable from this machine or a local folder with config.json ({type(err).__name__}: {err})"
        ) from err


def resolve_task(model_config: PretrainedConfig, task: str | None, model_name_or_path: str) -> str:
    """The task to train: the given one if the checkpoint supports it, else the checkpoint's default."""
    model_type = model_config.model_type
    if model_type not in DEFAULT_TASK:
        raise UserError(f"model_name_or_path: {model_name_or_path!r} is a {model_type!r} checkpoint; "
                        f"supported kinds are {', '.join(DEFAULT_TASK)}")
    task = task or DEFAULT_TASK[model_type]
    if model_type not in TASK_FAMILIES[task]:
        raise UserError(f"task: {task} is not available for {model_type} checkpoints; "
                        f"use one of {[t for t, kinds in TASK_FAMILIES.items() if model_type in kinds]}")
    return task


def get_task(name: str):
    """The task object for ``name`` (imported lazily: each pulls in its own processors)."""
    if name == "causal-lm":
        from finetune.tasks.causal_lm import CausalLMTask
        return CausalLMTask()
    if name == "text-classification":
        from finetune.tasks.text_classification import TextClassificationTask
        return TextClassificationTask()
    if name == "image-classification":
        from finetune.tasks.image_classification import ImageClassificationTask
        return ImageClassificationTask()
    raise UserError(f"task: unknown task {name!r}")
