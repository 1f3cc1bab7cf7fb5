"""The Runs page: states, details, cancel/resume/delete/download/push, runs made by the CLI.

Driven through streamlit.testing's AppTest from webapp/app.py (pages are reached through its
st.navigation), each test in a workspace of its own (fixtures in conftest.py).
"""

import json
import shutil
import time
from pathlib import Path

from finetune.rundir import RunDirectory
from tests.webapp.apptest import assert_ok, button, errors, labels, open_app, state_of
from tests.webapp.conftest import copy_run

# ---- Runs -------------------------------------------------------------------------------------------


def _queue(home: Path, name: str, source: Path, state: str, **status) -> Path:
    """A run as the app leaves it: config.yaml, job.json (preset and counts) and status.json."""
    run = copy_run(source, home, name)
    (run / "job.json").write_text(json.dumps({"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False}))
    RunDirectory(run).status_path.write_text(json.dumps({"state": state, "queued_at": time.time(), **status}))
    return run


def test_runs_page_states_details_and_actions(no_runner, trained_runs):
    home, source = no_runner, trained_runs["bert-lr2e-3"]
    done = copy_run(source, home, "done")
    broken = _queue(home, "broken", source, "failed", error="train_file: boom, the trainer gave up")
    waiting = _queue(home, "waiting", source, "queued")
    stopped = _queue(home, "stopped", source, "cancelled")
    assert RunDirectory(stopped).latest_checkpoint() is not None
    # Only a finished run has an adapter; the queued one has not started, the cancelled one keeps checkpoints.
    for path in (broken / "adapter", stopped / "adapter", waiting / "adapter", waiting / "checkpoints"):
        shutil.rmtree(path)
    for path in (waiting / "events.jsonl", waiting / "metrics.json"):
        path.unlink()

    at = open_app("pages/runs.py")
    table = at.dataframe[0].value.set_index("run")
    assert len(table) == 4
    assert table.loc["done", "state"] == "✅ finished"
    assert table.loc["broken", "state"] == "❌ failed"
    assert table.loc["waiting", "state"] == "⏳ queued (#1 in queue)"
    assert table.loc["stopped", "state"] == "⏹️ cancelled"
    assert table.loc["done", "progress"] == 1.0 and table.loc["done", "step"] == "82/82"
    assert set(at.selectbox(key="runs_selected").options) == {"done", "broken", "waiting", "stopped"}

    # A finished run: full progress, base vs fine-tuned metrics, the adapter to download.
    at.selectbox(key="runs_selected").set_value("done").run()
    assert_ok(at)
    progress = at.get("progress")[0]
    assert progress.value == 100 and "finished · step 82/82" in progress.text
    assert len(at.table) == 1
    metrics = at.table[0].value
    assert list(metrics.index) == ["base model", "fine-tuned"]
    assert {"accuracy", "eval_loss", "f1"} <= set(metrics.columns)
    assert metrics.loc["fine-tuned", "accuracy"] == RunDirectory(done).read_metrics()["finetuned"]["accuracy"]
    assert [d.label for d in at.download_button] == ["Download adapter (.zip)"], "the merged zip is built first"
    assert labels(at) == ["Delete…", "Build merged model (.zip)"], "deleted, not cancelled or resumed (push: opt-in)"

    # A failed run shows its error; it may resume or be deleted.
    at.selectbox(key="runs_selected").set_value("broken").run()
    assert errors(at) == ["train_file: boom, the trainer gave up"]
    assert labels(at) == ["Resume", "Delete…"] and len(at.download_button) == 0

    # Cancel a queued run (no runner holds it): it is marked cancelled at once.
    at.selectbox(key="runs_selected").set_value("waiting").run()
    assert labels(at) == ["Cancel run"]
    button(at, "Cancel run").click().run()
    assert_ok(at)
    assert state_of(waiting) == "cancelled"

    # Resume a cancelled run with a checkpoint: queued again on the same setup, resuming into this folder.
    at.selectbox(key="runs_selected").set_value("stopped").run()
    button(at, "Resume").click().run()
    assert_ok(at)
    assert state_of(stopped) == "queued"
    job = json.loads((stopped / "job.json").read_text())
    assert job == {"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": True}
    assert labels(at) == ["Cancel run"], "the page shows it queued again"

    # Delete… opens a dialog; "Delete for good" removes the folder.
    at.selectbox(key="runs_selected").set_value("broken").run()
    button(at, "Delete…").click().run()
    assert_ok(at)
    assert "Delete for good" in labels(at) and broken.is_dir()
    # AppTest reruns the whole script on every interaction (no fragment reruns): the dialog's own rerun
    # calls confirm_delete again, which here means "Delete…" is pressed along with "Delete for good".
    button(at, "Delete…").click()
    button(at, "Delete for good").click().run()
    assert_ok(at)
    assert not broken.exists()
    assert set(at.selectbox(key="runs_selected").options) == {"done", "waiting", "stopped"}
    assert len(at.dataframe[0].value) == 3


def test_runs_page_push_to_hub_is_opt_in_and_needs_a_token(no_runner, trained_runs, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("LORA_LAB_ALLOW_PUSH", raising=False)
    copy_run(trained_runs["bert-lr2e-3"], no_runner, "done")
    at = open_app("pages/runs.py")
    assert "Push to Hub" not in labels(at), "off unless the operator allows pushing with the server's token"
    monkeypatch.setenv("LORA_LAB_ALLOW_PUSH", "1")
    at = open_app("pages/runs.py")
    assert button(at, "Push to Hub").disabled, "no repository typed yet"
    assert at.checkbox(key="update:done").value is False, "existing repositories are not written to by default"
    at.text_input(key="repo:done").set_value("me/reviews-lora").run()
    button(at, "Push to Hub").click().run()
    assert_ok(at)
    assert any("set HF_TOKEN" in message for message in errors(at)), errors(at)


def test_runs_page_empty(no_runner):
    at = open_app("pages/runs.py")
    assert [i.value for i in at.info] == ["No runs yet."]
    assert len(at.selectbox) == 0


# ---- runs trained from the command line into the runs folder -------------------------------------


def test_runs_made_by_the_cli_without_task_show_their_task(no_runner, trained_runs):
    copy_run(trained_runs["vit-tiny"], no_runner, "vit-tiny")
    at = open_app("pages/runs.py")
    shown = at.dataframe[0].value.set_index("run").loc["vit-tiny", "task"]
    assert shown == "image-classification", "config.yaml records the task the trainer inferred"


def test_resume_a_cancelled_run_made_by_the_cli(no_runner, trained_runs):
    run = copy_run(trained_runs["bert-lr2e-3"], no_runner, "cli-run")
    RunDirectory(run).update_status(state="cancelled")  # what the trainer writes when stopped by SIGTERM
    at = open_app("pages/runs.py")
    at.selectbox(key="runs_selected").set_value("cli-run").run()
    button(at, "Resume").click().run()
    assert_ok(at)
    assert state_of(run) == "queued" and errors(at) == []
    job = json.loads((run / "job.json").read_text())
    assert job == {"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": True}, "this machine's default setup"
