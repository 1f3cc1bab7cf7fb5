"""The training command line end to end, on tiny checkpoints: every family learns, reloads, resumes."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    OFFLINE_ENV,
    REPO,
    read_events,
    read_json,
    run_cli,
    write_image_folder,
    write_lm_text,
    write_sentiment_csv,
)

# Small but real runs: a few epochs of a tiny model on learnable toy data (seconds each on 2 cores).
# Random-init text models need larger steps than the defaults, which suit pre-trained weights.
TINY_TEXT_LR = ["--learning_rate", "2e-3", "--head_learning_rate", "1e-2"]
# fp32, so that a reloaded adapter scored independently in fp32 (reference_eval) matches the run's own eval to 1e-5;
# the default (mixed_precision auto) is covered in test_speed.py.
FP32 = ["--mixed_precision", "no"]
FAMILY_ARGS = {
    "gpt2": ["--num_train_epochs", "4", *TINY_TEXT_LR, *FP32],
    "bert": ["--num_train_epochs", "6", *TINY_TEXT_LR, *FP32],
    "vit": ["--num_train_epochs", "6", "--per_device_train_batch_size", "8", *FP32],
    "resnet": ["--num_train_epochs", "6", "--per_device_train_batch_size", "8", *FP32],
}
# The families every test below expects a trained run of (listed here, not read off trained_runs, so that a missing
# run fails its test).
FAMILIES = ["gpt2", "bert", "vit", "resnet"]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    images = write_image_folder(root / "images")
    return {
        "gpt2": write_lm_text(root / "lm.txt"),
        "bert": write_sentiment_csv(root / "reviews.csv"),
        "vit": images,
        "resnet": images,
    }


@pytest.fixture(scope="module")
def trained_runs(tiny_checkpoints, data_files, tmp_path_factory) -> dict[str, Path]:
    runs = {}
    for family, extra in FAMILY_ARGS.items():
        out = tmp_path_factory.mktemp("runs") / family
        result = run_cli(
            "--model_name_or_path",
            str(tiny_checkpoints[family]),
            "--train_file",
            str(data_files[family]),
            "--output_dir",
            str(out),
            "--logging_steps",
            "2",
            *extra,
        )
        assert result.returncode == 0, f"{family} failed:\n{result.stderr[-3000:]}"
        runs[family] = out
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_and_eval_loss_goes_down(trained_runs, family):
    run = trained_runs[family]
    status, metrics = read_json(run / "status.json"), read_json(run / "metrics.json")
    assert status["state"] == "finished" and status["error"] is None
    assert metrics["finetuned"]["eval_loss"] < metrics["base"]["eval_loss"], family
    events = read_events(run)
    assert {e["event"] for e in events} == {"train", "eval"}
    assert all(
        {"step", "epoch", "loss", "learning_rate", "samples_per_second"} <= e.keys()
        for e in events
        if e["event"] == "train"
    )
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "config.yaml").is_file() and (run / "train.log").is_file()


def test_classifiers_learn_their_toy_task(trained_runs):
    accuracies = {
        f: read_json(trained_runs[f] / "metrics.json")["finetuned"]["accuracy"] for f in ("bert", "vit", "resnet")
    }
    assert all(acc >= 0.9 for acc in accuracies.values()), accuracies


@pytest.mark.parametrize("family", FAMILIES)
def test_reloaded_adapter_predicts_exactly_as_at_end_of_training(trained_runs, family):
    from tests.finetune.reference_eval import eval_loss_of_reloaded

    run = trained_runs[family]
    expected = read_json(run / "metrics.json")["finetuned"]["eval_loss"]
    assert eval_loss_of_reloaded(run) == pytest.approx(expected, rel=1e-5, abs=1e-6), family


def test_label_maps_are_saved_with_the_adapter(trained_runs):
    info = read_json(trained_runs["bert"] / "adapter" / "lora_lab.json")
    assert info["labels"] == ["negative", "positive"]
    assert info["label2id"] == {"negative": 0, "positive": 1}
    images = read_json(trained_runs["vit"] / "adapter" / "lora_lab.json")
    assert images["labels"] == ["blue", "green", "red"]


def test_resume_reaches_the_same_final_loss(tiny_checkpoints, data_files, tmp_path):
    common = [
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data_files["bert"]),
        *TINY_TEXT_LR,
        "--max_steps",
        "12",
        "--save_steps",
        "4",
        "--save_total_limit",
        "10",
        "--logging_steps",
        "1",
    ]
    full = tmp_path / "full"
    assert run_cli(*common, "--output_dir", str(full)).returncode == 0
    # An interruption after step 4: a run directory holding only that checkpoint.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(full / "checkpoints" / "step_4", interrupted / "checkpoints" / "step_4")
    result = run_cli(*common, "--output_dir", str(interrupted), "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    final = [read_json(run / "metrics.json")["finetuned"]["eval_loss"] for run in (full, interrupted)]
    assert final[1] == pytest.approx(final[0], rel=1e-5)
    losses = [
        [e["loss"] for e in read_events(run) if e["event"] == "train" and e["step"] > 4] for run in (full, interrupted)
    ]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and len(losses[0]) == 8


def test_sigterm_cancels_cleanly_and_keeps_a_checkpoint(tiny_checkpoints, data_files, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finetune.train",
            "--model_name_or_path",
            str(tiny_checkpoints["gpt2"]),
            "--train_file",
            str(data_files["gpt2"]),
            "--output_dir",
            str(out),
            "--max_steps",
            "100000",
            "--logging_steps",
            "1",
            "--save_steps",
            "100000",
        ],
        cwd=REPO,
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "events.jsonl").is_file() and any(e["event"] == "train" for e in read_events(out))
    ):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    status = read_json(out / "status.json")
    assert status["state"] == "cancelled" and status["ended_at"] >= status["started_at"]
    checkpoints = list((out / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()


def test_two_cpu_processes_train_with_ddp(tiny_checkpoints, data_files, tmp_path):
    out = tmp_path / "ddp"
    env = {**OFFLINE_ENV, "ACCELERATE_USE_CPU": "true"}
    launcher = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "finetune/train.py",
    )
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data_files["bert"]),
        "--output_dir",
        str(out),
        "--num_train_epochs",
        "6",
        *TINY_TEXT_LR,
        launcher=launcher,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert metrics["num_processes"] == 2
    assert metrics["finetuned"]["eval_loss"] < metrics["base"]["eval_loss"]
    # gather_for_metrics drops the duplicates that even sharding adds: every eval example counted once.
    assert sum(sum(row) for row in metrics["finetuned"]["confusion_matrix"]) == 24
