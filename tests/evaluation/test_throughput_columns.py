"""Throughput in the Compare table: tokens/s, images/s, TFLOP/s and MFU from metrics.json, on hand-written runs.

The columns come from fields newer trainers write (train_tokens_per_second or train_images_per_second; on CUDA
train_tflops, mfu and gpu_name); a column that no compared run has is left out, the older cost columns stay.
"""

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evaluation.compare import COST, compare_runs, format_table, load_runs, main

OLD_COST = ["best_step", "wall_time_s", "samples_per_s", "peak_memory_mb", "trainable_percent"]
SCORES = {"base": {"accuracy": 0.5, "eval_loss": 0.7}, "finetuned": {"accuracy": 0.9, "eval_loss": 0.3}}
# What the trainer wrote before throughput was logged, and what each kind of run adds to it.
OLD = {
    **SCORES,
    "best_step": 40,
    "train_runtime_seconds": 12.0,
    "train_samples_per_second": 80.0,
    "peak_memory_mb": 900.0,
    "trainable_percent": 1.2,
    "device": "cpu",
}
TEXT_CPU = {**OLD, "train_tokens_per_second": 5120.0}
TEXT_CUDA = {
    **OLD,
    "train_tokens_per_second": 40960.0,
    "train_tflops": 12.34,
    "mfu": 0.384,
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "device": "cuda:0",
}
IMAGE = {**OLD, "train_images_per_second": 45.06}


def write_run(root: Path, name: str, metrics: dict, task: str = "text-classification", lr: float = 1e-3) -> Path:
    """A finished run folder as the trainer leaves it, less the adapter and checkpoints (Compare reads neither)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"task": task, "learning_rate": lr, "output_dir": str(path)}))
    (path / "status.json").write_text(json.dumps({"state": "finished"}))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "events.jsonl").write_text(json.dumps({"event": "train", "step": 10, "loss": 0.5}) + "\n")
    return path


def table_of(tmp_path: Path, runs: dict[str, dict]):
    return compare_runs(
        load_runs(
            [write_run(tmp_path, name, metrics, lr=1e-3 * (i + 1)) for i, (name, metrics) in enumerate(runs.items())]
        )
    )


def test_old_runs_keep_the_old_cost_columns_and_get_no_throughput_columns(tmp_path):
    table = table_of(tmp_path, {"a": OLD, "b": OLD})
    cost = [c for c in table.columns if c in COST]
    assert cost == OLD_COST, "every throughput column is empty: none shown"
    assert table.loc["a", "samples_per_s"] == 80.0 and table.loc["b", "wall_time_s"] == 12.0
    assert "mfu" not in format_table(table, "markdown")


def test_text_runs_show_tokens_per_second_and_cuda_figures_where_a_run_has_them(tmp_path):
    table = table_of(tmp_path, {"cpu": TEXT_CPU, "cuda": TEXT_CUDA, "old": OLD})
    cost = [c for c in table.columns if c in COST]
    assert cost == [
        "best_step",
        "wall_time_s",
        "samples_per_s",
        "tokens_per_s",
        "tflops",
        "mfu",
        "peak_memory_mb",
        "trainable_percent",
    ], "no images_per_s: no image run is compared"
    assert table["tokens_per_s"].tolist()[:2] == [5120.0, 40960.0] and pd.isna(table.loc["old", "tokens_per_s"])
    assert table.loc["cuda", "tflops"] == 12.34 and table.loc["cuda", "mfu"] == 0.384
    assert pd.isna(table.loc["cpu", "mfu"]), "a CPU run has no MFU"
    assert list(table.columns[:2]) == ["state", "learning_rate"], "settings still come before the scores"


def test_image_runs_show_images_per_second(tmp_path):
    table = table_of(tmp_path, {"vit": IMAGE, "vit-old": OLD})
    shown = [c for c in ("tokens_per_s", "images_per_s", "tflops", "mfu") if c in table.columns]
    assert shown == ["images_per_s"]
    assert table.loc["vit", "images_per_s"] == 45.06


def _row(markdown: str, name: str) -> dict[str, str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines[2:] if line.strip("|").split("|")[0].strip() == name)
    return dict(zip(columns, (c.strip() for c in row.strip("|").split("|")), strict=True))


@pytest.mark.parametrize("mfu, shown", [(0.384, "38%"), (0.042, "4.2%"), (0.005, "0.5%"), (1.0, "100%")])
def test_markdown_shows_mfu_as_a_percentage_and_csv_json_keep_the_fraction(tmp_path, mfu, shown):
    table = table_of(tmp_path, {"cuda": {**TEXT_CUDA, "mfu": mfu}, "cpu": TEXT_CPU})
    markdown = format_table(table, "markdown")
    cuda, cpu = _row(markdown, "cuda"), _row(markdown, "cpu")
    assert (cuda["mfu"], cuda["tflops"], cuda["tokens_per_s"]) == (shown, "12.34", "40,960")
    assert (cpu["mfu"], cpu["tflops"]) == ("", ""), "empty cells for the run without CUDA figures"
    rows = {row["run"]: row for row in json.loads(format_table(table, "json"))}
    assert rows["cuda"]["mfu"] == mfu and rows["cpu"]["mfu"] is None
    csv = pd.read_csv(io.StringIO(format_table(table, "csv")), index_col="run")
    assert csv.loc["cuda", "mfu"] == mfu and pd.isna(csv.loc["cpu", "mfu"])


def test_the_command_line_prints_the_throughput_columns(tmp_path, capsys):
    paths = [write_run(tmp_path, "cuda", TEXT_CUDA), write_run(tmp_path, "vit", IMAGE, "image-classification")]
    assert main([str(p) for p in paths]) == 0
    row = _row(capsys.readouterr().out, "cuda")
    assert (row["tokens_per_s"], row["images_per_s"], row["tflops"], row["mfu"]) == ("40,960", "", "12.34", "38%")
