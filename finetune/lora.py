"""Choosing what to train: LoRA targets discovered from the model, new heads, BatchNorm statistics.

Nothing here knows a model family by name. Attention projections are the Linear/Conv1D layers that
live inside attention blocks; a layer name is only used as a target when every module of that name
is such a projection (GPT-2's ``c_proj`` also names an MLP layer, BERT's ``dense`` too). Models
without attention (ResNet) get their Conv2d layers adapted instead.
"""

import logging
from typing import Iterable

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from finetune.errors import UserError

logger = logging.getLogger(__name__)

PROJECTION_TYPES = (nn.Linear, Conv1D)
NORM_WITH_STATISTICS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _inside_attention(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = model.get_submodule(".".join(parts[:depth]))
        if "attention" in type(parent).__name__.lower() or "attention" in parts[depth - 1].lower():
            return True
    return False


def discover_lora_targets(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Leaf names of the attention projections, or of all Conv2d layers for convolutional models."""
    exclude = tuple(exclude)
    candidates = {name: module for name, module in model.named_modules()
                  if name and not any(name == e or name.startswith(e + ".") for e in exclude)}
    in_attention, elsewhere = set(), set()
    for name, module in candidates.items():
        if isinstance(module, PROJECTION_TYPES):
            (in_attention if _inside_attention(model, name) else elsewhere).add(_leaf(name))
    targets = sorted(in_attention - elsewhere)
    if not targets:
        targets = sorted({_leaf(n) for n, m in candidates.items() if isinstance(m, nn.Conv2d)})
    if not targets:
        raise UserError(f"lora_target_modules: found no attention projection or Conv2d layer in {type(model).__name__}; "
                        "set lora_target_modules to the names of the layers to adapt")
    return targets


def batchnorm_modules(model: nn.Module) -> list[str]:
    """Full names of BatchNorm layers: their running statistics must be saved with the adapter."""
    return [name for name, module in model.named_modules() if isinstance(module, NORM_WITH_STATISTICS)]


def new_head_modules(model: nn.Module, missing_keys: Iterable[str]) -> list[str]:
    """Modules whose weights were missing from the checkpoint (freshly initialised heads, poolers)."""
    heads = set()
    for key in missing_keys:
        module_name = key.rsplit(".", 1)[0]
        # ResNet's head is Sequential(Flatten, Linear): save the whole Sequential.
        parent_name = module_name.rsplit(".", 1)[0] if "." in module_name else None
        if parent_name and isinstance(model.get_submodule(parent_name), nn.Sequential):
            module_name = parent_name
        heads.add(module_name)
    return sorted(heads)


def apply_lora(model: PreTrainedModel, r: int, alpha: float, dropout: float, targets: list[str] | None,
               modules_to_save: list[str]) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; ``modules_to_save`` are trained fully and saved in the adapter."""
    targets = targets or discover_lora_targets(model, exclude=modules_to_save)
    present = {_leaf(name) for name, _ in model.named_modules()}
    unknown = [t for t in targets if _leaf(t) not in present]
    if unknown:
        raise UserError(f"lora_target_modules: {unknown} not found in {type(model).__name__}; "
                        f"discovered attention targets are {discover_lora_targets(model, exclude=modules_to_save)}")
    _check_rank(model, targets, r)
    logger.info("LoRA targets: %s; trained and saved in full: %s", targets, modules_to_save)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=modules_to_save or None)
    return get_peft_model(model, config)



def _check_rank(model: nn.Module, targets: list[str], r: int) -> None:
    """Refuse a rank above what the smallest adapted layer can use, before PEFT allocates r x width matrices."""
    widths = [_smallest_side(m) for name, m in model.named_modules() if _leaf(name) in {_leaf(t) for t in targets}]
    widths = [w for w in widths if w]
    if widths and r > min(widths):
        raise UserError(f"lora_r: {r} exceeds the smallest adapted layer's width ({min(widths)}) in "
                        f"{type(model).__name__}; a useful rank is 4-64 and at most {min(widths)}")


def _smallest_side(module: nn.Module) -> int | None:
    """The smaller of a layer's input and output sizes (a Conv2d's input counts its kernel area)."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    if isinstance(module, Conv1D):
        return min(module.weight.shape)
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return min(module.in_channels * kernel // module.groups, module.out_channels)
    return None
