"""The Accelerator of a run: one process or several joined in one process group, on GPUs or the CPU."""

import os
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, ProjectConfiguration, is_mlflow_available, is_tensorboard_available

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.rundir import RunDirectory
from finetune.training import speed
from finetune.training.progress import SHARDED

# What `report_to` needs installed, and the pip package that provides it.
TRACKER_PACKAGES = {
    "tensorboard": (is_tensorboard_available, "tensorboard"),
    "mlflow": (is_mlflow_available, "mlflow-skinny"),
}


def sharded_launch() -> bool:
    """Whether `accelerate launch` started this process for FSDP or DeepSpeed (it exports these variables to every
    process it starts), known before the Accelerator is built."""
    return any(
        os.environ.get(name, "").lower() == "true" for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")
    )


def build_accelerator(cfg: TrainConfig, model_width: int, trackers: list) -> Accelerator:
    """The run's Accelerator, checked to hold every launched process, with the speed settings of this device."""
    cuda = speed.uses_cuda()
    tracking_dir = RunDirectory(cfg.output_dir).tracking_dir
    accelerator = Accelerator(
        cpu=several_processes_without_accelerator(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=speed.resolve_mixed_precision(cfg.mixed_precision, cuda, model_width),
        log_with=trackers + _external_trackers(cfg.report_to, tracking_dir),
        project_config=ProjectConfiguration(project_dir=str(tracking_dir), logging_dir=str(tracking_dir))
        if cfg.report_to != "none"
        else None,
        # Shuffling seeded by (seed, epoch) so a resumed run sees the batches the original would have; batches
        # copied to the GPU while it computes (pinned memory, non-blocking).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=cuda),
        dynamo_backend="inductor" if cfg.torch_compile else "no",
    )
    check_process_group(accelerator)
    if cuda:
        speed.enable_fast_cuda_math()
    accelerator.register_save_state_pre_hook(speed.keep_trainable_weights)
    start_trackers(accelerator, cfg)
    return accelerator


def _external_trackers(report_to: str, tracking_dir: Path) -> list[str]:
    """accelerate's tracker for ``report_to`` (none: []), refused with what to install when it is missing."""
    if report_to == "none":
        return []
    available, package = TRACKER_PACKAGES[report_to]
    if not available():
        raise UserError(
            f"report_to: {report_to} is not installed on this machine; install it (pip install {package})"
            " or set report_to: none (events.jsonl and the web app's charts work without it)"
        )
    if report_to == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        # Without a tracking server the store stays inside the run, not in the working directory.
        os.environ["MLFLOW_TRACKING_URI"] = tracking_dir.resolve().as_uri()
    return [report_to]


def start_trackers(accelerator: Accelerator, cfg: TrainConfig) -> None:
    """Open every tracker, with the run's settings as hyperparameters (scalars only: what TensorBoard and MLflow
    take) and, for MLflow, the experiment and the run named as in the web app."""
    settings = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (bool, int, float, str))}
    name = Path(cfg.output_dir).name
    accelerator.init_trackers(
        cfg.experiment_name or "lora-lab", config=settings, init_kwargs={"mlflow": {"run_name": name}}
    )


def several_processes_without_accelerator() -> bool:
    """True when this is one of several launched processes (accelerate launch --multi_gpu, torchrun) and there is
    no GPU.

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
        raise UserError(
            f"{launched} processes were launched but each runs alone (accelerate formed no process group "
            f"on {accelerator.device}); launch one process (configs/accelerate/cpu.yaml or single_gpu.yaml), "
            "or set ACCELERATE_USE_CPU=true for several processes on the CPU"
        )


def run_accelerator(cfg: TrainConfig, run: RunDirectory) -> Accelerator:
    """The run's Accelerator (build_accelerator), quiet progress bars, and QLoRA refused where it cannot run."""
    import datasets
    import transformers

    from finetune.tasks import load_model_config
    from finetune.training import artifacts, lora, speed

    # Progress bars are noise in train.log and the web app's log tail; events.jsonl carries progress.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if cfg.load_in_4bit:
        lora.check_four_bit_possible(speed.uses_cuda(), sharded_launch())
    speed.check_compiler(cfg.torch_compile)
    width = speed.model_width(load_model_config(cfg.model_name_or_path))
    accelerator = build_accelerator(cfg, width, trackers=[artifacts.RunDirectoryTracker(run)])
    check_sharding_took(accelerator)
    return accelerator


def check_sharding_took(accelerator: Accelerator) -> None:
    """Refuse an FSDP or DeepSpeed launch that accelerate runs as plain DDP: on CPU processes (use_cpu,
    ACCELERATE_USE_CPU) its state only turns GPU-like process groups into FSDP, so the run would silently hold a whole
    copy of the model per process, the memory sharding was picked to avoid."""
    if sharded_launch() and accelerator.distributed_type not in SHARDED:
        raise UserError(
            f"setup: the FSDP or DeepSpeed launch runs here as {accelerator.distributed_type.value} without sharding "
            "(accelerate shards only on GPUs); on CPU pick the cpu or cpu_ddp setup"
        )


def wrap_lora_layers_apart(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Under FSDP, give each LoRA layer an FSDP unit of its own (PEFT's auto-wrap policy, as transformers' Trainer sets
    it): a unit mixing frozen and trainable weights keeps a gradient for its whole flat parameter, the frozen part
    included (measured on 2 CPU processes: a 51,008-element gradient shard for 1,024 trainable elements)."""
    from peft import PeftModel
    from peft.utils.other import fsdp_auto_wrap_policy

    if accelerator.distributed_type == DistributedType.FSDP and isinstance(model, PeftModel):
        accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)


def describe_wrapping(model: torch.nn.Module) -> str:
    """What accelerate wrapped the model in, for train.log: e.g. "FullyShardedDataParallel (FSDP1, 5 units)", so a
    launch that silently fell back to one plain process shows it."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    name = type(model).__name__
    units = sum(isinstance(module, FullyShardedDataParallel) for module in model.modules())
    if units:
        return f"{name} (FSDP1, {units} units)"
    fsdp2 = sum(type(module).__name__.startswith("FSDP") for module in model.modules())
    return f"{name} (FSDP2, {fsdp2} units)" if fsdp2 else name
