"""The reproducibility record of a run, and `python -m finetune.reproduce` training a run again and comparing."""

import hashlib
import json
import sys
import time

import pytest

from finetune.export.model_card import model_card
from finetune.rundir import RunDirectory
from finetune.training import reproducibility
from tests.conftest import read_json, run_cli, write_image_folder, write_sentiment_csv

REPRODUCE = (sys.executable, "-m", "finetune.reproduce")


@pytest.fixture(scope="module")
def original(tiny_checkpoints, tmp_path_factory):
    """A tiny finished run (fp32, 3 steps) on its own data file."""
    root = tmp_path_factory.mktemp("reproduce")
    data = write_sentiment_csv(root / "reviews.csv", rows=40)
    out = root / "original"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--learning_rate",
        "2e-3",
        "--mixed_precision",
        "no",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_the_record_holds_the_real_versions_device_data_hash_and_command(original):
    import accelerate
    import peft
    import torch
    import transformers

    record = RunDirectory(original).read_reproducibility()
    assert record == read_json(original / "reproducibility.json")
    versions = record["versions"]
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert versions["peft"] == peft.__version__ and versions["accelerate"] == accelerate.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    train = original.parent / "reviews.csv"
    assert record["data"]["train_file"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert set(record["data"]) == {"train_file"}, "no validation or test file was given"
    assert record["device"] == {"device": "cpu", "mixed_precision": "no", "num_processes": 1, "distributed_type": "NO"}
    assert record["command"]["argv"][-2:] == ["--mixed_precision", "no"]
    assert record["command"]["launched_processes"] == 1
    assert set(record["git"]) >= {"commit", "dirty"}


def test_a_changed_data_file_or_folder_changes_its_hash(tmp_path):
    deadline = time.monotonic() + 60
    data = write_sentiment_csv(tmp_path / "a.csv", rows=10)
    before = reproducibility.digest(data, deadline)["sha256"]
    data.write_text(data.read_text().replace("good", "bad", 1))
    assert reproducibility.digest(data, deadline)["sha256"] not in (before, None)
    folder = write_image_folder(tmp_path / "images", per_class=2)
    first = reproducibility.digest(folder, deadline)
    assert first["files"] == 6 and first["sha256"]
    (folder / "red" / "0.png").rename(folder / "red" / "9.png")
    assert reproducibility.digest(folder, deadline)["sha256"] != first["sha256"], "a renamed file changes it"


def test_hashing_stops_at_its_deadline_and_says_so(tmp_path):
    data = write_sentiment_csv(tmp_path / "a.csv", rows=10)
    late = reproducibility.digest(data, deadline=time.monotonic() - 1)
    assert late["sha256"] is None and "longer than" in late["incomplete"]
    assert (
        reproducibility.digest(tmp_path / "gone.csv", time.monotonic() + 60)["incomplete"] == "no such file or folder"
    )


def test_the_git_state_of_a_folder_that_is_no_checkout_is_unknown(tmp_path):
    assert reproducibility.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_reproducing_a_finished_run_matches_its_metrics(original, tmp_path):
    new = tmp_path / "again"
    result = run_cli(str(original), "--output_dir", str(new), launcher=REPRODUCE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finetuned eval_loss" in result.stdout and "The metrics match" in result.stdout
    # The commit's uncommitted changes (git.diff_sha256) may differ while the project is being edited: not the data.
    assert "WARNING" not in result.stdout and "data.train_file" not in result.stdout
    assert read_json(new / "metrics.json")["finetuned"] == read_json(original / "metrics.json")["finetuned"]
    assert RunDirectory(new).read_config()["seed"] == RunDirectory(original).read_config()["seed"]


def test_a_run_reproduced_on_a_changed_data_file_reports_the_changed_hash(original, tmp_path):
    data = original.parent / "reviews.csv"
    kept = data.read_bytes()
    data.write_bytes(kept.replace(b"good", b"awful"))
    try:
        result = run_cli(str(original), "--output_dir", str(tmp_path / "changed"), launcher=REPRODUCE)
    finally:
        data.write_bytes(kept)
    old_sha = hashlib.sha256(kept).hexdigest()
    new_sha = read_json(tmp_path / "changed" / "reproducibility.json")["data"]["train_file"]["sha256"]
    assert new_sha != old_sha
    assert f"WARNING: train_file changed since the original run (sha256 {old_sha[:12]} now {new_sha[:12]})" in (
        result.stdout
    )
    assert "but the data differ" in result.stdout


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ({"device": "cpu", "num_processes": 1, "distributed_type": "NO"}, ["-m", "finetune.train"]),
        (
            {"device": "cpu", "num_processes": 2, "distributed_type": "MULTI_GPU"},
            ["-m", "accelerate.commands.launch", "--config_file", "cpu_ddp.yaml", "--num_processes", "2"],
        ),
    ],
)
def test_the_reproduction_launches_as_many_processes_on_the_same_kind_of_device(tmp_path, device, expected):
    from finetune.reproduce import launch_command

    run = RunDirectory(tmp_path / "run")
    run.update_status(state="finished")
    run.write_reproducibility({"device": device})
    command, env, note = launch_command(tmp_path / "new" / "config.yaml", run)
    shown = [part if part.startswith("-") or "/" not in part else part.rsplit("/", 1)[1] for part in command]
    assert shown[1 : 1 + len(expected)] == expected and shown[-2:] == ["--config", "config.yaml"]
    assert env["CUDA_VISIBLE_DEVICES"] == "" and note is None, "a CPU run stays on the CPU"


@pytest.mark.parametrize("where", ["not empty", "not finished"])
def test_reproduce_refuses_a_used_destination_and_an_unfinished_run(original, tmp_path, where):
    new = tmp_path / "new"
    new.mkdir()
    if where == "not empty":
        (new / "notes.txt").write_text("mine")
        run = original
    else:
        run = tmp_path / "running"
        RunDirectory(run).update_status(state="running")
        new.rmdir()
    result = run_cli(str(run), "--output_dir", str(new), launcher=REPRODUCE)
    assert result.returncode == 2
    assert ("is not an empty folder" if where == "not empty" else "expected a finished run") in result.stderr
    assert not (new / "config.yaml").exists()


def test_the_model_card_carries_the_record(original):
    card = str(model_card(original, merged=False))
    record = read_json(original / "reproducibility.json")
    assert "## Reproducibility" in card
    assert f"torch {record['versions']['torch']}" in card
    assert f"train_file `reviews.csv` `{record['data']['train_file']['sha256'][:12]}`" in card
    assert "python -m finetune.reproduce RUN --output_dir NEW" in card
    assert str(original.parent) not in card, "no path of the training machine"


def test_a_card_of_a_run_without_a_record_says_so(tmp_path):
    run = RunDirectory(tmp_path)
    run.write_metrics({"task": "text-classification", "finetuned": {"accuracy": 0.9}})
    (tmp_path / "config.yaml").write_text(json.dumps({"train_file": "/data/reviews.csv"}))
    assert "No reproducibility record" in str(model_card(tmp_path, merged=False))
