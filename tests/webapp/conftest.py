"""Fixtures for driving the Streamlit pages with AppTest: one workspace per test, shared demo files and runs.

Every test gets its own LORA_LAB_HOME (a tmp dir) holding a link to demo checkpoints made once per
session, plus copies of tiny runs trained once per session through the real command line. Job runners
and trainers started under a test's LORA_LAB_HOME are found by their environment and stopped afterwards.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import OFFLINE_ENV, REPO, run_cli

APP = str(REPO / "webapp" / "app.py")
# The operator's settings the shared-app tests set themselves (``clean_env`` clears them first).
ENV_VARS = (
    "LORA_LAB_USERS",
    "LORA_LAB_OPERATORS",
    "LORA_LAB_MAX_QUEUED_RUNS",
    "LORA_LAB_MAX_RUNNING_RUNS",
    "LORA_LAB_MAX_UPLOAD_MB",
    "LORA_LAB_MAX_STORAGE_MB",
    "LORA_LAB_ALLOW_PUSH",
    "LORA_LAB_MAX_ANONYMOUS_RUNS",
    "HF_TOKEN",
)

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The app's demo checkpoints and samples (what webapp.services.demo makes on first use), made once."""
    directory = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [sys.executable, "-m", "webapp.services.demo", str(directory)],
        cwd=REPO,
        env={**os.environ, **OFFLINE},
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (directory / "ready").is_file()
    return directory


@pytest.fixture(scope="session")
def trained_runs(demo_dir, tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Finished tiny runs, trained once through the real CLI on tiny checkpoints and the demo samples (two at a time).

    BERT is the tiny random-init one, not the demo's MiniLM: these runs stand in for any run on the pages, and
    must stay small (a MiniLM run folder holds 180 MB of checkpoints).
    """
    root = tmp_path_factory.mktemp("trained-runs")
    ckpt, samples = demo_dir / "checkpoints", demo_dir / "samples"
    text_lm = ["--learning_rate", "2e-3"]
    bert = [
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(samples / "reviews.csv"),
        "--task",
        "text-classification",
        "--num_train_epochs",
        "2",
        "--head_learning_rate",
        "1e-2",
    ]
    specs = {
        "gpt2-tiny": [
            "--model_name_or_path",
            str(ckpt / "gpt2"),
            "--train_file",
            str(samples / "stories.txt"),
            "--task",
            "causal-lm",
            "--num_train_epochs",
            "1",
            *text_lm,
        ],
        "bert-lr2e-3": [*bert, "--learning_rate", "2e-3"],
        "bert-lr5e-3": [*bert, "--learning_rate", "5e-3"],
        # No --task: the trainer infers it from the checkpoint (as the CLI's --help says it may).
        "vit-tiny": [
            "--model_name_or_path",
            str(ckpt / "vit"),
            "--train_file",
            str(samples / "digits"),
            "--max_steps",
            "10",
            "--max_eval_samples",
            "200",
        ],
    }

    def train(name: str) -> subprocess.CompletedProcess:
        return run_cli(*specs[name], "--output_dir", str(root / name), env={**OFFLINE_ENV, **OFFLINE})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(specs, pool.map(train, specs)))
    for name, result in results.items():
        assert result.returncode == 0, f"training {name} failed:\n{result.stderr[-3000:]}"
        assert json.loads((root / name / "status.json").read_text())["state"] == "finished", name
    return {name: root / name for name in specs}


def processes_of(home: Path) -> list[int]:
    """Pids of live processes whose environment holds LORA_LAB_HOME=home (job runners, launchers, trainers)."""
    marker = f"LORA_LAB_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def stop_processes_of(home: Path, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process started under this workspace (re-scanned: a runner may spawn)."""
    deadline = time.time() + timeout
    sig = signal.SIGTERM
    while pids := processes_of(home):
        if time.time() > deadline:
            sig = signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        if time.time() > deadline + 5:
            break


@pytest.fixture
def lab(tmp_path, monkeypatch, demo_dir) -> Path:
    """A fresh LORA_LAB_HOME with the session's demo files; offline; processes started under it stopped after."""
    import huggingface_hub.constants
    import streamlit as st

    home = (tmp_path / "lab").resolve()
    (home / "runs").mkdir(parents=True)
    (home / "demo").symlink_to(demo_dir, target_is_directory=True)
    monkeypatch.setenv("LORA_LAB_HOME", str(home))
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    # The hub constants are read at import: pin them, so presets fall back to the demo checkpoints at once
    # (no network probe) and a model cached on this machine cannot change what the pages show.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # The pages cache checkpoint and data descriptions per process; each test has its own workspace.
    st.cache_data.clear()
    st.cache_resource.clear()
    yield home
    stop_processes_of(home)
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def no_runner(lab) -> Path:
    """Hold LORA_LAB_HOME/runner.lock, as a live runner would: the app starts none, queued runs stay queued."""
    with (lab / "runner.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield lab
        fcntl.flock(lock, fcntl.LOCK_UN)


def name_a_hub_model(run: Path) -> Path:
    """``run``'s config.yaml naming a hub id for its base model instead of a checkpoint made for the tests: what a
    shared app accepts when the run resumes (nothing trains where this is used)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "model_name_or_path": "bert-base-uncased"}))
    return run


def copy_run(source: Path, home: Path, name: str) -> Path:
    """A copy of a session run in this workspace's runs folder."""
    target = home / "runs" / name
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def shared(no_runner, clean_env) -> Path:
    """A workspace in "huggingface" mode with carol as the operator (the runner lock held: nothing trains)."""
    clean_env.setenv("LORA_LAB_USERS", "huggingface")
    clean_env.setenv("LORA_LAB_OPERATORS", "carol")
    return no_runner
