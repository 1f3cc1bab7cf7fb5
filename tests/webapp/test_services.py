"""The web app's services: checkpoints, uploads, launch plans, devices, and managing runs on disk."""

import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from finetune.errors import ConfigError, UserError
from finetune.rundir import RunDirectory, process_start
from tests.conftest import write_sentiment_csv
from tests.webapp.apptest import ACCELERATE
from webapp.runner import jobs
from webapp.services import catalog, devices, launch, runs, uploads
from webapp.services.identity import local_user

LOCAL = local_user()


@pytest.fixture
def home(no_runner) -> Path:
    """A workspace whose runner lock this test holds (see conftest), so queueing starts no background runner."""
    return no_runner


def test_inspect_checkpoint_reads_kind_and_task(tiny_checkpoints):
    tasks = {family: catalog.inspect_checkpoint(str(path)).task for family, path in tiny_checkpoints.items()}
    assert tasks == {
        "gpt2": "causal-lm",
        "bert": "text-classification",
        "vit": "image-classification",
        "resnet": "image-classification",
    }


@pytest.mark.parametrize("case", ["unsupported kind", "missing", "blank"])
def test_inspect_checkpoint_refuses_others(tmp_path, case):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    name = {"unsupported kind": str(llama), "missing": str(tmp_path / "missing"), "blank": "   "}[case]
    with pytest.raises(UserError, match="model_name_or_path") as err:
        catalog.inspect_checkpoint(name)
    if case == "unsupported kind":
        assert "supported kinds are gpt2, bert, vit, resnet" in str(err.value)


def test_presets_fall_back_to_demo_checkpoints_offline(home, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert catalog.hub_online() is False
    checkpoint = catalog.preset_checkpoint(catalog.FAMILIES["bert"], online=False)
    assert checkpoint.demo and Path(checkpoint.name_or_path, "config.json").is_file()
    assert catalog.preset_checkpoint(catalog.FAMILIES["bert"], online=True).name_or_path == "bert-base-uncased"
    samples = [catalog.sample_data(task) for task in ("causal-lm", "text-classification", "image-classification")]
    assert all(path.exists() for path in samples)
    assert sorted(p.name for p in samples[2].iterdir()) == [str(d) for d in range(10)]  # one folder per digit


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "resnet"])
def test_family_defaults_come_from_the_commented_yaml(name):
    family = catalog.FAMILIES[name]
    defaults = family.defaults()
    assert defaults["task"] == family.task and "model_name_or_path" not in defaults


def test_uploads_are_checked_stored_once_and_read_by_the_engine(home, tmp_path):
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=40).read_bytes()
    first = uploads.save_upload(LOCAL, "my reviews.csv", data, "text-classification")
    assert first == uploads.save_upload(LOCAL, "my reviews.csv", data, "text-classification")
    assert first.name == "upload.csv", "stored under a name the app chooses, not the user"
    report = uploads.inspect_data(first, "text-classification")
    assert (report.num_examples, report.text_column, report.label_column) == (40, "review", "sentiment")
    assert report.label_counts == {"negative": 20, "positive": 20} and len(report.preview) == 10
    for name, content, expected in (("notes.pdf", b"%PDF", "expected a .csv/.jsonl"), ("empty.csv", b"", "is empty")):
        with pytest.raises(UserError, match=expected):
            uploads.save_upload(LOCAL, name, content, "text-classification")
    with pytest.raises(UserError, match="label_column"):
        uploads.inspect_data(first, "text-classification", label_column="stars")


