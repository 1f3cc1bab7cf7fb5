"""Throughput on the Runs page (tokens/s or images/s, TFLOP/s and MFU) and in Compare's cost table.

Hand-written run folders, as the trainer leaves them: train events gain tokens_per_second (text tasks) or
images_per_second (image tasks), and on CUDA tflops and mfu; metrics.json gains train_tokens_per_second or
train_images_per_second, and on CUDA train_tflops, mfu and gpu_name. Older runs have none of them.
"""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evaluation.compare import load_run
from tests.webapp.apptest import assert_ok, open_app
from webapp.services import run_detail, runs

SCORES = {"base": {"accuracy": 0.5, "eval_loss": 0.7}, "finetuned": {"accuracy": 0.9, "eval_loss": 0.3}}
OLD_METRICS = {
    **SCORES,
    "train_runtime_seconds": 12.0,
    "train_samples_per_second": 80.0,
    "peak_memory_mb": 900.0,
    "device": "cpu",
}


def _train(step: int, **figures) -> dict:
    return {
        "event": "train",
        "step": step,
        "time": 1000.0 + step,
        "loss": 0.5,
        "learning_rate": 1e-3,
        "samples_per_second": 8.0,
        **figures,
    }


# name: (state, task, train events' figures (oldest first), metrics.json or None)
RUNS = {
    "text": ("running", "causal-lm", [{"tokens_per_second": 1000.0}, {"tokens_per_second": 1234.4}], None),
    "image": ("running", "image-classification", [{"images_per_second": 45.06}], None),
    "cuda": ("running", "text-classification", [{"tokens_per_second": 20500.0, "tflops": 12.34, "mfu": 0.384}], None),
    "cuda-done": (
        "finished",
        "text-classification",
        [{"tokens_per_second": 30000.0, "tflops": 20.0, "mfu": 0.5}],
        {
            **OLD_METRICS,
            "train_tokens_per_second": 18000.0,
            "train_tflops": 11.0,
            "mfu": 0.352,
            "gpu_name": "NVIDIA H100 80GB HBM3",
            "device": "cuda:0",
        },
    ),
    "image-done": (
        "finished",
        "image-classification",
        [{"images_per_second": 50.0}],
        {**OLD_METRICS, "train_images_per_second": 1480.2},
    ),
    "old": ("finished", "text-classification", [{}, {}], OLD_METRICS),
    "old-running": ("running", "causal-lm", [{}], None),
    "queued": ("queued", "causal-lm", [], None),
}
# What the Runs page says of each; the runs left out say nothing.
SHOWN = {
    "text": "Throughput: 1,234 tokens/s (latest logged step)",
    "image": "Throughput: 45.1 images/s (latest logged step)",
    "cuda": "Throughput: 20,500 tokens/s · 12.3 TFLOP/s · MFU 38% (latest logged step)",
    "cuda-done": "Throughput: 18,000 tokens/s · 11 TFLOP/s · MFU 35% on NVIDIA H100 80GB HBM3 (whole-run average)",
    "image-done": "Throughput: 1,480 images/s (whole-run average)",
}


def write_run(home: Path, name: str, created: float) -> Path:
    state, task, figures, metrics = RUNS[name]
    path = home / "runs" / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        yaml.safe_dump({"task": task, "model_name_or_path": "tiny", "learning_rate": 1e-3, "output_dir": str(path)})
    )
    (path / "status.json").write_text(json.dumps({"state": state, "queued_at": created, "total_steps": 100}))
    events = [{"event": "eval", "step": 0, "time": 1000.0, "eval_loss": 0.7}]
    events += [_train(10 * (i + 1), **f) for i, f in enumerate(figures)]
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def write_runs(home: Path) -> dict[str, Path]:
    now = time.time()
    return {name: write_run(home, name, now - i) for i, name in enumerate(RUNS)}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path))
    return tmp_path


def _throughput(path: Path):
    """What the Runs page's live panel computes, from what it reads already."""
    run = load_run(path)
    return run_detail.throughput(runs.summarize(path).state, run.events, run.metrics)


# ---- the service ----------------------------------------------------------------------------------


def test_throughput_of_text_image_cuda_and_old_runs(home):
    found = {name: _throughput(path) for name, path in write_runs(home).items()}
    shown = {name: f"Throughput: {t.text} ({t.basis})" for name, t in found.items() if t is not None}
    assert shown == SHOWN
    assert len(shown) == 5 and [n for n, t in found.items() if t is None] == ["old", "old-running", "queued"]


