"""Loading a finished run for prediction: base checkpoint + adapter (or the fully fine-tuned model)."""

from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.rundir import RunDirectory


def load_trained(run_dir: str | Path) -> tuple[Any, Any, dict]:
    """(model in eval mode, tokenizer or image processor, lora_lab.json info) of a finished run."""
    from peft import PeftModel

    from finetune.tasks import get_task

    run = RunDirectory(run_dir)
    adapter_dir, info = run.adapter_dir, run.read_adapter_info()
    if not info:
        raise UserError(f"run: {run_dir} has no trained model ({run.adapter_info_path} missing); is the run finished?")
    task = get_task(info["task"])
    processor = task.load_processor(str(adapter_dir))
    if info["finetune_method"] == "full":
        model = task.auto_model_class.from_pretrained(adapter_dir)
    else:
        base, _ = task.load_model(info["base_model"], info["labels"], processor)
        model = PeftModel.from_pretrained(base, adapter_dir)
    return model.eval(), processor, info
