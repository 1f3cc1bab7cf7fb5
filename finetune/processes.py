"""The Accelerator of a run: one process or several joined in one process group, on GPUs or the CPU."""

import os

import torch
from accelerate import Accelerator, DataLoaderConfiguration

from finetune import speed
from finetune.config import TrainConfig
from finetune.errors import UserError


def build_accelerator(cfg: TrainConfig, model_width: int, trackers: list) -> Accelerator:
    """The run's Accelerator, checked to hold every launched process, with the speed settings of this device."""
    cuda = speed.uses_cuda()
    accelerator = Accelerator(
        cpu=several_processes_without_accelerator(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=speed.resolve_mixed_precision(cfg.mixed_precision, cuda, model_width),
        log_with=trackers,
        # Shuffling seeded by (seed, epoch) so a resumed run sees the batches the original would have; batches
        # copied to the GPU while it computes (pinned memory, non-blocking).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=cuda),
        dynamo_backend="inductor" if cfg.torch_compile else "no",
    )
    check_process_group(accelerator)
    if cuda:
        speed.enable_fast_cuda_math()
    accelerator.register_save_state_pre_hook(speed.keep_trainable_weights)
    return accelerator


def several_processes_without_accelerator() -> bool:
    """True when this is one of several launched processes (accelerate launch --multi_gpu, torchrun) and there is no GPU.

    accelerate then forms a gloo process group on CPU only if ACCELERATE_USE_CPU=true is in the environment,
    which its multi-process launcher never sets (a config file's use_cpu reaches single-process launches only).
    Without it every process would run alone, all writing the same run directory.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    devices = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA alone before that
    return not (devices.is_available() if devices is not None else torch.cuda.is_available())


def check_process_group(accelerator: Accelerator) -> None:
    """Refuse to start when the launched processes did not join one process group (they would train separately)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise UserError(f"{launched} processes were launched but each runs alone (accelerate formed no process group "
                        f"on {accelerator.device}); launch one process (configs/accelerate/cpu.yaml or single_gpu.yaml), "
                        "or set ACCELERATE_USE_CPU=true for several processes on the CPU")
