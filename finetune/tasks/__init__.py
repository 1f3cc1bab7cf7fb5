"""One module per task; this package picks the task for a config and checks the checkpoint's kind.

Which module and class implement a task, and which checkpoints train it, are read from finetune.task_kinds.
"""

import importlib

from transformers import AutoConfig, PretrainedConfig

from finetune.errors import UserError
from finetune.task_kinds import DEFAULT_TASK, TASKS, tasks_for


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
        raise UserError(
            f"model_name_or_path: {model_name_or_path!r} is a {model_type!r} checkpoint; "
            f"supported kinds are {', '.join(DEFAULT_TASK)}"
        )
    task = task or DEFAULT_TASK[model_type]
    if task not in tasks_for(model_type):
        raise UserError(
            f"task: {task} is not available for {model_type} checkpoints; use one of {tasks_for(model_type)}"
        )
    return task


def get_task(name: str):
    """The task object for ``name``, imported lazily (each module pulls in its own processors).

    The module name comes from our own table (TaskKind.module), never from user input.
    """
    if name not in TASKS:
        raise UserError(f"task: unknown task {name!r}; expected one of {', '.join(TASKS)}")
    kind = TASKS[name]
    module = importlib.import_module(f"finetune.tasks.{kind.module}")
    return getattr(module, kind.task_class)()
