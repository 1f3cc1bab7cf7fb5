"""Where the app keeps its files: LORA_LAB_HOME (default ./workspace) holding runs/, uploads/, demo/.

On Hugging Face Spaces point LORA_LAB_HOME at persistent storage (/data/...) so runs survive restarts.
"""

import os
from pathlib import Path

# The source tree: the trainer is launched as `accelerate launch finetune/train.py` from here.
REPO = Path(__file__).resolve().parents[2]
ACCELERATE_PRESETS = REPO / "configs" / "accelerate"
FAMILY_CONFIGS = REPO / "configs"


def home() -> Path:
    path = Path(os.environ.get("LORA_LAB_HOME", "workspace")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    return _sub("runs")


def uploads_dir() -> Path:
    return _sub("uploads")


def demo_dir() -> Path:
    return _sub("demo")


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
