"""Demo checkpoints and sample data, so the app works offline on a fresh machine.

    python -m webapp.services.demo DIR

writes DIR/checkpoints/{gpt2,bert,vit,resnet} (finetune.tiny_checkpoints: tiny random-init models
with locally trained tokenizers) and DIR/samples/ (one learnable data set per task). It runs in its
own process because it imports torch; ``ensure_demo`` starts it and waits, once per workspace.
"""

import csv
import fcntl
import random
import subprocess
import sys
from pathlib import Path

READY = "ready"  # marker file: everything below was written completely
SAMPLES = {"causal-lm": "stories.txt", "text-classification": "reviews.csv", "image-classification": "colours"}

_POSITIVE = "good great wonderful excellent amazing brilliant lovely pleasant charming delightful".split()
_NEGATIVE = "bad awful boring terrible horrible dreadful dull poor weak disappointing".split()
_SUBJECTS = ("the movie", "this film", "the story", "the acting", "the music", "the ending", "the plot", "the cast")
_FRAMES = ("{s} was {a} .", "i think {s} is {a} .", "honestly, {s} felt {a} from start to end .",
           "{s} was {a}, as everyone says .", "in my opinion {s} is really {a} .")
_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def ensure_demo(directory: Path) -> Path:
    """Write the demo files under ``directory`` unless they are there already (blocks ~20 s the first time)."""
    if not (directory / READY).is_file():
        subprocess.run([sys.executable, "-m", "webapp.services.demo", str(directory)], check=True,
                       capture_output=True, text=True)
    return directory


def sample_path(directory: Path, task: str) -> Path:
    return directory / "samples" / SAMPLES[task]


def checkpoint_path(directory: Path, family: str) -> Path:
    return directory / "checkpoints" / family


def write_reviews(path: Path, rows: int = 360, seed: int = 0) -> Path:
    """Film reviews whose sentiment is carried by the adjective: learnable in a few epochs."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(rows):
            label, words = ("positive", _POSITIVE) if i % 2 else ("negative", _NEGATIVE)
            writer.writerow([rng.choice(_FRAMES).format(s=rng.choice(_SUBJECTS), a=rng.choice(words)), label])
    return path


def write_stories(path: Path, lines: int = 500) -> Path:
    """Template English sentences, one document per line."""
    from finetune.tiny_checkpoints import corpus

    path.write_text("\n".join(corpus(lines, seed=1)[-lines:]) + "\n")
    return path


def write_colours(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    """Noisy solid-colour 48x48 images, one sub-folder per colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, rgb in _COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 30, (48, 48, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{name}_{i:03d}.png")
    return root


def make_demo(directory: Path) -> None:
    from finetune.tiny_checkpoints import make_tiny_checkpoints

    directory.mkdir(parents=True, exist_ok=True)
    # Two app sessions may ask at once: the second waits for the first and then finds the marker.
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / READY).is_file():
            return
        make_tiny_checkpoints(directory / "checkpoints")
        samples = directory / "samples"
        samples.mkdir(exist_ok=True)
        write_reviews(samples / SAMPLES["text-classification"])
        write_stories(samples / SAMPLES["causal-lm"])
        write_colours(samples / SAMPLES["image-classification"])
        (directory / READY).write_text("ok\n")


if __name__ == "__main__":
    make_demo(Path(sys.argv[1]))
