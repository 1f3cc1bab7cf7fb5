"""The New run page's Check button: the preflight report (metrics, fits or advice) beside Launch, nothing written."""

import dataclasses

import pytest

from finetune.preflight import Report
from tests.webapp.apptest import assert_ok, button, labels, open_app, warnings
from webapp.runner import jobs
from webapp.services import preflight


def test_check_measures_the_demo_run_and_shows_the_report(no_runner):
    at = open_app()
    assert {"Check", "Launch run"} <= set(labels(at))
    button(at, "Check").click().run()
    assert_ok(at)
    metrics = {m.label: m.value for m in at.metric}
    shown = {"Peak memory", "Time per step", "Estimated run time"}
    assert shown <= metrics.keys(), metrics
    assert metrics["Peak memory"].endswith(" MiB") and metrics["Time per step"].endswith(" s"), metrics
    assert len(at.success) == 1 and at.success[0].value.startswith("Fits: "), [s.value for s in at.success]
    assert len(at.warning) == 0 and len(at.error) == 0
    assert "Launch run" in labels(at), "Launch stays beside the report"
    assert list((no_runner / "runs").iterdir()) == [], "the check writes no run directory"


def _report(**measured) -> Report:
    """A Check report of a CPU run that fits in a few minutes, with ``measured`` figures instead."""
    figures = dict(
        device="cpu",
        memory_measure="process peak RSS, ru_maxrss",
        peak_memory_mb=900,
        memory_capacity_mb=20_000,
        fits=True,
        advice=[],
        batch_size=8,
        measured_steps=3,
        seconds_per_step=0.5,
        total_steps=100,
        evaluations=11,
        eval_batches=10,
        seconds_per_eval_batch=0.1,
        setup_seconds=20.0,
        estimated_seconds=80.0,
        time_advice=[],
    )
    return Report(**{**figures, **measured})


def test_a_run_that_does_not_fit_shows_the_advice(no_runner, monkeypatch):
    advice = [
        "per_device_train_batch_size: 2 with gradient_accumulation_steps: 4 (keeps the effective batch of 8)",
        "gradient_checkpointing: true (recomputes activations in the backward pass)",
    ]
    report = _report(
        device="cuda:0",
        memory_measure="CUDA max_memory_allocated",
        peak_memory_mb=90_000,
        memory_capacity_mb=81_559,
        fits=False,
        advice=advice,
        seconds_per_step=0.25,
        total_steps=1000,
        seconds_per_eval_batch=0.1,
        setup_seconds=20.0,
        estimated_seconds=281.0,
    )
    # The subprocess is replaced on the test's side only: a GPU that is too small cannot be had on a test machine.
    monkeypatch.setattr(preflight, "check", lambda cfg, shared, use_gpu: report)
    at = open_app()
    button(at, "Check").click().run()
    assert_ok(at)
    assert len(at.warning) == 1 and len(at.success) == 0
    warning = warnings(at)[0]
    assert warning.startswith("Does not fit cuda:0 (90,000 of 81,559 MiB)"), warning
    assert all(f"- {item}" in warning for item in advice), f"{len(advice)} pieces of advice expected"
    assert {m.label: m.value for m in at.metric}["Estimated run time"] == "4 min 41 s"


def test_a_run_that_fits_but_takes_hours_gets_a_time_verdict_with_what_to_change(no_runner, monkeypatch):
    """Check's verdict covers time: a run over 30 min is no green "Fits", and the settings that shorten it are listed,
    as the real preflight computes them (advice.shorter_run_advice on the measured figures)."""
    from finetune.config import TrainConfig
    from finetune.training.advice import shorter_run_advice

    cfg = TrainConfig.from_dict(
        {"model_name_or_path": "m", "train_file": "t", "output_dir": "o", "num_train_epochs": 10}
    )
    # 3 h 29 min: 2,000 steps at 6 s (measured) plus 30 s of set-up and 570 s of evaluation.
    time_advice = shorter_run_advice(cfg, 12_600.0, 6.0, 2_000, on_gpu=False)
    assert time_advice[0] == "max_steps = 200 (of 2000): stops within 30 min", time_advice
    assert any(item.startswith("num_train_epochs below 10: each epoch takes 20 min") for item in time_advice)
    assert any("a GPU" in item for item in time_advice)
    assert shorter_run_advice(cfg, 1_700.0, 6.0, 200, on_gpu=False) == [], "under 30 min: nothing to change"
    report = _report(
        peak_memory_mb=900,
        memory_capacity_mb=20_000,
        seconds_per_step=6.0,
        total_steps=2_000,
        seconds_per_eval_batch=5.2,
        setup_seconds=30.0,
        estimated_seconds=12_600.0,
        time_advice=time_advice,
    )
    monkeypatch.setattr(preflight, "check", lambda cfg, shared, use_gpu: report)
    at = open_app()
    button(at, "Check").click().run()
    assert_ok(at)
    assert len(at.success) == 0, "no green box for a run of hours"
    [verdict] = [w for w in warnings(at) if w.startswith("Fits in memory")]
    assert verdict.startswith("Fits in memory (900 of 20,000 MiB on cpu), but the run takes about 3 h 30 min"), verdict
    assert all(f"- {item}" in verdict for item in time_advice)


def test_check_failures_read_as_the_checks_own_message():
    bad = "Some library warning\nerror: Invalid configuration:\n  - lora_r: must be a positive integer, got 0"
    assert preflight._failure(2, bad) == "Invalid configuration:\n  - lora_r: must be a positive integer, got 0"
    assert "out of memory" in preflight._failure(preflight.KILLED, "")
    crashed = preflight._failure(1, "Traceback ...\nRuntimeError: boom")
    assert crashed == "check: the preflight failed (exit status 1): RuntimeError: boom"
    fields = {f.name for f in dataclasses.fields(Report)}
    read_by_the_page = {
        "peak_memory_mb",
        "memory_capacity_mb",
        "memory_measure",
        "device",
        "seconds_per_step",
        "estimated_seconds",
        "total_steps",
        "evaluations",
        "fits",
        "advice",
        "time_advice",
    }
    assert read_by_the_page <= fields, read_by_the_page - fields


def test_a_check_takes_a_free_gpu_and_runs_one_at_a_time(lab):
    """A check never lands on a GPU a run is training on, and a second check waits for none: it is refused."""
    from finetune.errors import UserError

    assert preflight.free_gpu([], set()) is None, "no GPU: the CPU"
    assert preflight.free_gpu([0, 1], {0}) == 1
    with pytest.raises(UserError, match="every GPU of this machine is training a run"):
        preflight.free_gpu([0, 1], {0, 1})
    assert preflight.busy_gpus() == set(), "no run is active in a new workspace"
    with preflight._one_at_a_time():
        with pytest.raises(UserError, match="another check is running"):
            with preflight._one_at_a_time():
                pass
    with preflight._one_at_a_time():  # released once the first finished
        pass
    with jobs.gpu_held_for_check(1):
        assert jobs.gpu_in_check() == 1, "the runner starts no run on the GPU a check trains on"
    assert jobs.gpu_in_check() is None and not (lab / jobs.CHECK_FILE).exists()
    with jobs.gpu_held_for_check(None):  # a check on the CPU holds no GPU
        assert jobs.gpu_in_check() is None
