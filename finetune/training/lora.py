"""Choosing what to train: LoRA targets discovered from the model, new heads, BatchNorm statistics; the LoRA
variants (DoRA, rsLoRA, PiSSA/OLoRA starts, 4-bit QLoRA bases) and what each one can adapt.

Nothing here knows a model family by name. Attention projections are the Linear/Conv1D layers that
live inside attention blocks; a layer name is only used as a target when every module of that name
is such a projection (GPT-2's ``c_proj`` also names an MLP layer, BERT's ``dense`` too). Models
without attention (ResNet) get their Conv2d layers adapted instead.
"""

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Iterable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from finetune.errors import UserError
from finetune.training import speed

logger = logging.getLogger(__name__)

PROJECTION_TYPES = (nn.Linear, Conv1D)
NORM_WITH_STATISTICS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# lora_target_modules presets: each stands alone, in place of layer names.
ATTENTION, ALL_LINEAR = "attention", "all-linear"
# Starts that move the weights' principal part into the adapter (the base is changed at init): the trained adapter
# is saved as its difference from the initial one, an ordinary adapter of the original base.
BASE_CHANGING_INITS = ("pissa", "olora")


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


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
    candidates = {name: module for name, module in model.named_modules() if name and not _under(name, exclude)}
    in_attention, elsewhere = set(), set()
    for name, module in candidates.items():
        if isinstance(module, PROJECTION_TYPES):
            (in_attention if _inside_attention(model, name) else elsewhere).add(_leaf(name))
    targets = sorted(in_attention - elsewhere)
    if not targets:
        targets = sorted({_leaf(n) for n, m in candidates.items() if isinstance(m, nn.Conv2d)})
    if not targets:
        raise UserError(
            f"lora_target_modules: found no attention projection or Conv2d layer in {type(model).__name__}; "
            "set lora_target_modules to the names of the layers to adapt"
        )
    return targets


def discover_linear_targets(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Full names of every Linear/Conv1D layer of the backbone: not the new heads (``exclude``), not the task head or
    output embedding on top of the backbone (GPT-2's lm_head). Conv nets without such layers get their Conv2d layers."""
    backbone = getattr(model, "base_model", model)
    prefix = next((name for name, module in model.named_modules() if module is backbone), "")
    output = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, PROJECTION_TYPES)
        and module is not output
        and not _under(name, exclude)
        and (not prefix or _under(name, [prefix]))
    ]
    return targets or discover_lora_targets(model, exclude)


def resolve_targets(model: nn.Module, requested: list[str] | None, exclude: list[str]) -> list[str]:
    """PEFT target_modules for lora_target_modules: a preset (attention, the default; all-linear) or layer names."""
    if not requested or requested == [ATTENTION]:
        return discover_lora_targets(model, exclude)
    if requested == [ALL_LINEAR]:
        return discover_linear_targets(model, exclude)
    if ATTENTION in requested or ALL_LINEAR in requested:
        raise UserError(
            f"lora_target_modules: {ATTENTION} and {ALL_LINEAR} stand alone; give one of them, or layer "
            f"names only, not {requested}"
        )
    present = {_leaf(name) for name, _ in model.named_modules()}
    unknown = [t for t in requested if _leaf(t) not in present]
    if unknown:
        raise UserError(
            f"lora_target_modules: {unknown} not found in {type(model).__name__}; "
            f"discovered attention targets are {discover_lora_targets(model, exclude=exclude)}"
        )
    return requested


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


