"""The speed components: mixed precision 'auto', length-grouped batches, lean checkpoints, throughput and FLOPs."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from finetune.errors import UserError
from finetune.training import speed, throughput
from tests.conftest import read_events, read_json, run_cli, write_image_folder, write_sentiment_csv

X86_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
ARM_WITH_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


# name: (the text of /proc/cpuinfo, None for no such file; whether bf16 is native)
CPUINFO = {
    "x86 with bf16": (X86_WITH_BF16, True),
    "x86 without": (X86_WITHOUT, False),
    "arm with bf16": (ARM_WITH_BF16, True),
    "empty": ("", False),
    "missing": (None, False),
}


@pytest.mark.parametrize("case", CPUINFO)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, case):
    text, expected = CPUINFO[case]
    if text is not None:
        (tmp_path / "cpuinfo").write_text(text)
    assert speed.cpu_has_native_bf16(tmp_path / "cpuinfo") is expected, text


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.resolve_mixed_precision("auto", cuda=False) == "bf16"
    assert speed.resolve_mixed_precision("auto", cuda=False, width=384) == "bf16"  # MiniLM
    assert speed.resolve_mixed_precision("auto", cuda=False, width=64) == "no"  # tiny models lose to fp32
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    assert speed.resolve_mixed_precision("auto", cuda=False) == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert speed.resolve_mixed_precision("auto", cuda=True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert speed.resolve_mixed_precision("auto", cuda=True) == "fp16"
    for explicit in ("no", "fp16", "bf16"):
        assert speed.resolve_mixed_precision(explicit, cuda=False) == explicit


def test_length_grouped_order_is_fixed_by_seed_and_epoch():
    lengths = [(i * 53) % 97 + 1 for i in range(400)]
    sampler = speed.EpochLengthGroupedSampler(8, lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(400))  # every example once
    assert list(sampler) == first  # same epoch, same order (a resumed run redraws it)
    sampler.set_epoch(1)
    assert list(sampler) != first
    batches = [first[i : i + 8] for i in range(0, 400, 8)]
    spread = sum(max(lengths[j] for j in b) - min(lengths[j] for j in b) for b in batches) / len(batches)
    assert spread < 10  # lengths run 1-97: grouped batches hold similar ones
    assert speed.longest_first([3, 9, 1, 9]) == [1, 3, 0, 2]


PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H200": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA L40S": 362.1,
    "NVIDIA L4": 121.0,
    "Some New GPU": None,
}


@pytest.mark.parametrize("name", PEAK_TFLOPS)
def test_peak_table_picks_the_specific_gpu_name_first(name):
    assert throughput.peak_tflops(name) == PEAK_TFLOPS[name], name


def test_flops_count_forward_and_the_lora_and_full_factors():
    layer = torch.nn.Linear(64, 32)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, input_ids, attention_mask):
            return self.layer(input_ids.float())

    batch = {"input_ids": torch.ones(4, 64), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    assert throughput.forward_flops(Model(), batch) == 2 * 4 * 64 * 32
    per_token_lora = throughput.train_flops_per_token(Model(), batch, "lora")
    assert per_token_lora == 2 * (2 * 4 * 64 * 32) / 40
    assert throughput.train_flops_per_token(Model(), batch, "full") == pytest.approx(1.5 * per_token_lora)


def test_meter_counts_tokens_without_padding_and_images():
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, reduce=lambda t, reduction: t)
    meter = throughput.Meter(accelerator, train_flops_per_token=1e12, peak=100.0)
    meter.add({"input_ids": torch.ones(2, 8), "attention_mask": torch.tensor([[1] * 8, [1] * 3 + [0] * 5])})
    meter.started -= 1.0  # one second of training
    text = meter.figures("tokens")
    assert text["tokens_per_second"] == pytest.approx(11, rel=0.01)
    assert text["samples_per_second"] == pytest.approx(2, rel=0.01)
    assert text["tflops"] == pytest.approx(16, rel=0.01) and text["mfu"] == pytest.approx(0.16, rel=0.01)
    images = throughput.Meter(accelerator)
    images.add({"pixel_values": torch.zeros(5, 3, 4, 4), "labels": torch.zeros(5)})
    figures = images.figures("images")
    assert figures.keys() == {"samples_per_second", "images_per_second"}


def test_checkpoints_hold_trained_weights_only_and_resume(tiny_checkpoints, tmp_path):
    """A checkpoint keeps LoRA weights, the new head and buffers, not the frozen base; a resume from it trains on;
    a checkpoint lacking a trained weight is refused by name."""
    data = write_sentiment_csv(tmp_path / "reviews.csv")
    out = tmp_path / "run"
    common = (
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--save_steps",
        "4",
        "--eval_steps",
        "4",
        "--logging_steps",
        "4",
    )
    assert run_cli(*common, "--max_steps", "4").returncode == 0
    checkpoint = out / "checkpoints" / "step_4"
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        saved = list(f.keys())
    assert saved and all(
        "lora_" in k or "classifier" in k or "pooler" in k or "position_ids" in k or "token_type_ids" in k
        for k in saved
    ), saved
    base_bytes = sum(p.stat().st_size for p in Path(tiny_checkpoints["bert"]).glob("*.safetensors"))
    assert (checkpoint / "model.safetensors").stat().st_size < base_bytes / 2
    resumed = run_cli(*common, "--max_steps", "8", "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_json(out / "metrics.json")["steps"] == 8

    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match="lacks 2 trained weight"):
        speed.check_checkpoint_weights(model, checkpoint)


def test_model_width_reads_each_family_config(tiny_checkpoints):
    from transformers import AutoConfig, BertConfig, GPT2Config, ResNetConfig

    widths = {family: speed.model_width(AutoConfig.from_pretrained(path)) for family, path in tiny_checkpoints.items()}
    assert widths == {"gpt2": 64, "bert": 64, "vit": 64, "resnet": 32}
    assert speed.model_width(GPT2Config()) == 768 and speed.model_width(BertConfig()) == 768
    assert speed.model_width(ResNetConfig(hidden_sizes=[256, 512, 1024, 2048])) == 2048


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_default_run_of_a_tiny_model_stays_fp32_and_logs_throughput(tiny_checkpoints, tmp_path, family):
    if family == "bert":
        data = write_sentiment_csv(tmp_path / "r.csv")
    else:
        data = write_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / family
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints[family]),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--logging_steps",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["mixed_precision"] == "no"  # auto: these models are too narrow (64) for bf16 to pay on a CPU
    unit = "tokens_per_second" if family == "bert" else "images_per_second"
    train_events = [e for e in read_events(out) if e["event"] == "train"]
    assert len(train_events) == 2 and all(e[unit] > 0 for e in train_events)
    assert metrics[f"train_{unit}"] > 0 and "mfu" not in metrics  # no FLOPs counted on a CPU


def test_gradient_checkpointing_trains_and_resnet_is_refused(tiny_checkpoints, tmp_path):
    data = write_sentiment_csv(tmp_path / "reviews.csv")
    out = tmp_path / "bert"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--gradient_checkpointing",
        "true",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gradient_checkpointing" in (out / "config.yaml").read_text()
    images = write_image_folder(tmp_path / "images", per_class=8)
    refused = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["resnet"]),
        "--train_file",
        str(images),
        "--output_dir",
        str(tmp_path / "resnet"),
        "--max_steps",
        "2",
        "--gradient_checkpointing",
        "true",
    )
    assert refused.returncode == 2
    assert "gradient_checkpointing: ResNetForImageClassification does not support it" in refused.stderr
    assert json.loads((tmp_path / "resnet" / "status.json").read_text())["state"] == "failed"


def test_frozen_weights_are_stored_in_bf16_only_for_lora_under_bf16():
    def model():
        layers = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        layers[0].requires_grad_(False)  # the frozen base; layers[1] is trained
        return layers

    converted = model()
    assert speed.store_frozen_weights_in_bf16(converted, "bf16", "lora") == 2
    assert [p.dtype for p in converted.parameters()] == [torch.bfloat16] * 2 + [torch.float32] * 2
    for precision, method in (("no", "lora"), ("fp16", "lora"), ("bf16", "full")):
        untouched = model()
        assert speed.store_frozen_weights_in_bf16(untouched, precision, method) == 0
        assert all(p.dtype == torch.float32 for p in untouched.parameters())


@pytest.mark.parametrize("cuda", [False, True])
def test_device_setup_puts_convolutions_in_nhwc_and_cheap_dropout_on_the_cpu_only(cuda, monkeypatch):
    kept = []
    monkeypatch.setattr(speed, "reuse_freed_memory", lambda: kept.append(True))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Dropout(0.1))
    model = speed.for_this_device(model, cuda=cuda, torch_compile=False)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert type(model[1]).__name__ == ("Dropout" if cuda else "LaneDropout")  # a GPU's dropout is fused already
    assert kept == ([] if cuda else [True])
    compiled = speed.for_this_device(torch.nn.Sequential(torch.nn.Dropout(0.1)), cuda=False, torch_compile=True)
    assert type(compiled[0]) is torch.nn.Dropout  # inductor generates its own fused dropout
    linear = torch.nn.Linear(4, 4)
    assert speed.for_this_device(linear, cuda=cuda, torch_compile=False) is linear


def test_freed_memory_is_kept_for_reuse_on_glibc():
    """In a child: mallopt changes the whole process. A freed 256 MiB block comes back without the system
    mapping (and the kernel zeroing) fresh pages: once settled, four more allocations of it cost no new minor page
    faults (without this, each costs 65,536)."""
    import subprocess
    import sys

    script = (
        "import resource, sys, torch\n"
        "from finetune.training.speed import reuse_freed_memory\n"
        "applied = reuse_freed_memory()\n"
        # glibc settles where the block lives within the first three (which of them fault varies with the layout)
        "for _ in range(4): torch.ones(64 * 2**20)\n"
        "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(4): torch.ones(64 * 2**20)\n"
        "again = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults\n"
        "print(applied, again)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    assert applied == "True"
    assert int(faults) < 1000  # a fresh 256 MiB mapping takes 65,536 faults of 4 KiB pages: 4 x 65,536 here


def test_nhwc_leaves_lora_weights_contiguous_so_dora_convolutions_run():
    from peft import LoraConfig, get_peft_model

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    model = get_peft_model(net, LoraConfig(r=2, target_modules=["0", "2"], use_dora=True))
    model = speed.channels_last(model)
    assert model.base_model.model[0].base_layer.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for n, p in model.named_parameters() if "lora_" in n)
    model(torch.randn(2, 3, 12, 12)).sum().backward()  # DoRA views lora_A/lora_B flat


def test_under_bf16_lora_layers_take_bf16_inputs_without_a_fp32_copy_and_compute_the_same():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(16, 16)), LoraConfig(r=4, target_modules=["0"]))
    torch.nn.init.normal_(model.base_model.model[0].lora_B["default"].weight)  # B starts at 0: make LoRA count
    inputs = torch.randn(8, 16).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(inputs)
    speed.store_frozen_weights_in_bf16(model, "bf16", "lora")
    assert model.base_model.model[0].cast_input_dtype_enabled is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(inputs)
    assert torch.equal(before, after)  # autocast casts to bf16 anyway: the fp32 copy changed nothing
