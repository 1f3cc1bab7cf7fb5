"""What makes a run fast on the hardware it gets: precision, batching, device flags, lean checkpoints.

Each choice here was measured on and off with ``python -m benchmarks.vs_trainer`` (docs/benchmarks.md).
"""

import ctypes
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from transformers.trainer_pt_utils import LengthGroupedSampler

from finetune.checks import c_compiler
from finetune.errors import UserError

logger = logging.getLogger(__name__)

# Data-loading processes per GPU process for image tasks (decoding and resizing off the training thread).
IMAGE_WORKERS_PER_GPU = 4
# CPU flags of native bf16 arithmetic (x86: AVX512-BF16, AMX; Arm: BF16). Without them bf16 is emulated and
# slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# glibc mallopt parameters (malloc.h): mmap is used for at most M_MMAP_MAX blocks at a time; free memory above
# M_TRIM_THRESHOLD bytes at the heap's top goes back to the system.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int: 2 GiB
# Narrowest model (hidden size) for which bf16 autocast beats fp32 on a CPU: MiniLM (384) gains 1.4x, the tiny
# demo models (32-64) lose.
CPU_BF16_MIN_WIDTH = 256


def uses_cuda() -> bool:
    """True when the run will train on a CUDA GPU (accelerate picks it unless told to use the CPU)."""
    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return torch.cuda.is_available() and not forced_cpu


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = {
        word
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for word in line.split(":", 1)[-1].split()
    }
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def model_width(model_config) -> int:
    """The model's hidden size (GPT-2 n_embd; ResNet its widest stage): what sets the size of its matmuls."""
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(model_config, name, None), int):
            return getattr(model_config, name)
    return max(getattr(model_config, "hidden_sizes", None) or [0])


def gpu_has_native_bf16() -> bool:
    """Whether this CUDA GPU computes bf16 in hardware (Ampere and later). T4 and V100, the cheap Space GPUs, only
    emulate it, slowly, and torch counts emulation as support unless asked not to: they train in fp16 instead."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_mixed_precision(setting: str, cuda: Optional[bool] = None, width: int = CPU_BF16_MIN_WIDTH) -> str:
    """``auto``: bf16 on GPUs that have it, fp16 on older ones; on CPU bf16 autocast when the CPU computes bf16
    natively and the model is wide enough for it to pay (1.5-2.6x the fp32 samples/s of real-size models on an
    AVX512-BF16 EPYC; 0.7-1.0x on models of width 32-64, whose steps are casts and overhead: docs/benchmarks.md)."""
    if setting != "auto":
        return setting
    if uses_cuda() if cuda is None else cuda:
        return "bf16" if gpu_has_native_bf16() else "fp16"
    if torch.backends.mps.is_available():
        return "no"  # autocast on Apple GPUs is not what accelerate drives
    return "bf16" if cpu_has_native_bf16() and width >= CPU_BF16_MIN_WIDTH else "no"


def store_frozen_weights_in_bf16(
    model: torch.nn.Module, mixed_precision: str, finetune_method: str, sharded: bool = False
) -> int:
    """Under bf16 autocast every matmul and convolution reads the frozen base weights as bf16 anyway: storing them
    so halves their memory and saves a cast per layer per step; LoRA's inputs are left in bf16 too (below). Trained
    weights (LoRA, heads, BatchNorm copies) stay fp32 for the optimizer. QLoRA bases are left as they are: their
    frozen weights are 4-bit already, and the layers kept in 16/32 bits stay as bitsandbytes and PEFT set them. Under
    FSDP or DeepSpeed (``sharded``) nothing is converted: FSDP flattens each wrapped unit into one tensor of one dtype,
    frozen and LoRA weights together, and DeepSpeed casts the model itself. Returns how many tensors were converted."""
    if mixed_precision != "bf16" or finetune_method != "lora" or getattr(model, "is_loaded_in_4bit", False) or sharded:
        return 0
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for param in frozen:
        param.data = param.data.to(torch.bfloat16)
    keep_lora_inputs_as_they_come(model)
    return len(frozen)


def keep_lora_inputs_as_they_come(model: torch.nn.Module) -> None:
    """PEFT copies a LoRA layer's bf16 input to fp32, its weights' dtype, and bf16 autocast casts that copy straight
    back for the matmul or convolution: under autocast the copy changes no result (x * dropout scale rounds to the
    same bf16 either way) and costs a pass over every LoRA input (ResNet-50, LoRA on its 53 convolutions: 100 MiB of
    peak memory, 1-2% of a step)."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