def apply_lora(
    model: PreTrainedModel,
    r: int,
    alpha: float,
    dropout: float,
    targets: list[str] | None,
    modules_to_save: list[str],
    *,
    use_dora: bool = False,
    use_rslora: bool = False,
    init_lora_weights: str = "default",
) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; ``modules_to_save`` are trained fully and saved in the adapter."""
    targets = resolve_targets(model, targets, modules_to_save)
    adapted = _adapted_modules(model, targets, modules_to_save)
    if not adapted:
        raise UserError(
            f"lora_target_modules: {targets} match no layer of {type(model).__name__} outside the new "
            f"heads {modules_to_save}; name the layers to adapt"
        )
    _check_rank(model, adapted, r)
    _check_variant(model, adapted, use_dora, init_lora_weights)
    logger.info("LoRA targets: %s; trained and saved in full: %s", targets, modules_to_save)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=modules_to_save or None,
        use_dora=use_dora,
        use_rslora=use_rslora,
        init_lora_weights=True if init_lora_weights == "default" else init_lora_weights,
    )
    return get_peft_model(model, config)


def _adapted_modules(model: nn.Module, targets: list[str], exclude: list[str]) -> dict[str, nn.Module]:
    """The layers PEFT will adapt: named by a target, or ending in "." + a target (PEFT's own matching rule)."""
    return {
        name: module
        for name, module in model.named_modules()
        if any(name == t or name.endswith("." + t) for t in targets) and not _under(name, exclude)
    }


def _check_rank(model: nn.Module, adapted: dict[str, nn.Module], r: int) -> None:
    """Refuse a rank above what the smallest adapted layer can use, before PEFT allocates r x width matrices."""
    widths = [w for w in map(_smallest_side, adapted.values()) if w]
    if widths and r > min(widths):
        raise UserError(
            f"lora_r: {r} exceeds the smallest adapted layer's width ({min(widths)}) in "
            f"{type(model).__name__}; a useful rank is 4-64 and at most {min(widths)}"
        )


def _check_variant(model: nn.Module, adapted: dict[str, nn.Module], use_dora: bool, init: str) -> None:
    """Refuse the combinations PEFT cannot train or cannot save as an adapter of the original base."""
    kinds = {type(m).__name__ for m in adapted.values()}
    where = f"{type(model).__name__}'s adapted layers are {', '.join(sorted(kinds))}"
    if init in BASE_CHANGING_INITS and use_dora:
        raise UserError(
            f"use_dora: DoRA's magnitudes cannot be carried over from a {init} start to the original "
            "base; turn use_dora off or set init_lora_weights to default or gaussian"
        )
    if init in BASE_CHANGING_INITS and any(isinstance(m, nn.Conv2d) for m in adapted.values()):
        raise UserError(f"init_lora_weights: {init} decomposes linear weights and {where}; use default or gaussian")
    if init == "olora" and any(isinstance(m, Conv1D) for m in adapted.values()):
        raise UserError(f"init_lora_weights: PEFT's olora does not handle Conv1D layers and {where}; use pissa")
    if getattr(model, "is_loaded_in_4bit", False) and init in BASE_CHANGING_INITS:
        raise UserError(
            f"init_lora_weights: {init} rewrites the base weights, which load_in_4bit has rounded to 4 "
            "bits; use default or gaussian with load_in_4bit"
        )
    if getattr(model, "is_loaded_in_4bit", False) and any(isinstance(m, nn.Conv2d) for m in adapted.values()):
        raise UserError(f"load_in_4bit: bitsandbytes quantizes linear layers only and {where}; turn load_in_4bit off")


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


def save_initial_adapter(model: PeftModel, path: Path) -> None:
    """The adapter as PiSSA/OLoRA initialised it, saved as plain LoRA (so that loading it does not decompose the
    base again): what ``save_as_original_base_adapter`` subtracts from the trained one."""
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(path)
    finally:
        config.init_lora_weights = init


def save_as_original_base_adapter(model: PeftModel, adapter_dir: Path, initial_dir: Path) -> None:
    """Save a PiSSA/OLoRA adapter as an ordinary adapter of the original base: PEFT writes the update B·A - B0·A0 as
    rank 2r LoRA matrices, but keeps only those, so the modules saved in full (heads, BatchNorm) are added back."""
    whole = get_peft_model_state_dict(model)
    with warnings.catch_warnings():
        # PEFT loads the initial adapter beside the trained one to subtract it, and warns against just that.
        warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
        model.save_pretrained(adapter_dir, path_initial_model_for_weight_conversion=str(initial_dir))
    weights = Path(adapter_dir) / SAFETENSORS_WEIGHTS_NAME
    converted = load_file(weights)
    converted.update({name: t.contiguous() for name, t in whole.items() if name not in converted})
    save_file(converted, weights, metadata={"format": "pt"})


def four_bit_loading() -> dict:
    """from_pretrained arguments of a QLoRA base: NF4 weights with double quantization (~0.5 byte per weight),
    computing in bf16 where the GPU has it, else fp16. The quantizer places the model on this process's GPU."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if speed.gpu_has_native_bf16() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    }


def check_four_bit_possible(cuda: bool, sharded: bool) -> None:
    """Refuse load_in_4bit before any model loads where bitsandbytes' 4-bit kernels cannot run, or under FSDP or
    DeepSpeed (``sharded``), which would flatten and shard the packed 4-bit weights as if they were parameters."""
    if sharded:
        raise UserError(
            "load_in_4bit: QLoRA runs on one GPU or with DDP (the single_gpu or multi_gpu setup); FSDP and DeepSpeed "
            "shard weights, which 4-bit packed weights cannot be"
        )
    if not cuda:
        raise UserError(
            "load_in_4bit: QLoRA needs a CUDA GPU (bitsandbytes 4-bit kernels) and this machine has none; "
            "turn it off, and to save memory use gradient_checkpointing or a smaller "
            "per_device_train_batch_size"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "load_in_4bit: QLoRA needs the bitsandbytes package, which is not installed: "
            "pip install bitsandbytes (or, in a checkout, pip install -e '.[qlora]')"
        )