def test_throughput_keeps_the_raw_figures(home):
    paths = write_runs(home)
    text, cuda, done = (_throughput(paths[name]) for name in ("text", "cuda", "cuda-done"))
    assert (text.tokens_per_second, text.images_per_second, text.tflops, text.mfu) == (1234.4, None, None, None)
    assert (cuda.tflops, cuda.mfu, cuda.gpu_name, cuda.whole_run) == (12.34, 0.384, None, False)
    assert (done.tokens_per_second, done.mfu, done.gpu_name, done.whole_run) == (
        18000.0,
        0.352,
        "NVIDIA H100 80GB HBM3",
        True,
    ), "metrics.json, not the last train event"


def test_a_finished_run_without_figures_in_metrics_falls_back_to_its_latest_train_event():
    events = [_train(10, tokens_per_second=900.0), {"event": "eval", "step": 10, "eval_loss": 0.5}]
    found = run_detail.throughput("finished", events, OLD_METRICS)
    assert (found.text, found.whole_run) == ("900 tokens/s", False)
    assert run_detail.throughput("cancelled", events, {}).text == "900 tokens/s"


def test_figures_that_are_no_numbers_are_left_out():
    event = _train(10, tokens_per_second=float("nan"), tflops=True, mfu="0.4", images_per_second=-1.0)
    assert run_detail.throughput("running", [event], {}) is None
    assert run_detail.throughput("running", [_train(10, mfu=0.042)], {}).text == "MFU 4.2%"
    assert run_detail.throughput("running", [_train(10, mfu=0.004, tflops=0.5)], {}).text == "0.5 TFLOP/s · MFU 0.4%"
    assert run_detail.throughput("finished", [], {"gpu_name": "NVIDIA H100"}) is None, "a GPU name alone says nothing"


# ---- the pages ------------------------------------------------------------------------------------


def _throughput_captions(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("Throughput:")]


def test_the_runs_page_shows_each_runs_throughput(no_runner):
    write_runs(no_runner)
    at = open_app("pages/runs.py")
    assert sorted(at.dataframe[0].value["run"]) == sorted(RUNS), "the list view is unchanged"
    seen = {}
    for name in RUNS:
        at.selectbox(key="runs_selected").set_value(name).run()
        assert_ok(at)
        seen[name] = _throughput_captions(at)
    assert {name: captions for name, captions in seen.items() if captions} == {n: [t] for n, t in SHOWN.items()}
    assert sum(1 for captions in seen.values() if not captions) == 3, "old, old-running, queued: nothing shown"


def _headline_rows(at) -> dict[str, dict[str, str]]:
    """The headline tables' cells (one markdown table per task), by run, then column."""
    rows = {}
    for markdown in (m.value for m in at.markdown if m.value.startswith("|")):
        header, _rule, *cells = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("|")]
        columns = [c.strip() for c in header]
        rows.update({row[0].strip(): dict(zip(columns, (c.strip() for c in row), strict=True)) for row in cells})
    return rows


def _detail_rows(at) -> dict[str, dict]:
    """The expanders' tables (every figure, one per task): each run's row by its name, without empty cells."""
    rows = {}
    for frame in (d.value for d in at.dataframe):
        for name, row in frame.iterrows():
            rows[str(name)] = {column: value for column, value in row.items() if not pd.isna(value)}
    return rows


THROUGHPUT = {"tokens_per_s", "images_per_s", "tflops", "mfu"}


def test_compare_shows_throughput_columns_only_where_a_compared_run_has_them(no_runner):
    """Each task's table carries a throughput column only when one of its runs has the figure (text runs tokens,
    image runs images; TFLOPS and MFU only from a GPU run); throughput stays out of the 1280 px headline."""
    write_runs(no_runner)
    at = open_app("pages/compare.py")
    cases = {
        ("cuda-done", "old"): {"tokens_per_s", "tflops", "mfu"},
        ("image-done", "old"): {"images_per_s"},
        ("cuda-done", "image-done"): {"tokens_per_s", "tflops", "mfu"},
        ("old",): set(),
    }
    for chosen, expected in cases.items():
        at.multiselect(key="compare_runs").set_value(list(chosen)).run()
        assert_ok(at)
        headline, everything = _headline_rows(at), _detail_rows(at)
        assert set(everything) == set(chosen)
        assert not THROUGHPUT & set(headline[chosen[0]]), "the headline must fit 1280 px: throughput is in the expander"
        assert THROUGHPUT & set(everything[chosen[0]]) == expected, chosen
        assert {"wall_time_s", "samples_per_s", "peak_memory_mb"} <= set(everything[chosen[0]]), "old columns stay"
    assert (everything["old"]["samples_per_s"], len(cases)) == (80, 4)
