"""Decisions a GPU run depends on, checked without a GPU: the precision each GPU gets, QLoRA only where it can run,
and the GPU numbering the runner's processes share."""

import dataclasses
import importlib.util
import json

import pytest
import torch

from finetune.errors import UserError
from finetune.training import lora, speed
from finetune.training.processes import sharded_launch
from webapp.runner import jobs


def emulating(native: bool):
    """torch.cuda.is_bf16_supported of a GPU: with emulation counted every CUDA GPU "supports" bf16."""
    return lambda including_emulation=True: including_emulation or native


@pytest.mark.parametrize(
    ("gpu", "native", "expected"), [("T4", False, "fp16"), ("V100", False, "fp16"), ("A100", True, "bf16")]
)
def test_auto_precision_is_bf16_only_where_the_gpu_computes_it(monkeypatch, gpu, native, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating(native))
    assert speed.resolve_mixed_precision("auto", cuda=True) == expected, gpu
    compute = lora.four_bit_loading()["quantization_config"].bnb_4bit_compute_dtype
    assert compute == (torch.bfloat16 if native else torch.float16), "QLoRA computes in the same precision"


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_qlora_is_refused_where_weights_are_sharded(monkeypatch, variable):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert not sharded_launch()
    monkeypatch.setenv(variable, "true")  # what accelerate launch exports to the processes of those setups
    assert sharded_launch()
    with pytest.raises(UserError, match="load_in_4bit: QLoRA runs on one GPU or with DDP"):
        lora.check_four_bit_possible(cuda=True, sharded=sharded_launch())


def test_trainers_number_gpus_as_nvidia_smi_does():
    """The runner hands each run GPUs by nvidia-smi's indices (PCI bus order); CUDA must count them the same way."""
    assert jobs.child_env(shared=False)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert jobs.child_env(shared=True)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_the_page_offers_deepspeed_only_where_it_is_installed(monkeypatch):
    from webapp.services import devices

    gpus = [devices.Gpu(i, "H100", 81559) for i in range(2)]
    installed = importlib.util.find_spec("deepspeed") is not None
    assert ("deepspeed_zero2" in [s.preset for s in devices.setups(gpus)]) is installed
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real_find_spec(name))
    assert [s.preset for s in devices.setups(gpus)] == ["single_gpu", "multi_gpu", "fsdp"]
    assert "needs the deepspeed package" in devices.unavailable("deepspeed_zero2")
    assert devices.unavailable("fsdp") is None


@pytest.mark.parametrize(
    ("kind", "expected"), [("DEEPSPEED", {}), ("FSDP", {"strict": False}), ("NO", {"strict": False})]
)
def test_resume_calls_load_state_as_each_engine_takes_it(tmp_path, kind, expected):
    """Lean checkpoints (trained weights only) load non-strictly; DeepSpeed's load_checkpoint takes no `strict`."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from torch import nn

    from finetune.rundir import TRAINER_STATE
    from finetune.training.checkpoints import load_checkpoint
    from finetune.training.progress import TrainerState

    (tmp_path / TRAINER_STATE).write_text(json.dumps(dataclasses.asdict(TrainerState(step=3))))
    calls = []
    accelerator = SimpleNamespace(
        distributed_type=DistributedType[kind], load_state=lambda path, **kwargs: calls.append((path, kwargs))
    )
    assert load_checkpoint(accelerator, tmp_path, nn.Linear(2, 2)).step == 3
    assert calls == [(str(tmp_path), expected)]


def test_frozen_weights_stay_fp32_where_fsdp_flattens_them_with_lora_weights():
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert speed.store_frozen_weights_in_bf16(model, "bf16", "lora", sharded=True) == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "one dtype per FSDP unit"
    assert speed.store_frozen_weights_in_bf16(model, "bf16", "lora", sharded=False) == 1


def test_compile_is_refused_at_once_where_no_c_compiler_can_build_its_kernels(monkeypatch):
    import shutil

    speed.check_compiler(torch_compile=True)  # this machine has gcc
    monkeypatch.setattr(shutil, "which", lambda name: None)  # python:3.11-slim, the Space image's base
    with pytest.raises(UserError, match="torch_compile: needs a C compiler"):
        speed.check_compiler(torch_compile=True)
    speed.check_compiler(torch_compile=False)


@pytest.mark.parametrize(("precision", "has_mfu"), [("bf16", True), ("fp16", True), ("no", False)])
def test_mfu_is_reported_only_against_the_peak_of_the_precision_run(precision, has_mfu):
    from finetune.training import throughput

    assert (throughput.mfu_peak("NVIDIA H100 80GB HBM3", precision) is not None) is has_mfu


def test_several_processes_agree_on_a_stop_every_few_steps_not_every_step():
    """Each agreement is an all-reduce the CPU waits for; one per step would stall a GPU's queue."""
    from types import SimpleNamespace

    from finetune.training.progress import STOP_CHECK_STEPS, StopSignal

    reduced = []

    def reduce(flags, reduction):
        reduced.append(flags)
        return flags

    accelerator = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=reduce)
    stop = StopSignal()
    assert not any(any(stop.agreed(accelerator, step)) for step in range(1, 101))
    assert len(reduced) == 100 // STOP_CHECK_STEPS
    assert stop.agreed(accelerator, 110, save_due=True) == (False, True), "a checkpoint's time, agreed"
    stop.requested = True  # a SIGTERM on this process
    stops = [step for step in range(111, 131) if stop.agreed(accelerator, step)[0]]
    assert stops[0] == 120, "every process stops at the same, next agreed step"
    single = SimpleNamespace(num_processes=1)
    assert StopSignal().agreed(single, 7, save_due=True) == (False, True), "one process: no agreement needed"


def test_throughput_leaves_out_the_time_spent_evaluating_and_saving(monkeypatch):
    from types import SimpleNamespace

    from finetune.training import throughput

    clock = iter([100.0, 101.0, 131.0, 132.0])  # started; pause begins; pause ends (30 s of evaluation); figures
    monkeypatch.setattr(throughput.time, "time", lambda: next(clock))
    meter = throughput.Meter(SimpleNamespace(device=torch.device("cpu"), num_processes=1))
    meter.add({"pixel_values": torch.zeros(64, 3, 4, 4)})
    with meter.paused():
        pass
    assert meter.figures("images")["samples_per_second"] == pytest.approx(64 / 2.0), "2 s of training, not 32 s"


@pytest.mark.parametrize(
    ("kind", "precision", "image_dtype"),
    [
        ("DEEPSPEED", "bf16", torch.bfloat16),
        ("DEEPSPEED", "fp16", torch.float16),
        ("DEEPSPEED", "no", torch.float32),
        ("MULTI_GPU", "bf16", torch.float32),
        ("NO", "bf16", torch.float32),
    ],
)
def test_images_reach_a_deepspeed_model_in_its_own_dtype(kind, precision, image_dtype):
    """DeepSpeed casts the weights to bf16/fp16 with no autocast around them: fp32 images would not match."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from finetune.training.engine import engine_batch

    accelerator = SimpleNamespace(distributed_type=DistributedType[kind], mixed_precision=precision)
    batch = {"pixel_values": torch.zeros(2, 3, 4, 4), "labels": torch.tensor([0, 1])}
    cast = engine_batch(batch, accelerator)
    assert cast["pixel_values"].dtype == image_dtype and cast["labels"].dtype == torch.long
