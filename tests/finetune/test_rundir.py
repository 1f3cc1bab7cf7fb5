"""RunDirectory: one reader and one writer per file of a run, the web app's runner files included."""

import json
import os

import pytest

from finetune.rundir import RunDirectory, read_json


@pytest.fixture
def run(tmp_path) -> RunDirectory:
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    return run


@pytest.mark.parametrize("text", [None, "task: [unclosed", "- a list\n- not a mapping\n", "", b"\xff\xfe"])
def test_read_config_is_empty_when_missing_or_no_mapping(run, text):
    if isinstance(text, bytes):
        run.config_path.write_bytes(text)
    elif text is not None:
        run.config_path.write_text(text)
    assert run.read_config() == {}


def test_read_config_is_the_raw_mapping(run):
    run.config_path.write_text("task: causal-lm\nlearning_rate: 0.001\nmodel_name_or_path: gpt2\n")
    assert run.read_config() == {"task": "causal-lm", "learning_rate": 0.001, "model_name_or_path": "gpt2"}


def test_adapter_info_round_trip(run):
    assert run.read_adapter_info() == {}, "no adapter before the run finishes"
    info = {"task": "text-classification", "base_model": "bert", "finetune_method": "lora", "labels": ["a", "b"]}
    run.write_adapter_info(info)
    assert run.adapter_info_path == run.path / "adapter" / "lora_lab.json"
    assert json.loads(run.adapter_info_path.read_text()) == info == run.read_adapter_info()
    assert not [p for p in run.adapter_dir.iterdir() if p.name != "lora_lab.json"], "no temporary file left"


def test_record_progress_merges_step_epoch_and_time_into_status(run):
    run.update_status(state="running", total_steps=40, pid=1)
    status = run.record_progress(step=10, epoch=0.5)
    assert run.read_status() == status
    assert (status["state"], status["total_steps"], status["step"], status["epoch"]) == ("running", 40, 10, 0.5)
    assert status["step_at"] == pytest.approx(status["updated_at"], abs=1)
    assert run.record_progress(step=20, epoch=1.0)["step"] == 20


def test_runner_files(run):
    assert (run.read_job(), run.read_launch(), run.read_killed()) == ({}, {}, {})
    assert run.cancel_requested_at() is None
    run.write_job({"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False})
    assert run.read_job()["preset"] == "cpu" and run.job_path.name == "job.json"
    run.write_launch(4242, "81234", [0, 1])
    launch = run.read_launch()
    assert (launch["pid"], launch["started"], launch["gpu_ids"]) == (4242, "81234", [0, 1])
    assert isinstance(launch["launched_at"], float)
    run.request_cancel()
    assert run.cancel_requested_at() == read_json(run.cancel_path)["at"]
    run.record_killed("stalled")
    assert run.read_killed()["reason"] == "stalled" and isinstance(run.read_killed()["at"], float)
    run.clear_runner_files()
    assert not any(p.exists() for p in (run.launch_path, run.cancel_path, run.killed_path))
    assert run.job_path.is_file(), "the job itself stays: Resume rewrites it"


@pytest.mark.parametrize("text", ["", "{}", '{"at": "soon"}', '{"at": true}', "[1]"])
def test_a_garbled_cancel_request_counts_from_its_file_time(run, text):
    run.cancel_path.write_text(text)
    os.utime(run.cancel_path, (1000.0, 1000.0))
    assert run.cancel_requested_at() == 1000.0
