"""What a finished run leaves behind: its final metrics, the tracker that writes events into the run directory, and
the saved adapter or model. Parts of the recipe (finetune/train.py).
"""

import resource
import time
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from torch import nn

from finetune.config import TrainConfig
from finetune.rundir import RunDirectory
from finetune.training import intervals
from finetune.training.engine import count_parameters
from finetune.training.lora import (
    BASE_CHANGING_INITS,
    save_as_original_base_adapter,
)
from finetune.training.progress import Plan, TrainerState


def final_metrics(
    state: TrainerState,
    plan: Plan,
    result: dict,
    model: nn.Module,
    accelerator: Accelerator,
    test_result: Optional[dict] = None,
) -> dict:
    """metrics.json's summary of a finished run (the caller adds task, throughput and the adapter's step); the
    test section only when the run has a test_file (``test_result``: the fine-tuned model's scores on it)."""
    trainable, total = count_parameters(accelerator.unwrap_model(model))
    return {
        "base": state.base_metrics,
        "finetuned": result,
        **({"test": {"base": state.base_test_metrics, "finetuned": test_result}} if test_result else {}),
        "best_step": state.best_step,
        "best_eval_loss": state.best_eval_loss,
        "steps": state.step,
        "total_steps": plan.max_steps,
        "stopped_early": state.step < plan.max_steps,  # a finished run falls short of its plan only by early stopping
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100 * trainable / total,
        "train_runtime_seconds": state.runtime_seconds,
        "train_samples_per_second": state.samples / state.runtime_seconds if state.runtime_seconds > 0 else None,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,  # what "auto" became on this machine
    }


def with_intervals(summary: dict, run: RunDirectory, adapter_step: int) -> dict:
    """``summary`` with the step whose weights the adapter holds and the bootstrap intervals of the scores: "intervals"
    on the validation split (the base model's pass at step 0 against ``adapter_step``'s, both kept in the run folder by
    engine.evaluate, whichever process ran them) and, with a test file, "test"'s own. The other evaluations'
    per-example results are removed, of no further use."""
    validation = run.examples_path("validation", 0), run.examples_path("validation", adapter_step)
    summary = {**summary, "adapter_step": adapter_step, **_intervals(run, *validation)}
    if "test" in summary:
        test = run.examples_path("test", "base"), run.examples_path("test", "finetuned")
        summary["test"] = {**summary["test"], **_intervals(run, *test)}
    for path in run.examples_dir.glob("validation_*.npz"):
        if path not in validation:
            path.unlink(missing_ok=True)
    return summary


def _intervals(run: RunDirectory, base: Path, finetuned: Path) -> dict:
    """{"intervals": ...} of the two passes' kept results; {} when the fine-tuned pass kept none (a run resumed from
    a version that kept none)."""
    tuned = run.read_examples(finetuned)
    return {"intervals": intervals.bootstrap(run.read_examples(base), tuned)} if tuned is not None else {}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RunDirectoryTracker(GeneralTracker):
    """An accelerate tracker that appends every ``accelerator.log`` call to events.jsonl.

    ``accelerator.log(values, step=..., log_kwargs={"run_directory": {"event": "eval"}})`` marks an
    evaluation; anything else is a train event.
    """

    name = "run_directory"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run: RunDirectory):
        super().__init__()
        self.run = run

    @property
    def tracker(self) -> RunDirectory:
        return self.run

    def store_init_configuration(self, values: dict) -> None:
        """config.yaml is written by the recipe itself; nothing more to store."""

    def log(self, values: dict, step: Optional[int] = None, event: str = "train", **kwargs) -> None:
        self.run.append_event({"event": event, "step": step, "time": time.time(), **values})


def save_artifacts(
    accelerator: Accelerator,
    model: nn.Module,
    processor,
    run: RunDirectory,
    cfg: TrainConfig,
    task: str,
    labels: Optional[list[str]],
    derived: dict,
) -> None:
    """The adapter (or full model) with its processor and label maps: everything inference needs."""
    # torch_compile: accelerate keeps the compiled wrapper by default, whose state_dict keys carry "_orig_mod.";
    # PEFT saves by the model's own names. The module it wraps (FSDP's or DDP's wrapper, or the model) is saved.
    model = getattr(model, "_orig_mod", model)
    unwrapped = accelerator.unwrap_model(model)
    if cfg.finetune_method == "lora" and cfg.init_lora_weights in BASE_CHANGING_INITS:
        # Never sharded (training.keep_initial_adapter): the main process holds every weight.
        if accelerator.is_main_process:
            save_as_original_base_adapter(unwrapped, run.adapter_dir, run.initial_adapter_dir)
    else:
        # Whole tensors even where FSDP or DeepSpeed shard them (the unwrapped model's own state_dict would hold
        # per-process shards of the weights FSDP's root unit owns, such as a classification head); every process
        # calls it.
        state_dict = accelerator.get_state_dict(model)
        unwrapped.save_pretrained(
            run.adapter_dir,
            state_dict=state_dict,
            is_main_process=accelerator.is_main_process,
            save_function=accelerator.save,
        )
    if accelerator.is_main_process:
        processor.save_pretrained(run.adapter_dir)
        run.write_adapter_info(
            {
                "task": task,
                "base_model": cfg.model_name_or_path,
                "finetune_method": cfg.finetune_method,
                "labels": labels,
                "id2label": dict(enumerate(labels)) if labels else None,
                "label2id": {name: i for i, name in enumerate(labels)} if labels else None,
                **derived,
            }
        )
