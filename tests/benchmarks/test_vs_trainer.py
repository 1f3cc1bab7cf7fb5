"""benchmarks.vs_trainer end to end on a tiny checkpoint: both sides train the same job and the table compares them."""

import json
import subprocess
import sys

import yaml

from tests.conftest import OFFLINE_ENV, REPO

STEPS = 3


def test_tiny_resnet_both_sides_and_ratios(tmp_path):
    """One repeat of ResNet (the fastest tiny family): ours and the reference run, the table has both and ratios."""
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.vs_trainer",
            "--family",
            "resnet",
            "--size",
            "tiny",
            "--repeats",
            "1",
            "--steps",
            str(STEPS),
            "--workdir",
            str(tmp_path / "bench"),
            "--keep-runs",
            str(tmp_path / "runs"),
            "--json",
            str(out),
            "--ours-set",
            "save_total_limit=1",
        ],
        cwd=REPO,
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("| resnet | ours |", "| resnet | reference |", "| resnet | ours/reference |"):
        assert row in done.stdout, done.stdout
    assert "resnet ours 1/1:" in done.stderr and "resnet reference 1/1:" in done.stderr  # progress lines

    record = json.loads(out.read_text())
    summary = record["summaries"][0]
    for variant in ("ours", "reference"):
        figures = summary[variant]
        assert figures["samples_s"] > 0 and figures["wall_s"] > 0 and figures["peak_mib"] > 100
        assert 0 <= figures["metric"] <= 1  # accuracy after training
    assert all(summary["ratio"][column] > 0 for column in ("samples_s", "wall_s", "peak_mib"))
    assert {r["variant"] for r in record["runs"]} == {"ours", "reference"}
    assert all("error" not in r for r in record["runs"])

    # Our YAML fixes what the reference fixes (Trainer defaults included) and takes the --ours-set override.
    config = yaml.safe_load(next((tmp_path / "runs").glob("*/resnet/ours-1/job.yaml")).read_text())
    job = record["jobs"][0]
    assert config["max_steps"] == job["steps"] == STEPS
    assert config["learning_rate"] == config["head_learning_rate"] == job["learning_rate"]
    assert (config["warmup_ratio"], config["weight_decay"], config["lr_scheduler_type"]) == (0.0, 0.0, "linear")
    assert config["eval_steps"] == STEPS < config["save_steps"]
    assert config["lora_target_modules"] == job["targets"] == ["convolution"]
    assert config["save_total_limit"] == "1" and "mixed_precision" not in config  # text, as the engine's flags take it


def test_the_tuned_reference_trains_in_bf16_with_length_grouped_batches(tmp_path):
    """--reference tuned: the Trainer a user who read its docs would set (bf16, length grouping; TF32 on CUDA only)."""
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.vs_trainer", "--family", "bert", "--size", "tiny", "--repeats", "1",
         "--steps", str(STEPS), "--workdir", str(tmp_path / "bench"), "--json", str(out), "--reference", "tuned"],
        cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["reference"] == "tuned"
    assert record["reference_setup"] == {"precision": "bf16", "group_by_length": True, "tf32": False}
    [reference] = [r for r in record["runs"] if r["variant"] == "reference"]
    assert reference["trainer_settings"] == {"bf16": True, "fp16": False, "tf32": None, "length_grouped": True}


def test_the_real_size_is_trained_minilm_over_three_epochs_of_the_tweets(tmp_path):
    """--size real: the equal-quality job, on weights that can learn; families without trained weights are refused."""
    import pytest

    from benchmarks import bench_setup
    from benchmarks.vs_trainer_jobs import make_jobs

    manifest = {"bert": {"checkpoint": "minilm", "train_file": "t.csv", "validation_file": "v.csv"}}
    [job] = make_jobs(manifest, "real", "cpu", None)
    rows = bench_setup.TEXT_ROWS["real"][0]
    assert job.steps == 3 * rows // job.batch and job.task == "text-classification"
    assert (bench_setup.checkpoint(tmp_path, "real", "bert") / "model.safetensors").is_file()
    with pytest.raises(SystemExit, match="trained weights exist here for bert only"):
        bench_setup.checkpoint(tmp_path, "real", "gpt2")
