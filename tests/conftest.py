"""Shared fixtures: tiny local checkpoints, learnable toy data sets, and the real command line."""

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Everything offline: the tests must never reach for the hub.
OFFLINE_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


# Tests that start processes (the trainer's command line, the app, a browser, the demo builder) are marked
# "integration": `pytest -m "not integration"` is the fast tier. A test is one when it uses a fixture that starts
# processes, or its module calls the command line or subprocess itself.
PROCESS_FIXTURES = {"demo_dir", "trained_runs", "lab", "no_runner", "shared", "app", "one_and_two_process_runs"}
PROCESS_CALLS = ("run_cli(", "subprocess.", "Popen(", "launch_processes(")


def pytest_collection_modifyitems(items):
    for item in items:
        source = Path(item.fspath).read_text()
        if PROCESS_FIXTURES & set(item.fixturenames) or any(call in source for call in PROCESS_CALLS):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from finetune.tiny_checkpoints import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def write_lm_text(path: Path, lines: int = 400, seed: int = 0) -> Path:
    """A small language with strong regularities: easy for even a tiny model to learn."""
    rng = random.Random(seed)
    subjects, verbs, objects = (
        ["the cat", "a dog", "the bird", "my friend"],
        ["sees", "likes", "finds"],
        ["the ball", "a tree", "the house"],
    )
    path.write_text(
        "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(lines)) + "\n"
    )
    return path


def write_sentiment_csv(path: Path, rows: int = 240, seed: int = 0, labels=("negative", "positive")) -> Path:
    """Texts whose label is given away by one word: learnable in a few epochs."""
    rng = random.Random(seed)
    cues = {labels[0]: ["bad", "awful", "boring"], labels[-1]: ["good", "great", "wonderful"]}
    fillers = ["the movie was", "this film is", "i think the story is", "the acting felt"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(rows):
            label = labels[i % len(labels)]
            writer.writerow([f"{rng.choice(fillers)} {rng.choice(cues.get(label, ['okay']))}", label])
    return path


def write_image_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """Solid-colour images with noise, one sub-folder per colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def run_cli(
    *args: str,
    launcher: tuple[str, ...] = (sys.executable, "-m", "finetune.train"),
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run the trainer through its real command line."""
    return subprocess.run(
        [*launcher, *args], cwd=REPO, env=env or OFFLINE_ENV, capture_output=True, text=True, timeout=timeout
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]
