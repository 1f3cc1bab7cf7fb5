"""The list of runs reads progress from status.json alone; runs from before the trainer wrote it there read
events.jsonl. The detail of one run: its curves and final metrics as plain points, for the page to chart."""

import json
import time

import pytest

from evaluation.figures import percent, rate
from finetune.rundir import RunDirectory
from webapp.services import run_detail, runs


@pytest.fixture
def run(tmp_path, monkeypatch) -> RunDirectory:
    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path))
    run = RunDirectory(tmp_path / "runs" / "r")
    run.path.mkdir(parents=True)
    run.config_path.write_text("task: text-classification\nmodel_name_or_path: bert\n")
    return run


def _events(run: RunDirectory, *events: dict) -> None:
    run.events_path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_progress_comes_from_status_json_and_the_pace_from_the_latest_events_too(run):
    now = time.time()
    run.update_status(state="running", total_steps=100, loop_started_at=now - 20, loop_start_step=0)
    run.record_progress(step=20, epoch=0.4)
    _events(run, {"event": "train", "step": 5, "time": now - 15})  # behind status.json: not the progress
    summary = runs.summarize(run.path)
    assert summary.step == 20 and summary.progress == 0.2
    assert summary.eta_seconds == pytest.approx(80, abs=2), "1 s per step since the loop started, 80 steps left"
    # Then 1 s/step up to step 20, 2 s/step since: the pace of the latest intervals, not the 1.6 s/step average.
    run.update_status(loop_started_at=now - 80)
    run.record_progress(step=50, epoch=1.0)
    _events(run, *({"event": "train", "step": s, "time": now - t} for s, t in ((10, 70), (20, 60), (30, 40), (40, 20))))
    assert runs.summarize(run.path).eta_seconds == pytest.approx(50 * 2, abs=2)


@pytest.mark.parametrize("state", ["cancelled", "failed"])
def test_a_stopped_run_reads_at_its_checkpoint_step(run, state):
    run.update_status(state="running", total_steps=507, steps_per_epoch=100)
    run.record_progress(step=10, epoch=0.1)
    status = run.record_checkpoint(17, at=time.time())
    assert (status["step"], status["checkpoint_step"], status["epoch"]) == (17, 17, 0.17)
    run.record_progress(step=20, epoch=0.2)  # trained on, then failed or was killed before its next checkpoint
    run.update_status(state=state)
    assert runs.summarize(run.path).step == 17, "the step Resume continues from"
    run.update_status(state="running")
    assert runs.summarize(run.path).step == 20


def test_a_run_without_step_in_status_reads_its_events(run):
    now = time.time()
    run.update_status(state="running", total_steps=100, loop_started_at=now - 10, loop_start_step=0)
    _events(
        run,
        {"event": "eval", "step": 0, "time": now - 11, "eval_loss": 1.0},
        {"event": "train", "step": 5, "time": now - 5},
        {"event": "train", "step": 10, "time": now},
    )
    summary = runs.summarize(run.path)
    assert summary.step == 10 and summary.eta_seconds == pytest.approx(90, abs=2)
    _events(run, {"event": "train", "step": 12, "time": now}, {"event": "train", "step": 30, "time": now})
    assert runs.summarize(run.path).step == 30, "a changed events.jsonl is read again"


def test_detail_curves_and_final_metrics(run):
    run.update_status(state="finished", total_steps=20)
    _events(
        run,
        {"event": "eval", "step": 0, "time": 1.0, "eval_loss": 1.0, "accuracy": 0.5, "f1": 0.4},
        {"event": "train", "step": 10, "time": 2.0, "loss": 0.9, "tokens_per_second": 1234.4},
        {"event": "train", "step": 10, "time": 3.0, "loss": 0.8},  # a resumed run logs step 10 again
        {
            "event": "eval",
            "step": 20,
            "time": 4.0,
            "eval_loss": 0.5,
            "accuracy": 0.9,
            "f1": 0.8,
            "confusion_matrix": [[1, 0], [0, 1]],
        },
    )
    run.write_metrics(
        {
            "base": {"accuracy": 0.5, "eval_loss": 1.0},
            "finetuned": {"accuracy": 0.9, "eval_loss": 0.5, "confusion_matrix": [[1, 0], [0, 1]]},
            "train_tokens_per_second": 1500.0,
        }
    )
    detail = run_detail.detail(runs.summarize(run.path))
    assert detail.losses == [
        {"step": 10, "metric": "train loss", "value": 0.8},
        {"step": 0, "metric": "eval loss", "value": 1.0},
        {"step": 20, "metric": "eval loss", "value": 0.5},
    ]
    scores = {(p["metric"], p["step"]) for p in detail.scores}
    assert scores == {("accuracy", 0), ("accuracy", 20), ("f1", 0), ("f1", 20)}
    assert detail.final == {
        "base model": {"accuracy": 0.5, "eval_loss": 1.0},
        "fine-tuned": {"accuracy": 0.9, "eval_loss": 0.5},
    }
    assert detail.throughput.text == "1,500 tokens/s" and detail.log == ""


def test_causal_lm_draws_perplexity_alone(run):
    run.config_path.write_text("task: causal-lm\n")
    run.update_status(state="running")
    _events(
        run, {"event": "eval", "step": 0, "time": 1.0, "eval_loss": 3.0, "perplexity": 20.0, "next_token_accuracy": 0.2}
    )
    detail = run_detail.detail(runs.summarize(run.path))
    assert detail.scores == [{"step": 0, "metric": "perplexity", "value": 20.0}] and detail.final == {}


def test_figures_wording():
    assert (rate(40960.0), rate(45.06), rate(100.0)) == ("40,960", "45.1", "100")
    assert (percent(0.384), percent(0.042), percent(0.1)) == ("38%", "4.2%", "10%")
