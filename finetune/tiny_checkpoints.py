"""Tiny random-init checkpoints of the four supported architectures, made offline.

    python -m finetune.tiny_checkpoints DIR [--families gpt2 bert vit resnet] [--force]

writes DIR/gpt2, DIR/bert, DIR/vit and DIR/resnet, each loadable with ``from_pretrained`` like the
hub checkpoints they stand in for (gpt2, bert-base-uncased, google/vit-base-patch16-224-in21k,
microsoft/resnet-50): the same model classes, tokenizer kinds and image processors, but two layers of
width 64 and 32x32 images, so the whole project runs and is tested without the hub. Tokenizers are
trained here with `tokenizers` on a built-in corpus; weights are seeded, so every run writes the same files.
"""

import argparse
import random
from pathlib import Path
from typing import Iterable

import torch

FAMILIES = ("gpt2", "bert", "vit", "resnet")
CONTEXT = 256  # tokens: enough for the demo data, small enough to stay fast on CPU
IMAGE_SIZE = 32  # pixels, both sides, after preprocessing
EOS = "<|endoftext|>"  # GPT-2's only special token: bos, eos and unk at once
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Word lists for the corpus. They cover the words of the tests' toy data sets (so those are whole tokens),
# plus enough other everyday English for the tokenizers to learn real sub-words rather than whole sentences.
_SUBJECTS = (
    "the movie",
    "this film",
    "the story",
    "the acting",
    "the actor",
    "my friend",
    "the cat",
    "a dog",
    "the bird",
    "the book",
    "the weather",
    "our team",
    "the music",
    "this picture",
    "the city",
    "the teacher",
    "my neighbour",
    "the old man",
    "a young woman",
    "the children",
    "her brother",
    "his sister",
    "the doctor",
    "the driver",
    "the kitchen",
    "the garden",
    "the train",
    "this song",
    "the restaurant",
    "the hotel",
    "the game",
    "the lesson",
    "the meeting",
    "the river",
    "the village",
)
_ADJECTIVES = (
    "good great wonderful excellent amazing brilliant lovely pleasant charming beautiful delightful "
    "bad awful boring terrible horrible dreadful dull poor weak disappointing annoying ugly "
    "okay fine average ordinary strange curious funny serious long short bright dark happy sad "
    "quiet loud red green blue yellow purple orange white black new old fast slow warm cold "
    "clever silly gentle brave angry tired hungry busy empty crowded expensive cheap"
).split()
_VERBS = (
    "sees likes finds watches reads builds paints loves hates carries opens closes cleans follows "
    "remembers forgets visits chooses describes enjoys explains imagines discovers notices prefers "
    "receives repairs selects teaches throws understands wants wins writes"
).split()
_OBJECTS = (
    "the ball",
    "a tree",
    "the house",
    "a letter",
    "the window",
    "a small boat",
    "the mountain",
    "an apple",
    "the newspaper",
    "a bicycle",
    "the bridge",
    "a flower",
    "the table",
    "a chair",
    "the computer",
    "a question",
    "the answer",
    "a picture",
    "the door",
    "a cup of coffee",
    "the market",
    "a yellow umbrella",
    "the station",
    "a birthday present",
    "the forest",
)
_ADVERBS = (
    "today",
    "again",
    "in the end",
    "at night",
    "for everyone",
    "as always",
    "this time",
    "yesterday",
    "every morning",
    "on sunday",
    "after dinner",
    "before school",
    "quite quickly",
    "very slowly",
    "without a word",
    "with great care",
    "once more",
    "in the summer",
    "during the winter",
)
_VERBS_BE = ("was", "is", "seems", "looked", "felt", "sounds", "became", "remains", "was not", "is really")
_OPINIONS = ("i think", "we believe", "everyone says", "honestly,", "to be fair,", "in my opinion,", "sadly,")
_NAMES = ("alice", "bob", "charlotte", "daniel", "emma", "francis", "grace", "henry", "isabel", "jack")
_PLACES = ("london", "paris", "berlin", "madrid", "tokyo", "chicago", "sydney", "toronto", "lisbon", "vienna")
_NUMBERS = ("one", "two", "three", "four", "five", "seven", "ten", "twelve", "twenty", "a hundred")
_SLOTS = {
    "subject": _SUBJECTS,
    "other": _SUBJECTS,
    "adj": _ADJECTIVES,
    "adj2": _ADJECTIVES,
    "verb": _VERBS,
    "object": _OBJECTS,
    "when": _ADVERBS,
    "be": _VERBS_BE,
    "opinion": _OPINIONS,
    "name": _NAMES,
    "place": _PLACES,
    "number": _NUMBERS,
}
_TEMPLATES = (
    "{subject} {be} {adj} {when} .",
    "{opinion} {subject} {be} {adj} .",
    "{subject} {verb} {object} {when} .",
    "{subject} {verb} {number} {adj} things .",
    "{name} {verb} {object} in {place} {when}.",
    "why does {subject} look so {adj} {when} ?",
    "{subject} was {adj}, but {other} was not {adj2}!",
    'the review said: "{adj} and {adj2}" ({number} stars).',
)


