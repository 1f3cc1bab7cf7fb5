"""python -m finetune.preflight through its real command line, on tiny checkpoints: its peak memory against a real
run's, its JSON and terminal reports, bad input, nothing written; the fits/advice decision as pure functions."""

import json
import subprocess
import sys

import pytest

from finetune import preflight
from finetune.config import TrainConfig
from tests.conftest import OFFLINE_ENV, REPO, read_json, run_cli, write_lm_text, write_sentiment_csv

# The check's peak memory is within this factor (either way) of the peak the real run reports in metrics.json.
# Measured on CPU (process peak RSS, 2 cores): 0.91-0.92 for the tiny GPT-2/BERT/ViT/ResNet checkpoints and for
# MiniLM (22M parameters) at batch 8 and 64; the real run is a little higher (whole-set evaluations, saving).
PEAK_FACTOR = 1.25
REPORT_FIELDS = {
    "device",
    "memory_measure",
    "peak_memory_mb",
    "memory_capacity_mb",
    "fits",
    "advice",
    "time_advice",
    "batch_size",
    "measured_steps",
    "seconds_per_step",
    "total_steps",
    "evaluations",
    "eval_batches",
    "seconds_per_eval_batch",
    "setup_seconds",
    "estimated_seconds",
}


def run_preflight(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finetune.preflight", *args],
        cwd=REPO,
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def bert_args(tiny_checkpoints, tmp_path_factory) -> list[str]:
    data = write_sentiment_csv(tmp_path_factory.mktemp("data") / "reviews.csv")
    return [
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--max_steps",
        "12",
        "--eval_steps",
        "5",
        "--mixed_precision",
        "no",
    ]


@pytest.fixture(scope="module")
def checked_and_trained(bert_args, tmp_path_factory) -> tuple[dict, dict]:
    """(preflight's JSON report, metrics.json of the real run) of one config."""
    checked = run_preflight(*bert_args, "--json")
    assert checked.returncode == preflight.FITS, checked.stderr[-3000:]
    out = tmp_path_factory.mktemp("runs") / "bert"
    trained = run_cli(*bert_args, "--output_dir", str(out))
    assert trained.returncode == 0, trained.stderr[-3000:]
    return json.loads(checked.stdout.strip().splitlines()[-1]), read_json(out / "metrics.json")


def test_peak_memory_is_within_the_stated_factor_of_the_real_runs(checked_and_trained):
    report, metrics = checked_and_trained
    ratio = report["peak_memory_mb"] / metrics["peak_memory_mb"]
    assert 1 / PEAK_FACTOR <= ratio <= PEAK_FACTOR, (report["peak_memory_mb"], metrics["peak_memory_mb"])
    assert report["device"] == metrics["device"] == "cpu"
    assert report["total_steps"] == metrics["total_steps"] == 12


def test_json_report_fields(checked_and_trained):
    report, _ = checked_and_trained
    assert set(report) == REPORT_FIELDS, f"{len(REPORT_FIELDS)} fields expected"
    assert report["fits"] is True and report["advice"] == [] and report["time_advice"] == [], "12 steps: minutes"
    assert report["memory_measure"] == "process peak RSS, ru_maxrss"
    assert 0 < report["peak_memory_mb"] <= preflight.HEADROOM * report["memory_capacity_mb"]
    assert report["measured_steps"] == 3 and report["batch_size"] == 8
    # 12 steps evaluated every 5: the base model, steps 5 and 10, and the last step.
    assert report["evaluations"] == 4 and report["eval_batches"] == 2
    expected = report["setup_seconds"] + 12 * report["seconds_per_step"] + 4 * 2 * report["seconds_per_eval_batch"]
    assert report["estimated_seconds"] == pytest.approx(expected)
    assert report["seconds_per_step"] > 0 and report["seconds_per_eval_batch"] > 0


def test_terminal_report_and_nothing_written(tiny_checkpoints, tmp_path):
    data = write_lm_text(tmp_path / "lm.txt")
    out = tmp_path / "never-written"
    result = run_preflight(
        "--model_name_or_path",
        str(tiny_checkpoints["gpt2"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "7",
        "--steps",
        "2",
    )
    assert result.returncode == preflight.FITS, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "Device",
        "Peak memory",
        "Step time",
        "Run length",
        "Estimated time",
    ], lines
    assert "mean of 2 after 1 warm-up" in lines[2] and "7 optimizer steps" in lines[3]
    assert not out.exists(), "the check writes no run directory"


def test_bad_input_exits_2_with_a_clear_message(tiny_checkpoints, tmp_path):
    bad_config = run_preflight(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        "x.csv",
        "--per_device_train_batch_size",
        "0",
        "--steps",
        "none",
    )
    assert bad_config.returncode == preflight.BAD_INPUT
    assert bad_config.stderr.startswith("error: Invalid configuration:")
    assert "--steps: 'none' is not a whole number >= 1" in bad_config.stderr
    assert "per_device_train_batch_size" in bad_config.stderr
    missing = tmp_path / "missing.csv"
    bad_data = run_preflight("--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(missing))
    assert bad_data.returncode == preflight.BAD_INPUT
    assert "error: " in bad_data.stderr and "missing.csv" in bad_data.stderr, bad_data.stderr[-2000:]
    assert "Traceback" not in bad_config.stderr + bad_data.stderr


def test_fits_and_advice_decisions():
    cfg = TrainConfig(
        model_name_or_path="gpt2",
        train_file="x.txt",
        output_dir="/tmp/unused",
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
    )
    assert preflight.fits(900, 1000) and not preflight.fits(901, 1000)
    advice = preflight.advice(cfg, over_by=2.0, cuda=True, derived={"block_size": 512}, can_checkpoint=True)
    assert advice == [
        "per_device_train_batch_size: 2 with gradient_accumulation_steps: 8 (keeps the effective batch of 16)",
        "gradient_checkpointing: true (recomputes activations in the backward pass: much less memory, about 30% "
        "slower steps)",
        "load_in_4bit: true (QLoRA: the frozen base weights in 4 bits, about a quarter of their memory)",
        "block_size: 256 (now 512; activations grow with the length)",
    ]
    # CPU, batch 1, checkpointing already on: nothing left to shrink but the model or the device.
    cpu = TrainConfig(
        model_name_or_path="gpt2",
        train_file="x.txt",
        output_dir="/tmp/unused",
        per_device_train_batch_size=1,
        gradient_checkpointing=True,
    )
    assert preflight.advice(cpu, 1.5, cuda=False, derived={}, can_checkpoint=True) == [
        "the model alone does not fit this device: pick a smaller checkpoint or a larger device"
    ]
    assert preflight.evaluation_count(max_steps=12, eval_steps=5) == 4
    assert preflight.evaluation_count(max_steps=10, eval_steps=5) == 3
    assert preflight.readable_duration(3725) == "1 h 2 min" and preflight.readable_duration(59) == "59 s"
