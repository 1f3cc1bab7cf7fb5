"""Where the app keeps its files: LORA_LAB_HOME (default ./workspace).

    LORA_LAB_HOME/runs/, uploads/       the local user's (local single-user mode, and the operator's view)
    LORA_LAB_HOME/users/<key>/runs/     each signed-in user's or visitor's runs (key: see identity.py)
    LORA_LAB_HOME/users/<key>/uploads/  ... and uploads
    LORA_LAB_HOME/demo/                 demo checkpoints and sample data, shared

On Hugging Face Spaces point LORA_LAB_HOME at persistent storage (/data/...) so runs survive restarts.
"""

import os
from pathlib import Path

from finetune.rundir import write_json_atomic
from webapp.services.identity import KEY, LOCAL_KEY, check_key

# The source tree: the trainer is launched as `accelerate launch finetune/train.py` from here.
REPO = Path(__file__).resolve().parents[2]
ACCELERATE_PRESETS = REPO / "configs" / "accelerate"
FAMILY_CONFIGS = REPO / "configs"
USER_FILE = "user.json"  # {"name": display name} in each user's folder, for an operator's view


def home() -> Path:
    path = Path(os.environ.get("LORA_LAB_HOME", "workspace")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_root(key: str = LOCAL_KEY) -> Path:
    """The folder holding one user's runs/ and uploads/ (LORA_LAB_HOME itself for the local user).

    Other users' folders are made by their first upload or run, not by a page view: visitors who only
    look leave nothing behind.
    """
    key = check_key(key)
    return home() if key == LOCAL_KEY else home() / "users" / key


def runs_dir(key: str = LOCAL_KEY) -> Path:
    return _made(home() / "runs") if key == LOCAL_KEY else user_root(key) / "runs"


def uploads_dir(key: str = LOCAL_KEY) -> Path:
    return _made(home() / "uploads") if key == LOCAL_KEY else user_root(key) / "uploads"


def register(key: str, name: str) -> None:
    """Record ``name`` as the display name of the user folder ``key`` (once)."""
    if key != LOCAL_KEY and not (user_root(key) / USER_FILE).is_file():
        write_json_atomic(_made(user_root(key)) / USER_FILE, {"name": name})


def demo_dir() -> Path:
    return _sub(Path("demo"))


def owners() -> list[str]:
    """Every user key with a folder here, the local user first."""
    users = home() / "users"
    found = sorted(p.name for p in users.iterdir() if p.is_dir() and KEY.fullmatch(p.name)) if users.is_dir() else []
    return [LOCAL_KEY, *found]


def all_runs_dirs() -> dict[str, Path]:
    """The runs folder of every user, by user key (what the job runner serves)."""
    return {key: runs_dir(key) for key in owners()}


def _sub(relative: Path) -> Path:
    return _made(home() / relative)


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
