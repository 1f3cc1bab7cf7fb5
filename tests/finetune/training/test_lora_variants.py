"""Every LoRA variant through the real command line, on tiny checkpoints: DoRA, rsLoRA, gaussian/PiSSA/OLoRA starts,
LoRA+, all-linear targets, and QLoRA's refusal on a machine without CUDA.

Each trained adapter is reloaded with PeftModel.from_pretrained on the original base and must predict what the
trained model predicted: the trained model is rebuilt from the run's last checkpoint (for PiSSA/OLoRA on the base
the start changed), so matching logits prove the conversion to an adapter of the original base.
"""

import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import OFFLINE_ENV, REPO, read_json, run_cli, write_image_folder, write_lm_text, write_sentiment_csv

STEPS = ["--max_steps", "4", "--save_steps", "2", "--save_total_limit", "5", "--logging_steps", "1"]
# fp32 so that the reloaded adapter's logits match the trained model's to 1e-4; random-init models need larger steps.
COMMON = [*STEPS, "--mixed_precision", "no", "--learning_rate", "2e-3"]
# One run per family, sharing the variants between them (name: family, extra flags).
VARIANTS = {
    "gpt2-pissa-all-linear": ("gpt2", ["--init_lora_weights", "pissa", "--lora_target_modules", "all-linear"]),
    "bert-dora-rslora-all-linear": (
        "bert",
        ["--use_dora", "true", "--use_rslora", "true", "--lora_target_modules", "all-linear"],
    ),
    "vit-olora-loraplus": ("vit", ["--init_lora_weights", "olora", "--loraplus_lr_ratio", "16"]),
    "resnet-gaussian-dora-all-linear": (
        "resnet",
        ["--init_lora_weights", "gaussian", "--use_dora", "true", "--lora_target_modules", "all-linear"],
    ),
}
QLORA_REFUSAL = "load_in_4bit: QLoRA needs a CUDA GPU"


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    images = write_image_folder(root / "images", per_class=8)
    return {
        "gpt2": write_lm_text(root / "lm.txt", lines=120),
        "bert": write_sentiment_csv(root / "reviews.csv", rows=80),
        "vit": images,
        "resnet": images,
    }


