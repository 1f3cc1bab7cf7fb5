"""Tiny random-init checkpoints of the four supported architectures, made offline.

    python -m finetune.tiny_checkpoints DIR [--families gpt2 bert vit resnet] [--force]

writes DIR/gpt2, DIR/bert, DIR/vit and DIR/resnet, each loadable with ``from_pretrained`` like the
real hub checkpoints they stand in for (gpt2, bert-base-uncased, google/vit-base-patch16-224-in21k,
microsoft/resnet-50): same model classes and processors, a few layers of width 64. Tokenizers are
trained here with `tokenizers` on a built-in corpus. Tests and the offline demo use them.
"""

import argparse
import itertools
from pathlib import Path
from typing import Iterable, Optional

import torch

FAMILIES = ("gpt2", "bert", "vit", "resnet")
CONTEXT = 256  # tokens: enough for the demo data, small enough to stay fast on CPU
IMAGE_SIZE = 32  # pixels

_SUBJECTS = ("the movie", "this film", "the story", "the actor", "my friend", "the cat", "a dog", "the book",
             "the weather", "our team", "the music", "this picture", "the city", "the teacher", "a bird")
_VERBS = ("was", "is", "seems", "looked", "felt", "sounds", "became", "remains")
_WORDS = ("good", "great", "wonderful", "bad", "awful", "boring", "funny", "long", "short", "bright", "dark",
          "happy", "sad", "quiet", "loud", "red", "green", "blue", "new", "old", "fast", "slow", "warm", "cold")
_TAILS = ("today", "again", "in the end", "at night", "for everyone", "as always", "this time", "", "")


def corpus() -> list[str]:
    """A few thousand template sentences covering the words the demo data and tests use."""
    return [f"{s} {v} {w} {t}".strip() + " ." for s, v, w, t in itertools.product(_SUBJECTS, _VERBS, _WORDS, _TAILS)]


def _save(directory: Path, model, processor) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_gpt2(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                      unk_token="<|endoftext|>", model_max_length=CONTEXT)
    eos = wrapped.eos_token_id
    config = GPT2Config(vocab_size=len(wrapped), n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos)
    return _save(directory, GPT2LMHeadModel(config), wrapped)


def make_bert(directory: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    # Wrapping a `tokenizers` object: BertTokenizer(vocab_file=...) is ignored in transformers 5.
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=CONTEXT)
    config = BertConfig(vocab_size=len(wrapped), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=CONTEXT, pad_token_id=wrapped.pad_token_id)
    return _save(directory, BertForMaskedLM(config), wrapped)


def make_vit(directory: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128)
    processor = ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return _save(directory, ViTModel(config), processor)


def make_resnet(directory: Path) -> Path:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    # Like microsoft/resnet-50: an ImageNet-style head of its own, replaced when fine-tuning.
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10,
                          id2label={i: f"class_{i}" for i in range(10)}, label2id={f"class_{i}": i for i in range(10)})
    processor = ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_pct=1.0)
    return _save(directory, ResNetForImageClassification(config), processor)


MAKERS = {"gpt2": make_gpt2, "bert": make_bert, "vit": make_vit, "resnet": make_resnet}


def make_tiny_checkpoints(out_dir: str | Path, families: Iterable[str] = FAMILIES, force: bool = False) -> dict[str, Path]:
    """Write the requested families under ``out_dir`` (existing ones kept unless ``force``)."""
    written = {}
    for family in families:
        directory = Path(out_dir) / family
        if force or not (directory / "config.json").is_file():
            torch.manual_seed(0)  # the same weights every time
            MAKERS[family](directory)
            print(f"wrote {directory}")
        written[family] = directory
    return written


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write the checkpoints into")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--force", action="store_true", help="rewrite checkpoints that already exist")
    args = parser.parse_args(argv)
    make_tiny_checkpoints(args.out_dir, args.families, args.force)


if __name__ == "__main__":
    main()