def check_compiler(torch_compile: bool) -> None:
    """torch_compile's inductor writes C++ (CPU) or Triton (GPU) kernels and builds them with the machine's C
    compiler; without one the run would fail at its first step. Refuse it before any model loads."""
    if torch_compile and c_compiler() is None:
        raise UserError(
            "torch_compile: needs a C compiler (gcc or clang) on this machine to build its kernels, and none was "
            "found; turn torch_compile off, or install gcc (apt-get install gcc g++)"
        )


def enable_fast_cuda_math() -> None:
    """TF32 matmuls and convolutions: fp32 layers (heads, norms) on tensor cores at ~1e-3 relative error."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # fixed image sizes: pick the fastest convolution once


def for_this_device(model: torch.nn.Module, cuda: bool, torch_compile: bool) -> torch.nn.Module:
    """The model and process set up for the device they train on: convolutions in NHWC layout everywhere; on a CPU
    freed memory kept for reuse and, unless inductor compiles the model (it fuses dropout and attention itself), the
    cheaper dropout and attention of finetune.training.dropout and finetune.training.attention."""
    model = channels_last(model)
    if not cuda:
        reuse_freed_memory()
        if not torch_compile:
            from finetune.training.attention import use_cpu_attention
            from finetune.training.dropout import use_lane_dropout

            logger.info(
                "CPU kernels: %d dropout layer(s) draw 4 masks per random number; attention %s",
                use_lane_dropout(model),
                "in bf16/fp32 batched matmuls" if use_cpu_attention(model) else "as the model defines it",
            )
    return model


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convolutional models in NHWC layout, which cuDNN's tensor-core and oneDNN's CPU convolutions work in natively:
    ResNet-50 LoRA steps 1.3x faster on the CPU (bf16 and fp32) than in NCHW, which oneDNN reorders at every layer."""
    if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        return model
    model = model.to(memory_format=torch.channels_last)
    for name, param in model.named_parameters():
        if "lora_" in name:  # LoRA's own small weights stay contiguous: PEFT views them flat (DoRA's weight norm)
            param.data = param.data.contiguous()
    return model


def reuse_freed_memory() -> bool:
    """Keep freed memory in the process for the next step. glibc serves every allocation over 32 MB (GPT-2's bf16
    and fp32 logits: 100-200 MB a batch) from a fresh mmap and unmaps it at free, so each step page-faults its
    largest tensors in again: a third of a GPT-2 124M CPU step. With mmap off and a high trim threshold they come
    from the heap, already mapped. CPU processes only; other C libraries keep their own policy. True if applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    except (OSError, AttributeError):
        return False


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order (similar lengths in one batch, so little padding), re-drawn from
    (seed, epoch) at every pass: a resumed run sees the batches the original would have."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


def longest_first(lengths: list[int]) -> list[int]:
    """Evaluation order with similar lengths together (the order of predictions does not matter to metrics)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def image_workers(cuda: bool, num_processes: int) -> int:
    """On a GPU, images decode in worker processes while the GPU trains; on a CPU the workers would take the
    cores the model trains on."""
    if not cuda:
        return 0
    return max(0, min(IMAGE_WORKERS_PER_GPU, (os.cpu_count() or 1) // max(1, num_processes) - 1))


def trained_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the weights that require gradients, and the buffers (BatchNorm statistics)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad} | dict(model.named_buffers())


def keep_trainable_weights(models: list, weights: list, output_dir: str) -> None:
    """accelerate save_state hook: checkpoints hold the trained weights and buffers only, not the frozen base
    (a MiniLM LoRA checkpoint: 0.9 MB of weights instead of 91 MB); the base is reloaded from model_name_or_path."""
    for model, state in zip(models, weights):
        wanted = trained_tensors(model)
        for name in [name for name in state if name not in wanted]:
            del state[name]


def check_checkpoint_weights(model, path: Path) -> None:
    """A lean checkpoint loads non-strictly, so verify it holds every trainable weight of this model."""
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        return  # FSDP/DeepSpeed layouts: their own loaders are strict
    with safe_open(str(files[0]), framework="pt") as f:
        saved = set(f.keys())
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in saved]
    if missing:
        raise UserError(
            f"resume_from_checkpoint: {path} lacks {len(missing)} trained weight(s), e.g. {missing[0]}: it was "
            "written for other settings (lora_r, lora_target_modules, finetune_method)"
        )
