"""The Runs page's merged-model download, built in the background with its progress shown, and a finished run's
scores on the user's test file beside those on the validation split.

Driven through AppTest (conftest.py's workspaces and tiny trained runs); the merge is held back by a gate where a
test needs to see the build under way.
"""

import io
import json
import threading
import time
import zipfile

import pytest

import finetune.export.local
from finetune.errors import UserError
from finetune.rundir import RunDirectory
from tests.webapp.apptest import assert_ok, button, errors, open_app
from tests.webapp.conftest import copy_run
from webapp.services import merged_export, runs
from webapp.services.identity import local_user

LOCAL = local_user()


def _settled(ref: str, timeout: float = 180) -> merged_export.MergedBuild:
    """The build's state once it is no longer under way."""
    deadline = time.time() + timeout
    while (build := runs.merged_build(LOCAL, ref)).state == "building":
        assert time.time() < deadline, "the merged build did not finish"
        time.sleep(0.2)
    return build


@pytest.fixture
def held_merge(monkeypatch):
    """export_merged made to wait for ``gate`` before merging; ``calls`` counts the merges begun."""
    real, gate, calls = finetune.export.local.export_merged, threading.Event(), []

    def held(run_dir, out):
        calls.append(run_dir)
        assert gate.wait(120), "the test never opened the gate"
        return real(run_dir, out)

    monkeypatch.setattr(finetune.export.local, "export_merged", held)
    yield gate, calls
    gate.set()  # a failing test must not leave the worker waiting


def test_the_merged_model_is_built_once_in_the_background_and_offered_when_ready(
    no_runner, trained_runs, held_merge, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    gate, calls = held_merge
    run = copy_run(trained_runs["bert-lr2e-3"], no_runner, "done")
    at = open_app("pages/runs.py")
    assert [d.label for d in at.download_button] == ["Download adapter (.zip)"], "no merged zip before it is built"
    button(at, "Build merged model (.zip)").click().run()
    assert_ok(at)

    # Under way: progress shown, the button disabled, no download offered; a second request joins this build.
    assert button(at, "Build merged model (.zip)").disabled
    assert [d.label for d in at.download_button] == ["Download adapter (.zip)"]
    assert any("Building the merged model (step 1 of 2" in p.text for p in at.get("progress"))
    assert runs.start_merged_build(LOCAL, "done").state == "building"
    assert open_app("pages/runs.py").button(key="merge:done").disabled, "another tab sees the same build"
    with pytest.raises(UserError, match="being built"):
        runs.delete(LOCAL, "done")
    gate.set()
    assert _settled("done").state == "ready"
    assert len(calls) == 1, "one build for every request"

    at.run()
    assert_ok(at)
    assert [d.label for d in at.download_button] == ["Download adapter (.zip)", "Download merged model (.zip)"]
    assert not at.get("progress")[1:], "only the run's own progress bar is left"
    assert [p.name for p in (run / "exports").iterdir()] == ["merged.zip"], "the staging folder is gone"
    with zipfile.ZipFile(io.BytesIO(runs.merged_zip(LOCAL, "done"))) as archive:
        archive.extractall(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "done-merged")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert len(calls) == 1, "the download serves the built file"


def test_a_failed_build_says_why_and_can_be_built_again(no_runner, trained_runs, monkeypatch):
    real = finetune.export.local.export_merged

    def full_disk(run_dir, out):
        raise OSError(28, "No space left on device")

    copy_run(trained_runs["bert-lr2e-3"], no_runner, "done")
    monkeypatch.setattr(finetune.export.local, "export_merged", full_disk)
    at = open_app("pages/runs.py")
    button(at, "Build merged model (.zip)").click().run()
    assert _settled("done").state == "failed"
    at.run()
    assert any("No space left on device" in message for message in errors(at)), errors(at)
    assert [d.label for d in at.download_button] == ["Download adapter (.zip)"]

    monkeypatch.setattr(finetune.export.local, "export_merged", real)
    button(at, "Build merged model again").click().run()
    assert _settled("done").state == "ready"
    at.run()
    assert_ok(at)
    assert errors(at) == [] and "Download merged model (.zip)" in [d.label for d in at.download_button]


def test_a_run_not_finished_builds_no_merged_model(no_runner, trained_runs):
    run = copy_run(trained_runs["bert-lr2e-3"], no_runner, "stopped")
    RunDirectory(run).update_status(state="cancelled")
    with pytest.raises(UserError, match="only a finished run"):
        runs.start_merged_build(LOCAL, "stopped")
    assert not (run / "exports").exists()


def _titles(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**On the ")]


def test_scores_on_the_test_file_show_beside_the_validation_scores(no_runner, trained_runs):
    plain = copy_run(trained_runs["bert-lr2e-3"], no_runner, "plain")
    tested = copy_run(trained_runs["bert-lr2e-3"], no_runner, "tested")
    metrics = json.loads((tested / "metrics.json").read_text())
    test = {"base": {"accuracy": 0.25, "f1": 0.2}, "finetuned": {"accuracy": 0.75, "f1": 0.7}}
    (tested / "metrics.json").write_text(json.dumps({**metrics, "test": test}))

    at = open_app("pages/runs.py")
    at.selectbox(key="runs_selected").set_value("tested").run()
    assert_ok(at)
    assert _titles(at) == ["**On the validation split**", "**On the test file**"]
    validation, on_test = (table.value for table in at.table)
    assert validation.loc["fine-tuned", "accuracy"] == metrics["finetuned"]["accuracy"]
    assert on_test.loc["fine-tuned"].to_dict() == {"accuracy": 0.75, "f1": 0.7}
    assert on_test.loc["base model"].to_dict() == {"accuracy": 0.25, "f1": 0.2}
    assert at.code[0].proto.wrap_lines, "long log lines wrap instead of scrolling sideways"

    at.selectbox(key="runs_selected").set_value("plain").run()
    assert _titles(at) == ["**On the validation split**"] and len(at.table) == 1
    assert "test" not in json.loads((plain / "metrics.json").read_text())
