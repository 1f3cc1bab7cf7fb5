"""The model as the loop uses it: LoRA applied, the optimizer's parameter groups, batches as the engine expects them,
and the prediction and evaluation passes. Parts of the recipe (finetune/train.py).
"""

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from peft import PeftModel
from torch import nn

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.rundir import RunDirectory
from finetune.training import intervals, speed
from finetune.training.lora import (
    BASE_CHANGING_INITS,
    apply_lora,
    batchnorm_modules,
    save_initial_adapter,
)
from finetune.training.progress import SHARDED

# DoRA's magnitudes are weight norms: decaying them would shrink the layers.
NO_DECAY = ("bias", "norm", "ln_", "layernorm", "lora_magnitude_vector")


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def evaluate(
    model: nn.Module,
    dataloader,
    accelerator: Accelerator,
    task,
    num_labels: Optional[int],
    run: RunDirectory,
    keep: Path,
) -> dict:
    """Metrics over the whole eval set (see ``predict``). The main process keeps the pass's per-example results at
    ``keep`` (RunDirectory.examples_path): the final scores' bootstrap intervals resample them, even when the pass was
    in an earlier process of a resumed run."""
    gathered = predict(model, dataloader, accelerator, task)
    if accelerator.is_main_process:
        run.write_examples(keep, intervals.per_example(gathered))
    return task.compute_metrics(gathered, num_labels)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's count leaves out the frozen copies of saved modules."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())
