"""LoRA targets are discovered from each architecture, never taken from a fixed list."""

import pytest
from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

from finetune.training.lora import batchnorm_modules, discover_lora_targets

EXPECTED = {
    "gpt2": ["c_attn"],  # c_proj also names GPT-2's MLP output, so it is left out
    "bert": ["key", "query", "value"],  # "dense" is in the MLP too
    "vit": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "resnet": ["convolution"],  # no attention: every Conv2d
}


def _load(family, path):
    if family == "gpt2":
        return AutoModelForCausalLM.from_pretrained(path)
    if family == "bert":
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return AutoModelForImageClassification.from_pretrained(path, num_labels=2, ignore_mismatched_sizes=True)


@pytest.mark.parametrize("family", EXPECTED)
def test_targets_are_discovered_per_architecture(tiny_checkpoints, family):
    model = _load(family, tiny_checkpoints[family])
    assert discover_lora_targets(model, exclude=["classifier", "score"]) == EXPECTED[family], family


def test_batchnorm_layers_are_found_only_in_resnet(tiny_checkpoints):
    counts = {family: len(batchnorm_modules(_load(family, tiny_checkpoints[family]))) for family in EXPECTED}
    assert counts["resnet"] == 6 and counts["gpt2"] == counts["bert"] == counts["vit"] == 0


@pytest.mark.parametrize("family", EXPECTED)
def test_a_rank_beyond_the_adapted_layers_is_refused_before_allocating(tiny_checkpoints, family):
    from finetune.errors import UserError
    from finetune.training.lora import apply_lora

    model = _load(family, tiny_checkpoints[family])
    with pytest.raises(UserError, match=r"lora_r: 100000 exceeds the smallest adapted layer's width \(\d+\)"):
        apply_lora(model, 100_000, 16, 0.0, None, [])
    assert not any("lora_" in name for name, _ in model.named_modules()), f"{family}: nothing allocated"


def test_an_adapter_given_as_the_base_checkpoint_is_refused(tiny_checkpoints, tmp_path):
    """from_pretrained on an adapter would load whatever base folder its adapter_config.json names."""
    from peft import LoraConfig, get_peft_model

    from finetune.errors import UserError
    from finetune.tasks.causal_lm import CausalLMTask, load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["gpt2"])
    get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(UserError, match="holds a PEFT adapter"):
        CausalLMTask().load_model(str(tmp_path / "adapter"), None, load_tokenizer(tiny_checkpoints["gpt2"]))
    model, _ = CausalLMTask().load_model(str(tiny_checkpoints["gpt2"]), None, load_tokenizer(tiny_checkpoints["gpt2"]))
    assert not getattr(model, "_hf_peft_config_loaded", False), "a base checkpoint loads as before"
