"""Training throughput: samples, tokens or images per second, and on GPUs achieved TFLOP/s and MFU.

FLOPs per training example = factor x the forward FLOPs that torch's FlopCounterMode counts on a real batch
(matmuls, convolutions and attention): factor 3 for full fine-tuning (forward, input gradients, weight gradients)
and 2 for LoRA, whose frozen weights need no weight gradients (the 4 x params per token of the forward and the
input gradients, plus attention). MFU divides the achieved rate by the GPU's dense bf16/fp16 peak.
"""

import contextlib
import time
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from finetune.rundir import THROUGHPUT_METRICS

# Dense (no sparsity) bf16/fp16 tensor-core peak per GPU in TFLOP/s, from NVIDIA's data sheets. Matched in order
# against torch.cuda.get_device_name: the more specific names first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def peak_tflops(gpu_name: str) -> Optional[float]:
    for marker, peak in PEAK_TFLOPS:
        if marker in gpu_name:
            return peak
    return None


def forward_flops(model: torch.nn.Module, batch: dict) -> int:
    """FLOPs of one forward pass over ``batch`` (labels included, so the loss counts too)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**batch)
    model.train(was_training)
    return counter.get_total_flops()


def examples_in(batch: dict) -> int:
    return next(iter(batch.values())).shape[0]


class Meter:
    """Counts what the loop trains on without syncing the GPU each step; ``figures`` reads it at logging steps."""

    def __init__(self, accelerator, train_flops_per_token: Optional[float] = None, peak: Optional[float] = None):
        self.accelerator = accelerator
        self.flops_per_token, self.peak = train_flops_per_token, peak
        self.samples = 0
        self.tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # non-padding, on device
        self.computed_tokens = 0  # padded positions included: the work the device did
        self.started = time.time()
        self.excluded = 0.0  # seconds spent evaluating and saving checkpoints since then: not training

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count as training time (evaluations, checkpoints)."""
        began = time.time()
        try:
            yield
        finally:
            self.excluded += time.time() - began

    def add(self, batch: dict) -> None:
        self.samples += examples_in(batch)
        mask = batch.get("attention_mask")
        if mask is not None:
            self.tokens += mask.sum()
            self.computed_tokens += mask.numel()
        elif "pixel_values" in batch:
            self.computed_tokens += examples_in(batch)  # one "token" per image for FLOPs

    def figures(self, kind: str) -> dict:
        """Totals over all processes since the loop started: samples_per_second plus tokens_per_second (text) or
        images_per_second (images), and tflops (per GPU) and mfu where FLOPs were counted."""
        seconds = max(time.time() - self.started - self.excluded, 1e-9)
        processes = self.accelerator.num_processes
        samples = self.samples * processes
        out = {"samples_per_second": samples / seconds}
        if kind == "images":
            out["images_per_second"] = samples / seconds
        else:
            tokens = self.accelerator.reduce(self.tokens, reduction="sum").item()
            out["tokens_per_second"] = tokens / seconds
        if self.flops_per_token:
            tflops = self.flops_per_token * self.computed_tokens / seconds / 1e12
            out["tflops"] = tflops
            if self.peak:
                out["mfu"] = tflops / self.peak
        return out


def train_flops_per_token(model, batch: dict, finetune_method: str) -> float:
    """Training FLOPs per token (text) or per image, from one counted forward pass over ``batch``."""
    per_batch = forward_flops(model, batch)
    mask = batch.get("attention_mask")
    units = mask.numel() if mask is not None else examples_in(batch)
    return (3 if finetune_method == "full" else 2) * per_batch / units


def meter_for(cfg, accelerator, model, train_data, task, collate) -> Meter:
    """The loop's throughput meter; on a GPU it also counts the model's FLOPs on one real batch (for TFLOP/s, MFU)."""
    from accelerate.utils import send_to_device

    if accelerator.device.type != "cuda":
        return Meter(accelerator)
    examples = [train_data[i] for i in range(min(len(train_data), cfg.per_device_train_batch_size))]
    batch = send_to_device(collate(examples), accelerator.device)
    with accelerator.autocast():
        # A compiled model is counted through its original module: FLOP counting needs no compiled graph.
        per_token = train_flops_per_token(getattr(model, "_orig_mod", model), batch, cfg.finetune_method)
    peak = mfu_peak(torch.cuda.get_device_name(accelerator.device), accelerator.mixed_precision)
    return Meter(accelerator, per_token, peak)


def mfu_peak(gpu_name: str, mixed_precision: str) -> Optional[float]:
    """The peak MFU is measured against: the table's bf16/fp16 tensor-core rates, for runs at those precisions only
    (an fp32 run's share of a bf16 peak would say nothing)."""
    return peak_tflops(gpu_name) if mixed_precision in ("bf16", "fp16") else None


def final_figures(meter: Meter, kind: str) -> dict:
    """The loop's throughput over this segment of the run, under metrics.json's names (every process calls it:
    tokens are summed across processes)."""
    out = {THROUGHPUT_METRICS[key]: value for key, value in meter.figures(kind).items() if key in THROUGHPUT_METRICS}
    if meter.accelerator.device.type == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name(meter.accelerator.device)
    return out