def _sentence(rng: random.Random) -> str:
    template = rng.choice(_TEMPLATES)
    return template.format(**{slot: rng.choice(words) for slot, words in _SLOTS.items()})


def corpus(sentences: int = 600, seed: int = 0) -> list[str]:
    """Varied template sentences, the same list every call (seeded) so tokenizers train deterministically."""
    rng = random.Random(seed)
    every_word = [" ".join(words) for words in _SLOTS.values()]  # so no listed word is left to chance
    return every_word + [_sentence(rng) for _ in range(sentences)]


def _save(directory: Path, model, processor) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)  # safetensors by default
    processor.save_pretrained(directory)
    return directory


def make_gpt2(directory: Path) -> Path:
    """GPT2LMHeadModel with a byte-level BPE tokenizer, like the hub's gpt2.

    The tokenizer round-trips any text exactly, and a word's leading space belongs to its token, so a
    continuation decoded on its own starts with the space that separates it from the prompt.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # The full byte alphabet up front: any text still encodes, even characters the corpus never shows.
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=[EOS], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=CONTEXT
    )
    eos = wrapped.eos_token_id
    # No pad token, as in gpt2: the project's text tasks set pad = eos themselves. Unlike gpt2, the input and
    # output embeddings are separate matrices: frozen random ones cap what LoRA can learn, so the demo preset
    # adapts both (catalog.DEMO_OVERRIDES), and two LoRA updates of one tied matrix would not merge correctly.
    config = GPT2Config(
        vocab_size=len(wrapped),
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        tie_word_embeddings=False,
    )
    return _save(directory, GPT2LMHeadModel(config), wrapped)


def _wordpiece_vocab(normalizer, pre_tokenizer) -> dict[str, int]:
    """A WordPiece vocabulary learnt from the corpus: specials, then every BPE piece plain and "##"-prefixed.

    Learnt with BpeTrainer rather than WordPieceTrainer because the latter numbers its "##" pieces in
    hash-map order, so ties pick different merges from run to run (huggingface/tokenizers#1794).
    """
    from tokenizers import Tokenizer, models, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer, bpe.pre_tokenizer = normalizer, pre_tokenizer
    bpe.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=800, show_progress=False))
    pieces = sorted(bpe.get_vocab())
    return {token: i for i, token in enumerate([*BERT_SPECIALS, *pieces, *(f"##{p}" for p in pieces)])}


def make_bert(directory: Path) -> Path:
    """BertForMaskedLM with an uncased WordPiece tokenizer, like bert-base-uncased."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    vocab = _wordpiece_vocab(normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tokenizer.add_special_tokens(list(BERT_SPECIALS))  # so "[SEP]" in a text is one token, never split
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    # Wrap the `tokenizers` object: in transformers 5, BertTokenizer(vocab_file=...) ignores the file and
    # maps every word to [UNK]. token_type_ids are asked for because bert-base-uncased returns them too.
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=CONTEXT,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    config = BertConfig(
        vocab_size=len(wrapped),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=CONTEXT,
        pad_token_id=wrapped.pad_token_id,
    )
    return _save(directory, BertForMaskedLM(config), wrapped)


def make_vit(directory: Path) -> Path:
    """Headless ViTModel, like google/vit-base-patch16-224-in21k: a classifier is added when fine-tuning."""
    # The PIL class directly: the default ViTImageProcessor wants torchvision. Both save as "ViTImageProcessor".
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    )
    processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return _save(directory, ViTModel(config), processor)


def make_resnet(directory: Path) -> Path:
    """ResNetForImageClassification with a 10-class head of its own, like microsoft/resnet-50's ImageNet head."""
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    labels = [f"class_{i}" for i in range(10)]
    # Fine-tuning must replace this head (ignore_mismatched_sizes), exactly as with the real checkpoint.
    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        layer_type="basic",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    # resnet-50's preprocessing scaled down: resize the short side to 32 / 0.875 = 36, centre-crop 32x32.
    processor = ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=0.875)
    return _save(directory, ResNetForImageClassification(config), processor)


MAKERS = {"gpt2": make_gpt2, "bert": make_bert, "vit": make_vit, "resnet": make_resnet}


def make_tiny_checkpoints(
    out_dir: str | Path, families: Iterable[str] = FAMILIES, force: bool = False
) -> dict[str, Path]:
    """Write the requested families under ``out_dir``; ones already there are kept unless ``force``.

    Returns every requested family's directory, written now or before.
    """
    written = {}
    for family in families:
        directory = Path(out_dir) / family
        if force or not (directory / "config.json").is_file():
            torch.manual_seed(0)  # per family: the same weights whichever families are asked for
            MAKERS[family](directory)
            print(f"wrote {directory}")
        else:
            print(f"kept {directory} (already there; --force rewrites it)")
        written[family] = directory
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to write the checkpoints into")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--force", action="store_true", help="rewrite checkpoints that already exist")
    args = parser.parse_args(argv)
    make_tiny_checkpoints(args.out_dir, args.families, args.force)


if __name__ == "__main__":
    main()
