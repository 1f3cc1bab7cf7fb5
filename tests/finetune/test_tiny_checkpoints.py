"""The offline tiny checkpoints, made through the real command line, load and run like the hub ones they replace."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from tests.conftest import OFFLINE_ENV, REPO

FAMILIES = ("gpt2", "bert", "vit", "resnet")


def _make(out_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "finetune.tiny_checkpoints", str(out_dir), *args],
        cwd=REPO,
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("tiny")
    stdout = _make(out_dir)
    assert stdout.splitlines() == [f"wrote {out_dir / family}" for family in FAMILIES]
    return out_dir


def _image() -> Image.Image:
    # Not square and not 32 px: the processors must resize (and crop) to the model's size.
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))


def _check_gpt2(path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tokenizer) and 1000 <= len(tokenizer) <= 2000
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>" and tokenizer.model_max_length == 256
    for text in ("the cat sees the ball .", "Café “naïve”  two spaces\tand a tab 😀"):
        inputs = tokenizer(text, return_tensors="pt")
        assert tokenizer.decode(inputs["input_ids"][0]) == text  # byte-level BPE round-trips exactly
    continuation = tokenizer("the cat sees")["input_ids"][2:]
    assert tokenizer.decode(continuation) == " sees", "a word's leading space is part of its token"
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))


def _check_bert(path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)  # new classification head
    assert model.config.vocab_size == len(tokenizer) and tokenizer.model_max_length == 256
    inputs = tokenizer(["a good movie", "the story was really boring today ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, 3)


def _check_image_model(path: Path) -> None:
    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForImageClassification.from_pretrained(path, num_labels=3, ignore_mismatched_sizes=True)
    pixel_values = processor(_image(), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    assert logits.shape == (1, 3)


CHECKS = {"gpt2": _check_gpt2, "bert": _check_bert, "vit": _check_image_model, "resnet": _check_image_model}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_offline_and_runs_a_forward_pass(checkpoints, family):
    path = checkpoints / family
    assert json.loads((path / "config.json").read_text())["model_type"] == family
    assert AutoConfig.from_pretrained(path).model_type == family
    assert (path / "model.safetensors").is_file()
    CHECKS[family](path)


def test_checkpoints_have_the_hub_architectures(checkpoints):
    architectures = {family: AutoConfig.from_pretrained(checkpoints / family).architectures for family in FAMILIES}
    # ViT without a head, like google/vit-base-patch16-224-in21k; ResNet with one to replace, like resnet-50.
    assert architectures == {
        "gpt2": ["GPT2LMHeadModel"],
        "bert": ["BertForMaskedLM"],
        "vit": ["ViTModel"],
        "resnet": ["ResNetForImageClassification"],
    }
    resnet = AutoConfig.from_pretrained(checkpoints / "resnet")
    assert resnet.num_labels == 10 and resnet.id2label[0] == "class_0"


def test_bert_tokenizer_knows_its_words_and_pads(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints / "bert")
    ids = tokenizer("a good movie")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "good", "movie", "[SEP]"]
    assert tokenizer.unk_token_id not in ids
    unseen = tokenizer.tokenize("Xylophones")  # lower-cased, then split into known pieces, still no [UNK]
    assert unseen[0] == "x" and "[UNK]" not in unseen
    pair = tokenizer("the cat", "a dog")
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    batch = tokenizer(["good", "a very long and boring film"], padding=True)
    assert tokenizer.pad_token == "[PAD]" and batch["input_ids"][0][-1] == tokenizer.pad_token_id
    assert batch["attention_mask"][0][-1] == 0


def test_rerun_keeps_existing_checkpoints_and_force_rewrites_the_same_files(checkpoints):
    before = {path: path.read_bytes() for path in (checkpoints / "bert").iterdir()}
    assert _make(checkpoints).splitlines() == [
        f"kept {checkpoints / f} (already there; --force rewrites it)" for f in FAMILIES
    ]
    assert _make(checkpoints, "--families", "bert", "--force").splitlines() == [f"wrote {checkpoints / 'bert'}"]
    # Seeded weights and a deterministic tokenizer: a rewrite is byte for byte the same.
    assert {path: path.read_bytes() for path in (checkpoints / "bert").iterdir()} == before
