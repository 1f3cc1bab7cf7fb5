"""Components of the training recipe (finetune/train.py), each small enough to test on its own."""

import logging
import math
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedType
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from finetune import speed
from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.lora import (
    BASE_CHANGING_INITS,
    apply_lora,
    batchnorm_modules,
    save_as_original_base_adapter,
    save_initial_adapter,
)
from finetune.rundir import RunDirectory, read_json, write_json_atomic

logger = logging.getLogger(__name__)

# DoRA's magnitudes are weight norms: decaying them would shrink the layers.
NO_DECAY = ("bias", "norm", "ln_", "layernorm", "lora_magnitude_vector")
# FSDP and DeepSpeed shard the weights across processes.
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


@dataclass
class TrainerState:
    """What a checkpoint needs beyond accelerate's save_state: progress and early-stopping memory."""

    step: int = 0
    best_eval_loss: float = math.inf
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    base_metrics: dict = field(default_factory=dict)
    # Training time (s) and examples seen in earlier segments of a resumed run, so totals span every segment.
    runtime_seconds: float = 0.0
    samples: int = 0

    def record_eval(self, eval_loss: float) -> None:
        if eval_loss < self.best_eval_loss:
            self.best_eval_loss, self.best_step, self.evals_without_improvement = eval_loss, self.step, 0
        else:
            self.evals_without_improvement += 1