def test_launch_plan_validates_every_field_and_gives_the_exact_command(home):
    setup = devices.setups([])[0]
    values = {"model_name_or_path": "gpt2", "train_file": "t.txt", "learning_rate": "abc", "lora_r": 0, "seed": ""}
    with pytest.raises(ConfigError) as err:
        launch.plan(LOCAL, "first", values, setup)
    problems = launch.problems_by_field(err.value)
    assert set(problems) == {"learning_rate", "lora_r"}
    with pytest.raises(UserError, match="run name"):
        launch.plan(LOCAL, "bad name!", {**values, "learning_rate": "2e-4", "lora_r": 8}, setup)
    cfg, command = launch.plan(LOCAL, "first", {**values, "learning_rate": "2e-4", "lora_r": 8}, setup)
    assert cfg.learning_rate == 2e-4 and cfg.seed == 42  # blank fields keep their defaults
    assert command[:5] == [str(ACCELERATE), "launch", "--config_file", "configs/accelerate/cpu.yaml", "--num_processes"]
    run = launch.launch(LOCAL, cfg, setup)
    assert run.read_status()["state"] == "queued"
    job = json.loads(run.job_path.read_text())
    assert job == {"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False}, "names and counts, no command"
    repo = devices.workspace.REPO
    assert jobs.launch_command(run, jobs.Job.read(run)) == [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(repo / "configs/accelerate/cpu.yaml"),
        "--num_processes",
        "1",
        str(repo / "finetune/train.py"),
        "--config",
        str(run.config_path),
        "--output_dir",
        str(run.path),
    ]
    with pytest.raises(UserError, match="exists already"):
        launch.plan(LOCAL, "first", {**values, "learning_rate": "2e-4", "lora_r": 8}, setup)


def test_device_setups_follow_the_gpus_found(monkeypatch):
    assert [s.preset for s in devices.setups([])] == ["cpu"]
    monkeypatch.setattr(devices, "unavailable", lambda preset: None)  # as on a machine with deepspeed installed
    gpus = [devices.Gpu(i, "H100", 81559) for i in range(4)]
    options = devices.setups(gpus)
    assert [(s.preset, s.num_processes) for s in options] == [
        ("single_gpu", 1),
        ("multi_gpu", 2),
        ("multi_gpu", 3),
        ("multi_gpu", 4),
        ("fsdp", 4),
        ("deepspeed_zero2", 4),
    ]
    presets = {s.preset for s in options} | {"cpu"}
    assert all((devices.workspace.ACCELERATE_PRESETS / f"{p}.yaml").is_file() for p in presets)


def _finished_run(root: Path, name: str) -> RunDirectory:
    run = RunDirectory(root / name)
    (run.adapter_dir / "sub").mkdir(parents=True)
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    (run.adapter_dir / "sub" / "x.txt").write_text("x")
    run.config_path.write_text(
        "task: text-classification\nmodel_name_or_path: /srv/models/bert\ntrain_file: /srv/r.csv\n"
    )
    run.update_status(state="finished", started_at=time.time() - 10, total_steps=10)
    for step in (5, 10):
        run.append_event({"event": "train", "step": step, "loss": 1.0 / step})
    return run


def test_runs_are_summarised_managed_and_exported(home):
    root = home / "runs"
    done = _finished_run(root, "done")
    running = RunDirectory(root / "running")
    # 10 steps in the 20 s since the loop started: 2 s per step, 30 steps (60 s) left.
    running.update_status(
        state="running",
        started_at=time.time() - 25,
        total_steps=40,
        loop_started_at=time.time() - 20,
        loop_start_step=0,
    )
    running.append_event({"event": "train", "step": 10, "loss": 0.5, "time": time.time()})
    summaries = {s.name: s for s in runs.list_runs(LOCAL)}
    assert summaries["done"].progress == 1.0 and summaries["done"].task == "text-classification"
    assert summaries["running"].progress == 0.25 and 50 < summaries["running"].eta_seconds < 70
    with zipfile.ZipFile(io.BytesIO(runs.adapter_zip(LOCAL, "done"))) as archive:
        assert sorted(archive.namelist()) == ["done/README.md", "done/adapter_config.json", "done/sub/x.txt"]
        card = archive.read("done/README.md").decode()
        assert "A lora fine-tune of `bert`" in card and "/srv/" not in card, "the run's model card, no server path"
    with pytest.raises(UserError, match="only a cancelled or failed run"):
        runs.resume(LOCAL, "done")
    running.update_status(pid=os.getpid(), pid_started=process_start(os.getpid()))  # a live process, like a trainer
    with pytest.raises(UserError, match="cancel it first"):
        runs.delete(LOCAL, "running")
    runs.delete(LOCAL, "done")
    assert not done.path.exists() and [s.name for s in runs.list_runs(LOCAL)] == ["running"]


def test_resume_requeues_a_cancelled_run_from_its_checkpoint(home):
    run = _finished_run(home / "runs", "stopped")
    run.update_status(state="cancelled")
    jobs.Job("cpu", 1, 0).write(run)
    (run.checkpoints_dir / "step_5").mkdir(parents=True)
    (run.checkpoints_dir / "step_5" / "trainer_state.json").write_text("{}")
    (run.checkpoints_dir / "step_5" / "checkpoint_complete.json").write_text('{"complete": true}')
    runs.resume(LOCAL, "stopped")
    assert run.read_status()["state"] == "queued"
    job = jobs.Job.read(run)
    assert job == jobs.Job("cpu", 1, 0, resume=True)
    assert jobs.launch_command(run, job)[-4:] == ["--output_dir", str(run.path), "--resume_from_checkpoint", "true"]
    assert runs.queue_positions(LOCAL) == {"stopped": 1}


def test_the_adapter_zip_carries_the_model_card_and_no_server_path(home, trained_runs):
    from tests.webapp.conftest import copy_run

    copy_run(trained_runs["bert-lr2e-3"], home, "real")
    with zipfile.ZipFile(io.BytesIO(runs.adapter_zip(LOCAL, "real"))) as archive:
        card = archive.read("real/README.md").decode()
        config = json.loads(archive.read("real/adapter_config.json"))
        info = json.loads(archive.read("real/lora_lab.json"))
        names = archive.namelist()
    assert "[More Information Needed]" not in card and "## Evaluation" in card, "the run's card, not PEFT's template"
    assert config["base_model_name_or_path"] == info["base_model"] == "bert", "the checkpoint's folder name"
    assert "real/adapter_model.safetensors" in names and len(names) >= 5


def test_the_merged_model_zip_loads_with_plain_transformers(home, trained_runs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tests.webapp.conftest import copy_run

    copy_run(trained_runs["bert-lr2e-3"], home, "real")
    with zipfile.ZipFile(io.BytesIO(runs.merged_zip(LOCAL, "real"))) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path)
    assert {"real-merged/config.json", "real-merged/model.safetensors", "real-merged/README.md"} <= set(names)
    assert not any("adapter" in name for name in names), "the adapter is folded in, not shipped beside"
    card = (tmp_path / "real-merged" / "README.md").read_text()
    assert "library_name: transformers" in card and "A lora fine-tune of `bert`" in card
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "real-merged")
    assert model.config.id2label == {0: "negative", 1: "positive"}
