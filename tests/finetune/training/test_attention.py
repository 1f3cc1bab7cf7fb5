"""cpu_attention computes what the models' own attention does, masks included, and leaves no trace in saved models."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

from finetune.training.attention import NAME, use_cpu_attention

LOADERS = {
    "gpt2": AutoModelForCausalLM,
    "bert": AutoModelForSequenceClassification,
    "vit": AutoModelForImageClassification,
}


def inputs_for(family: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    if family == "vit":
        return {"pixel_values": torch.randn(3, 3, 32, 32, generator=generator)}
    ids = torch.randint(5, 100, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padded rows: the mask must keep the padding out of the other tokens' attention
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", LOADERS)
def test_outputs_equal_the_default_attention_with_padding_and_causal_masks(tiny_checkpoints, family):
    torch.manual_seed(0)
    reference = LOADERS[family].from_pretrained(tiny_checkpoints[family]).eval()
    torch.manual_seed(0)
    ours = LOADERS[family].from_pretrained(tiny_checkpoints[family]).eval()
    assert use_cpu_attention(ours) and ours.config._attn_implementation == NAME
    batch = inputs_for(family)
    with torch.no_grad():
        expected, got = reference(**batch).logits, ours(**batch).logits
    if "attention_mask" in batch:  # padded positions' own outputs are not used: compare the real tokens
        keep = batch["attention_mask"].bool()
        expected, got = (expected[keep], got[keep]) if family == "gpt2" else (expected, got)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gpt2_attends_only_to_earlier_tokens(tiny_checkpoints):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["gpt2"]).eval()
    use_cpu_attention(model)
    ids = torch.randint(5, 100, (1, 10), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 6:] = 7  # a different future must not change earlier predictions
    with torch.no_grad():
        first, second = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(first[0, :6], second[0, :6])
    assert not torch.allclose(first[0, 6:], second[0, 6:])


def test_attention_dropout_applies_in_training_only(tiny_checkpoints):
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_checkpoints["bert"], attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0
    )
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"], lora_dropout=0.0))
    assert use_cpu_attention(model)  # under LoRA: set on the model LoRA wraps
    batch = inputs_for("bert")
    with torch.no_grad():
        evaluated = [model.eval()(**batch).logits for _ in range(2)]
        torch.manual_seed(3)
        trained = model.train()(**batch).logits
        torch.manual_seed(3)
        again = model(**batch).logits
        other = model(**batch).logits
    torch.testing.assert_close(evaluated[0], evaluated[1])
    torch.testing.assert_close(trained, again)  # the seed fixes the masks
    assert not torch.allclose(trained, other) and not torch.allclose(trained, evaluated[0])


def test_the_implementation_is_not_saved_and_models_without_attention_are_left_alone(tiny_checkpoints, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoints["bert"])
    use_cpu_attention(model)
    model.save_pretrained(tmp_path / "saved")
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert reloaded.config._attn_implementation != NAME
    resnet = AutoModelForImageClassification.from_pretrained(tiny_checkpoints["resnet"])
    assert not use_cpu_attention(resnet)
