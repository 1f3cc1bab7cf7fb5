"""The model families the app offers, and checking a checkpoint someone typed in.

A preset uses the real hub checkpoint when the hub answers (or it is cached); otherwise it falls
back to the local demo checkpoint (DEMO_DESCRIPTIONS says what each is), and says so.
"""

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from finetune.errors import UserError
from finetune.task_kinds import DEFAULT_TASK
from webapp.services import demo, workspace


@dataclass(frozen=True)
class Family:
    """A preset: the hub checkpoint, its default task and the per-family YAML holding its defaults."""

    key: str
    label: str
    hub_id: str

    @property
    def task(self) -> str:
        """The task this family trains by default (the task table's DEFAULT_TASK)."""
        return DEFAULT_TASK[self.key]

    def defaults(self) -> dict:
        """Training settings from configs/<family>.yaml (the same commented file the CLI uses)."""
        values = yaml.safe_load((workspace.FAMILY_CONFIGS / f"{self.key}.yaml").read_text())
        return {k: v for k, v in values.items() if k not in ("model_name_or_path", "train_file", "output_dir")}


FAMILIES = {
    "gpt2": Family("gpt2", "GPT-2 · text generation", "gpt2"),
    "bert": Family("bert", "BERT · text classification", "bert-base-uncased"),
    "vit": Family("vit", "ViT · image classification", "google/vit-base-patch16-224-in21k"),
    "resnet": Family("resnet", "ResNet · image classification", "microsoft/resnet-50"),
}
# What each offline demo checkpoint is (webapp.services.demo makes them), for the New run page.
DEMO_DESCRIPTIONS = {
    "gpt2": "a tiny random-init GPT-2 (2 layers, width 64, 251K parameters) made on this machine, learning "
    "template English sentences; before fine-tuning it writes random tokens",
    "bert": "real pretrained all-MiniLM-L6-v2 weights (BERT architecture, 6 layers, 22.7M parameters, "
    "bert-base-uncased vocabulary) shipped with the app; its sample data is the sentiment of film reviews",
    "vit": "a tiny random-init ViT (2 layers, width 64, 85K parameters) made on this machine, learning "
    "scikit-learn's handwritten digits (real 8x8 scans, upscaled to 32x32)",
    "resnet": "a tiny random-init ResNet (2 stages of 16 and 32 channels, 22K parameters) made on this machine, "
    "learning scikit-learn's handwritten digits (real 8x8 scans, upscaled to 32x32)",
}
# Settings under which each demo checkpoint learns its sample data within a minute on 2 CPU cores. MiniLM is
# pre-trained: LoRA's usual step sizes work and 3 epochs suffice. The others are random-init: larger steps and
# more passes; ViT without LoRA dropout; GPT-2 also adapts its MLPs and both embedding matrices, as frozen
# random embeddings cap what attention-only LoRA learns (perplexity 1052 -> 801).
# Measured through the real CLI on 2 CPU cores (wall time with start-up; base -> fine-tuned on the held-out 10%):
# BERT 25 s, accuracy 0.53 -> 0.94; GPT-2 10 s, perplexity 1051 -> 8.7; ViT 22 s, accuracy 0.11 -> 0.95;
# ResNet 17 s, accuracy 0.10 -> 0.99.
# Each demo checkpoint's training cost (CPU-seconds per example; GPT-2: per 128-token block) under its overrides,
# from Check (finetune.preflight) on its sample data on 2 CPU cores (x86, AVX512-BF16): the New run page's time
# estimate for a demo checkpoint on the user's own data. Real-size checkpoints: advice.SECONDS_PER_EXAMPLE.
DEMO_SECONDS_PER_EXAMPLE = {"gpt2": 0.02, "bert": 0.02, "vit": 0.0012, "resnet": 0.0027}
DEMO_OVERRIDES = {
    "gpt2": {
        "learning_rate": 1e-2,
        "num_train_epochs": 10,
        "lora_target_modules": ["c_attn", "c_proj", "c_fc", "lm_head", "wte"],
    },
    "bert": {"learning_rate": 1e-3, "head_learning_rate": 5e-3, "num_train_epochs": 3},
    "vit": {
        "learning_rate": 5e-3,
        "head_learning_rate": 1e-2,
        "num_train_epochs": 10,
        "per_device_train_batch_size": 16,
        "lora_dropout": 0.0,
    },
    "resnet": {
        "learning_rate": 5e-3,
        "head_learning_rate": 1e-2,
        "num_train_epochs": 5,
        "per_device_train_batch_size": 16,
    },
}


@dataclass(frozen=True)
class Checkpoint:
    name_or_path: str
    model_type: str
    task: str
    demo: bool = False


def hub_online(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face Hub can be reached (False at once when HF_HUB_OFFLINE is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def preset_checkpoint(family: Family, online: bool) -> Checkpoint:
    """The hub checkpoint when usable, else the demo one (made on first use)."""
    if online or hub_cached(family.hub_id):
        return Checkpoint(family.hub_id, family.key, family.task)
    path = demo.checkpoint_path(demo.ensure_demo(workspace.demo_dir()), family.key)
    return Checkpoint(str(path), family.key, family.task, demo=True)


def inspect_checkpoint(name_or_path: str, allow_local: bool = True) -> Checkpoint:
    """Read a checkpoint's config.json (local folder or hub) and check it is a supported kind.

    On a shared app (``allow_local`` False) only hub ids are accepted: a typed path could name another
    user's run folder on this server.
    """
    name = name_or_path.strip()
    if not name:
        raise UserError("model_name_or_path: required; enter a hub id (e.g. gpt2) or a local folder")
    if not allow_local and (name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()):
        raise UserError(
            f"model_name_or_path: {name!r} is a local path; on this shared app enter a hub id "
            "(e.g. gpt2 or bert-base-uncased)"
        )
    config = _read_config(name)
    model_type = config.get("model_type")
    if model_type not in DEFAULT_TASK:
        raise UserError(
            f"model_name_or_path: {name!r} is a {model_type!r} checkpoint; "
            f"supported kinds are {', '.join(DEFAULT_TASK)}"
        )
    path = Path(name).expanduser()
    return Checkpoint(str(path.resolve()) if path.is_dir() else name, model_type, DEFAULT_TASK[model_type])


def _read_config(name: str) -> dict:
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            return json.loads((path / "config.json").read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "config.json")).read_text())
    except Exception as err:  # missing file, bad JSON, unknown repo, no network: all the same to the user
        raise UserError(
            f"model_name_or_path: cannot read {name!r}; expected a hub id reachable from this machine "
            f"or a local folder with config.json ({type(err).__name__})"
        ) from err


def sample_data(task: str) -> Path:
    return demo.sample_path(demo.ensure_demo(workspace.demo_dir()), task)