def _command(tiny_checkpoints, data_files, family: str, out, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "finetune.train",
        "--model_name_or_path",
        str(tiny_checkpoints[family]),
        "--train_file",
        str(data_files[family]),
        "--output_dir",
        str(out),
        *COMMON,
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tiny_checkpoints, data_files, tmp_path_factory):
    """The variant runs, started together (each trains on one thread) and awaited."""
    root = tmp_path_factory.mktemp("variants")
    started = {
        name: subprocess.Popen(
            _command(tiny_checkpoints, data_files, family, root / name, extra),
            cwd=REPO,
            env=OFFLINE_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (family, extra) in VARIANTS.items()
    }
    for name, process in started.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
    return {name: root / name for name in VARIANTS}


def _trained_and_reloaded(run):
    """(the model as trained, rebuilt from the last checkpoint; the saved adapter on the original base)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from finetune.config import TrainConfig
    from finetune.tasks import get_task
    from finetune.training.engine import prepare_model

    cfg, info = TrainConfig.from_yaml(run / "config.yaml"), read_json(run / "adapter" / "lora_lab.json")
    task = get_task(info["task"])
    processor = task.load_processor(str(run / "adapter"))
    model, heads = task.load_model(cfg.model_name_or_path, info["labels"], processor)
    trained = prepare_model(model, cfg, heads)
    result = trained.load_state_dict(load_file(run / "checkpoints" / "step_4" / "model.safetensors"), strict=False)
    assert not result.unexpected_keys
    assert not [n for n, p in trained.named_parameters() if p.requires_grad and n in result.missing_keys]
    base, _ = task.load_model(info["base_model"], info["labels"], processor)
    return trained.eval(), PeftModel.from_pretrained(base, run / "adapter").eval()


def _logits(model, family: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if family in ("gpt2", "bert"):
        inputs = {"input_ids": torch.randint(5, 200, (4, 12), generator=generator)}
    else:
        inputs = {"pixel_values": torch.randn(4, 3, 32, 32, generator=generator)}
    with torch.no_grad():
        return model(**inputs).logits


def _adapted(model) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_and_its_adapter_predicts_as_trained_on_the_original_base(runs, name):
    from tests.finetune.reference_eval import eval_loss_of_reloaded

    run, family = runs[name], VARIANTS[name][0]
    assert read_json(run / "status.json")["state"] == "finished", name
    # PiSSA/OLoRA adapters are saved with init_lora_weights true (next test): loading does not decompose the
    # base again, so matching logits prove the conversion.
    trained, reloaded = _trained_and_reloaded(run)
    expected, got = _logits(trained, family), _logits(reloaded, family)
    assert torch.allclose(got, expected, atol=1e-4), f"{name}: max diff {(got - expected).abs().max():.2e}"
    assert eval_loss_of_reloaded(run) == pytest.approx(
        read_json(run / "metrics.json")["finetuned"]["eval_loss"], rel=1e-5
    ), name


def test_the_variant_settings_reach_the_saved_adapter(runs):
    configs = {name: read_json(run / "adapter" / "adapter_config.json") for name, run in runs.items()}
    assert configs["bert-dora-rslora-all-linear"]["use_dora"] and configs["bert-dora-rslora-all-linear"]["use_rslora"]
    assert configs["resnet-gaussian-dora-all-linear"]["use_dora"]
    assert configs["resnet-gaussian-dora-all-linear"]["init_lora_weights"] == "gaussian"
    # PiSSA/OLoRA are saved converted: plain LoRA of twice the rank (the trained B·A minus the initial B0·A0).
    converted = [configs[name] for name in ("gpt2-pissa-all-linear", "vit-olora-loraplus")]
    assert all(c["init_lora_weights"] is True and c["r"] == 32 and c["lora_alpha"] == 64 for c in converted)
    initial = [
        runs[name] / "adapter_init" / "adapter_model.safetensors"
        for name in ("gpt2-pissa-all-linear", "vit-olora-loraplus")
    ]
    assert all(path.is_file() for path in initial)
    assert not (runs["bert-dora-rslora-all-linear"] / "adapter_init").exists()


def test_all_linear_adapts_the_mlp_layers_too_and_convolutions_in_conv_nets(runs):
    adapted = {name: _adapted(_trained_and_reloaded(run)[1]) for name, run in runs.items() if "all-linear" in name}
    gpt2, bert, resnet = (
        adapted[n] for n in ("gpt2-pissa-all-linear", "bert-dora-rslora-all-linear", "resnet-gaussian-dora-all-linear")
    )
    layers = {
        leaf: sum(name.endswith(leaf) for name in gpt2)
        for leaf in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert layers == dict.fromkeys(layers, 2) and len(gpt2) == 8, gpt2  # 2 blocks x 4 layers; never lm_head
    ends = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
    assert all(name.endswith(ends) for name in bert) and len(bert) == 12, bert  # not the new pooler or classifier
    assert sum(name.endswith("intermediate.dense") for name in bert) == 2
    assert resnet and all(name.endswith("convolution") for name in resnet), resnet


def test_a_pissa_run_resumes_from_its_checkpoint_to_the_same_adapter(runs, tiny_checkpoints, data_files, tmp_path):
    from tests.finetune.reference_eval import eval_loss_of_reloaded

    full = runs["gpt2-pissa-all-linear"]
    interrupted = tmp_path / "interrupted"  # only the step-2 checkpoint: no adapter_init, no status
    shutil.copytree(full / "checkpoints" / "step_2", interrupted / "checkpoints" / "step_2")
    family, extra = VARIANTS["gpt2-pissa-all-linear"]
    result = run_cli(
        *_command(tiny_checkpoints, data_files, family, interrupted, extra)[3:], "--resume_from_checkpoint", "true"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [read_json(run / "metrics.json")["finetuned"]["eval_loss"] for run in (full, interrupted)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert eval_loss_of_reloaded(interrupted) == pytest.approx(losses[1], rel=1e-5)
    first, resumed = (_logits(_trained_and_reloaded(run)[1], family) for run in (full, interrupted))
    assert torch.allclose(first, resumed, atol=1e-4) and first.shape[0] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_qlora_without_cuda_is_refused_before_any_model_loads(tiny_checkpoints, data_files, tmp_path):
    out = tmp_path / "qlora"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["gpt2"]),
        "--train_file",
        str(data_files["gpt2"]),
        "--output_dir",
        str(out),
        "--load_in_4bit",
        "true",
        *STEPS,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert QLORA_REFUSAL in result.stderr and "gradient_checkpointing" in result.stderr
    status = read_json(out / "status.json")
    assert status["state"] == "failed" and status["error"].startswith(QLORA_REFUSAL)
    log = (out / "train.log").read_text()
    assert "LoRA targets" not in log and "Task causal-lm" not in log, "refused before the model loaded"
    assert not (out / "adapter").exists()


def _bert(tiny_checkpoints):
    from finetune.tasks.text_classification import TextClassificationTask

    task = TextClassificationTask()
    return task.load_model(
        str(tiny_checkpoints["bert"]), ["a", "b"], task.load_processor(str(tiny_checkpoints["bert"]))
    )


def _config(**values):
    from finetune.config import TrainConfig

    return TrainConfig.from_dict(
        {
            "model_name_or_path": "m",
            "train_file": "t",
            "output_dir": "o",
            "learning_rate": 1e-3,
            "head_learning_rate": 5e-3,
            "weight_decay": 0.1,
            **values,
        }
    )


def _learning_rates(tiny_checkpoints, **values) -> dict[str, tuple[float, float]]:
    """(learning rate, weight decay) of every trained parameter, by name, as build_optimizer groups them."""
    from finetune.training.engine import build_optimizer, prepare_model

    model, heads = _bert(tiny_checkpoints)
    cfg = _config(**values)
    model = prepare_model(model, cfg, heads)
    optimizer = build_optimizer(model, cfg, heads)
    by_id = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def test_loraplus_trains_the_b_matrices_at_ratio_times_the_learning_rate(tiny_checkpoints):
    rates = _learning_rates(tiny_checkpoints, loraplus_lr_ratio=16)
    b = {n: r for n, r in rates.items() if ".lora_B." in n}
    a = {n: r for n, r in rates.items() if ".lora_A." in n}
    heads = {n: r for n, r in rates.items() if "modules_to_save" in n}
    assert all(lr == pytest.approx(16 * 1e-3) and decay == 0.1 for lr, decay in b.values())
    assert len(b) == 6  # query, key, value x 2 layers
    assert set(a.values()) == {(1e-3, 0.1)} and len(a) == 6
    assert {lr for lr, _ in heads.values()} == {5e-3}, "the new heads keep their own learning rate"
    assert all(decay == 0.0 for n, (_, decay) in heads.items() if n.endswith("bias")) and len(heads) == 4
    assert len(rates) == len(a) + len(b) + len(heads)


def test_without_loraplus_both_lora_matrices_share_the_learning_rate(tiny_checkpoints):
    rates = _learning_rates(tiny_checkpoints)
    lora = [lr for name, (lr, _) in rates.items() if ".lora_" in name]
    assert set(lora) == {1e-3} and len(lora) == 12


def test_dora_magnitudes_get_no_weight_decay(tiny_checkpoints):
    rates = _learning_rates(tiny_checkpoints, use_dora=True)
    magnitudes = [decay for name, (_, decay) in rates.items() if "lora_magnitude_vector" in name]
    assert set(magnitudes) == {0.0} and len(magnitudes) == 6


def _load(family, tiny_checkpoints):
    from tests.finetune.training.test_lora import _load as load

    return load(family, tiny_checkpoints[family])


def test_all_linear_is_discovered_from_the_model(tiny_checkpoints):
    from finetune.training.lora import resolve_targets

    found = {
        family: resolve_targets(_load(family, tiny_checkpoints), ["all-linear"], ["classifier", "score"])
        for family in ("gpt2", "bert", "vit", "resnet")
    }
    assert len(found["gpt2"]) == 8 and not [n for n in found["gpt2"] if "lm_head" in n]
    assert sum(n.endswith("intermediate.dense") for n in found["bert"]) == 2 and "bert.pooler.dense" in found["bert"]
    assert sum(n.endswith("mlp.fc1") for n in found["vit"]) == 2 and "classifier" not in found["vit"]
    assert found["resnet"] == ["convolution"]  # no linear layer but the head: its convolutions
    assert resolve_targets(_load("bert", tiny_checkpoints), ["attention"], []) == ["key", "query", "value"]


REFUSED = [  # (family, apply_lora keyword arguments, targets, the field the message names)
    ("gpt2", {"init_lora_weights": "olora"}, None, "init_lora_weights: PEFT's olora does not handle Conv1D"),
    ("resnet", {"init_lora_weights": "pissa"}, None, "init_lora_weights: pissa decomposes linear weights"),
    ("bert", {"init_lora_weights": "pissa", "use_dora": True}, None, "use_dora: DoRA's magnitudes"),
    ("bert", {}, ["all-linear", "query"], "lora_target_modules: attention and all-linear stand alone"),
    ("bert", {}, ["nope"], r"lora_target_modules: \['nope'\] not found"),
]


@pytest.mark.parametrize(
    ("family", "options", "targets", "message"),
    REFUSED,
    ids=["gpt2-olora", "resnet-pissa", "bert-pissa-dora", "bert-all-linear-and-query", "bert-unknown-target"],
)
def test_combinations_peft_cannot_train_or_convert_are_refused_naming_the_field(
    tiny_checkpoints, family, options, targets, message
):
    from finetune.errors import UserError
    from finetune.training.lora import apply_lora

    model = _load(family, tiny_checkpoints)
    with pytest.raises(UserError, match=message):
        apply_lora(model, 4, 8, 0.0, targets, [], **options)
    assert not any("lora_" in name for name, _ in model.named_modules()), f"{family}: nothing allocated"


def test_four_bit_bases_refuse_conv_nets_and_base_changing_starts_and_keep_their_precision(tiny_checkpoints):
    """A 4-bit load needs CUDA; transformers marks such a model is_loaded_in_4bit, which is all these checks read."""
    from finetune.errors import UserError
    from finetune.training import speed
    from finetune.training.lora import apply_lora, four_bit_loading

    resnet, bert = _load("resnet", tiny_checkpoints), _load("bert", tiny_checkpoints)
    resnet.is_loaded_in_4bit = bert.is_loaded_in_4bit = True
    with pytest.raises(UserError, match="load_in_4bit: bitsandbytes quantizes linear layers only"):
        apply_lora(resnet, 4, 8, 0.0, None, [])
    with pytest.raises(UserError, match="init_lora_weights: pissa rewrites the base weights"):
        apply_lora(bert, 4, 8, 0.0, None, [], init_lora_weights="pissa")
    wrapped = apply_lora(bert, 4, 8, 0.0, None, [])
    assert speed.store_frozen_weights_in_bf16(wrapped, "bf16", "lora") == 0
    assert all(p.dtype == torch.float32 for p in wrapped.parameters())
    quantization = four_bit_loading()["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant and quantization.bnb_4bit_compute_dtype in (
        torch.bfloat16,
        torch.float16,
    )


@pytest.mark.parametrize(
    "option",
    [{"load_in_4bit": True}, {"use_dora": True}, {"loraplus_lr_ratio": 16}],
    ids=["load_in_4bit", "use_dora", "loraplus_lr_ratio"],
)
def test_qlora_and_lora_only_variants_are_refused_for_full_fine_tuning(option):
    from finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="finetune_method: full trains every weight"):
        _config(finetune_method="full", **option)