@dataclass(frozen=True)
class Plan:
    """How long the run is and when it evaluates and saves, in optimizer steps."""

    steps_per_epoch: int
    max_steps: int
    eval_steps: int
    save_steps: int

    @classmethod
    def for_run(cls, cfg: TrainConfig, batches_per_epoch: int) -> "Plan":
        """max_steps when given, else num_train_epochs (or enough epochs for the data, TrainConfig.epochs_for)."""
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
        max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs_for(steps_per_epoch) * steps_per_epoch)
        return cls(steps_per_epoch, max_steps, cfg.eval_steps or steps_per_epoch, cfg.save_steps or steps_per_epoch)

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.steps_per_epoch)

    def epoch(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    def logs(self, step: int, logging_steps: int) -> bool:
        return step % logging_steps == 0 or step == self.max_steps

    def evaluates(self, step: int) -> bool:
        return step % self.eval_steps == 0 or step == self.max_steps


class BestWeights:
    """The trained weights (LoRA, new heads, buffers; everything when fine-tuning fully) at the lowest eval loss so
    far, copied to CPU memory, so that a run whose evaluation got worse at the end keeps its best point."""

    def __init__(self, accelerator: Accelerator, enabled: bool):
        # FSDP and DeepSpeed shard the weights across processes: their copies would not load back as a whole.
        sharded = accelerator.distributed_type in SHARDED
        self.enabled, self.weights, self.metrics, self.step = enabled and not sharded, None, None, None

    def offer(self, model: nn.Module, state: TrainerState, metrics: dict) -> None:
        if self.enabled and state.best_step == state.step:
            self.weights = {name: t.detach().to("cpu", copy=True) for name, t in speed.trained_tensors(model).items()}
            self.metrics, self.step = metrics, state.step

    def restore(self, model: nn.Module, state: TrainerState) -> Optional[dict]:
        """Loads the best weights back when they are not the current ones; returns their eval metrics, or None."""
        if self.weights is None or self.step == state.step:
            if self.enabled and state.best_step not in (None, state.step):
                logger.info(
                    "The best eval loss was at step %s, before this run resumed; its weights were not kept, "
                    "so the result is step %d",
                    state.best_step,
                    state.step,
                )
            return None
        model.load_state_dict(self.weights, strict=False)
        logger.info(
            "Restored the weights of step %d (eval loss %.4f), the best evaluation: the later ones up to "
            "step %d scored worse",
            self.step,
            self.metrics["eval_loss"],
            state.step,
        )
        return self.metrics

    def save_into(self, checkpoint: Path) -> None:
        """Part of a checkpoint: the best weights so far and their evaluation, so that a run resumed from it ends
        with the result an uninterrupted run would have (its best evaluation's weights), not its last step's."""
        if self.weights is not None:
            save_file({k: v.contiguous() for k, v in self.weights.items()}, str(checkpoint / BEST_WEIGHTS))
            write_json_atomic(checkpoint / BEST_INFO, {"step": self.step, "metrics": self.metrics})

    def load_from(self, checkpoint: Path) -> None:
        """The best weights a checkpoint holds (save_into), when it holds any."""
        info = read_json(checkpoint / BEST_INFO)
        if self.enabled and info is not None and (checkpoint / BEST_WEIGHTS).is_file():
            self.weights, self.metrics, self.step = (
                load_file(str(checkpoint / BEST_WEIGHTS)),
                info["metrics"],
                info["step"],
            )


def stop_early(state: TrainerState, patience: Optional[int], run: RunDirectory, is_main: bool) -> bool:
    """True when eval loss has not improved for ``patience`` evaluations; logged, and recorded in status.json
    (``stopped_early_at_step``) so a finished run short of its planned steps is not read as stalled."""
    if not patience or state.evals_without_improvement < patience:
        return False
    logger.info("Early stopping at step %d: eval loss has not improved for %d evaluations", state.step, patience)
    if is_main:
        run.update_status(stopped_early_at_step=state.step)
    return True


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
BEST_WEIGHTS, BEST_INFO = "best_weights.safetensors", "best_weights.json"  # in a checkpoint: BestWeights.save_into
STOP_CHECK_STEPS = 10  # optimizer steps between the processes' agreements on a stop (a cancel waits that long)


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks at step boundaries, so a cancel saves a checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        logger.warning("Received %s: stopping at the next step boundary", signal.Signals(signum).name)
        self.requested = True

    def agreed(self, accelerator: Accelerator, step: int, save_due: bool = False) -> tuple[bool, bool]:
        """(stop, save a checkpoint), the same on every process once any process was signalled or found its time
        for a checkpoint come (they must stop and save at the same step). Several processes agree every
        STOP_CHECK_STEPS optimizer steps: each agreement is an all-reduce whose result the CPU waits for, which would
        stall a GPU's queue of work at every step."""
        if accelerator.num_processes == 1:
            return self.requested, save_due
        if step % STOP_CHECK_STEPS:
            return False, False
        flags = torch.tensor([float(self.requested), float(save_due)], device=accelerator.device)
        stop, save = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
        return stop, save


def prepare_model(model: nn.Module, cfg: TrainConfig, new_heads: list[str]) -> nn.Module:
    """LoRA-wrap the model (heads and BatchNorm layers saved in full), or leave every weight trainable."""
    if cfg.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise UserError(
                f"gradient_checkpointing: {type(model).__name__} does not support it; turn it off and "
                "lower per_device_train_batch_size to save memory instead"
            )
        # Non-reentrant checkpointing: gradients reach LoRA weights even though the frozen inputs need none.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.finetune_method == "full":
        return model
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Freezes the 4-bit base and casts the layers bitsandbytes left in 16 bits (norms, embeddings, heads) to fp32
        # for stable updates; checkpointing was set up above, as for any run.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # BatchNorm running statistics change during training but are not LoRA weights: save them whole
    # so a reloaded adapter predicts exactly as the model did at the end of training.
    return apply_lora(
        model,
        cfg.lora_r,
        cfg.lora_alpha,
        cfg.lora_dropout,
        cfg.lora_target_modules,
        modules_to_save=new_heads + batchnorm_modules(model),
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=cfg.init_lora_weights,
    )


def keep_initial_adapter(model: nn.Module, cfg: TrainConfig, run: RunDirectory, accelerator: Accelerator) -> None:
    """PiSSA/OLoRA change the base weights at init: save the initial adapter, from which the result is converted to
    an adapter of the original base. Saved at every start, fresh or resumed, before any checkpoint loads: the start is
    a deterministic decomposition of the base, so a resumed run writes the adapter its own base was reduced by."""
    if cfg.finetune_method != "lora" or cfg.init_lora_weights not in BASE_CHANGING_INITS:
        return
    if accelerator.distributed_type in SHARDED:
        raise UserError(
            f"init_lora_weights: {cfg.init_lora_weights} is converted to a plain adapter at the end, which "
            "needs the whole model in one process; use a single-GPU or DDP preset, or default/gaussian"
        )
    if accelerator.is_main_process:
        save_initial_adapter(model, run.initial_adapter_dir)
    accelerator.wait_for_everyone()


def learning_rate_of(name: str, cfg: TrainConfig, new_heads: list[str]) -> float:
    """A new head's own learning rate; LoRA+ (loraplus_lr_ratio): the B matrices at that multiple of the rest's."""
    if any(f"{head}." in name for head in new_heads):
        return cfg.head_learning_rate_or_default
    if cfg.loraplus_lr_ratio and ".lora_B." in name:
        return cfg.learning_rate_or_default * cfg.loraplus_lr_ratio
    return cfg.learning_rate_or_default


def build_optimizer(model: nn.Module, cfg: TrainConfig, new_heads: list[str]) -> torch.optim.AdamW:
    """AdamW with the learning rates of ``learning_rate_of`` and no weight decay on biases and norms."""
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if any(marker in name.lower() for marker in NO_DECAY) else cfg.weight_decay
        groups.setdefault((learning_rate_of(name, cfg, new_heads), decay), []).append(param)
    if not groups:
        raise UserError("finetune_method: no trainable parameters; check lora_target_modules")
    # The fused kernel updates every tensor in one launch: fewer kernel launches per step on a GPU.
    return torch.optim.AdamW(
        [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
        fused=True if speed.uses_cuda() else None,
    )


def engine_batch(batch: dict, accelerator: Accelerator) -> dict:
    """``batch`` as the model's engine takes it. DeepSpeed casts the model's weights to bf16 or fp16 itself, with no
    autocast around it, so floating-point inputs (images) are cast to match; elsewhere autocast does the casting."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.mixed_precision not in HALF:
        return batch
    dtype = HALF[accelerator.mixed_precision]
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def predict(model: nn.Module, dataloader, accelerator: Accelerator, task) -> dict[str, np.ndarray]:
    """The task's per-example outputs over a prepared dataloader, gathered from every process (the duplicates that
    pad the last batches dropped). The one evaluation path: training and evaluation.evaluate both score with it."""
    was_training = model.training
    model.eval()
    collected: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in dataloader:
            outputs = accelerator.gather_for_metrics(task.eval_step(model, engine_batch(batch, accelerator)))
            for key, value in outputs.items():
                collected.setdefault(key, []).append(value.cpu().numpy())
    model.train(was_training)
    return {key: np.concatenate(values) for key, values in collected.items()}


def evaluate(model: nn.Module, dataloader, accelerator: Accelerator, task, num_labels: Optional[int]) -> dict:
    """Metrics over the whole eval set (see ``predict``)."""
    return task.compute_metrics(predict(model, dataloader, accelerator, task), num_labels)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's count leaves out the frozen copies of saved modules."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def final_metrics(state: TrainerState, plan: Plan, result: dict, model: nn.Module, accelerator: Accelerator) -> dict:
    """metrics.json's summary of a finished run (the caller adds task, throughput and the adapter's step)."""
    trainable, total = count_parameters(accelerator.unwrap_model(model))
    return {
        "base": state.base_metrics,
        "finetuned": result,
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
