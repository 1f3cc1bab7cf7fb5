"""Runs on a Space survive restarts: LORA_LAB_HOME on local disk, mirrored whole to the mounted Storage Bucket
(webapp/services/mirror.py). A folder stands in for the mount; what a bucket mount refuses (appending to or
rewriting an existing file in place) is never asked of it: every file arrives under a new name and is renamed."""

import os
import shutil

import pytest

from finetune.rundir import RunDirectory
from tests.webapp.test_isolation import hf_user
from webapp.services import devices, identity, launch, mirror, registry, runs, uploads, visitors, workspace

CSV = b"review,sentiment\nthe film was great,positive\nthe film was awful,negative\n" * 20


@pytest.fixture
def space(shared, tmp_path, monkeypatch) -> dict:
    """A shared app with Bob's upload and queued run, a visitor who replaced their key, and local-only files."""
    monkeypatch.setenv("LORA_LAB_MIRROR", str(tmp_path / "bucket"))
    bob, setup = hf_user("bob"), devices.setups([])[0]
    values = {
        "model_name_or_path": str(workspace.demo_dir() / "checkpoints" / "bert"),
        "train_file": str(uploads.save_upload(bob, "mine.csv", CSV, "text-classification")),
    }
    run = launch.launch(bob, launch.plan(bob, "kept", values, setup)[0], setup)
    run.events_path.write_text('{"event": "train", "step": 1}\n')
    token = identity.new_visitor_token()
    new_token = visitors.replace_key(visitors.visitor_for(token), token)
    (gate_cache := workspace.user_root(bob.key) / "cache" / "tables").mkdir(parents=True)
    (gate_cache / "big.arrow").write_bytes(b"0" * 1000)
    return {"bob": bob, "run": run, "bucket": tmp_path / "bucket", "token": new_token}


def test_a_restart_on_an_empty_disk_brings_back_every_run_and_key(space):
    home, bucket = workspace.home(), space["bucket"]
    assert mirror.push(home, bucket) > 0
    assert not list(bucket.rglob("*.partial")), "only whole files, renamed into place"
    assert not (bucket / "demo").exists() and not (bucket / "runner.lock").exists(), "rebuilt or per-process"
    assert not list(bucket.rglob("big.arrow")), "caches stay local"

    shutil.rmtree(home)  # a restarted Space: the local disk is new
    home.mkdir()
    (home / "demo").symlink_to(bucket.parent / "unused")  # made again on first use; not part of this check
    assert mirror.restore(home, bucket) > 0
    bob = space["bob"]
    assert [s.name for s in runs.list_runs(bob)] == ["kept"], "sealed runs stay runs: the sealing key came back"
    assert RunDirectory(workspace.runs_dir(bob.key) / "kept").read_status()["state"] == "queued"
    assert visitors.visitor_for(space["token"]).kind == "visitor", "a replaced key still opens its workspace"
    cfg = RunDirectory(workspace.runs_dir(bob.key) / "kept").read_config()
    assert os.path.isfile(cfg["train_file"]), "the upload a run trains on is back where its config names it"


def test_changes_and_deletions_reach_the_mirror_once_the_disk_was_restored(space):
    home, bucket, bob = workspace.home(), space["bucket"], space["bob"]
    mirror.restore(home, bucket)  # at start: nothing there yet, but from now on deletions are mirrored too
    mirror.push(home, bucket)
    events = bucket / space["run"].events_path.relative_to(home)
    assert events.read_text().count("\n") == 1
    with space["run"].events_path.open("a") as f:
        f.write('{"event": "train", "step": 2}\n')
    assert mirror.push(home, bucket) == 1, "only what changed is copied"
    assert events.read_text().count("\n") == 2
    space["run"].update_status(state="cancelled")
    runs.delete(bob, "kept")
    mirror.push(home, bucket)
    assert not (bucket / space["run"].path.relative_to(home)).exists(), "a deleted run does not come back"


def test_a_fresh_disk_never_empties_the_mirror(space, tmp_path):
    home, bucket = workspace.home(), space["bucket"]
    mirror.push(home, bucket)
    held = sorted(p.relative_to(bucket) for p in bucket.rglob("*") if p.is_file())
    fresh = tmp_path / "fresh-home"
    fresh.mkdir()
    mirror.push(fresh, bucket)  # a new machine that skipped restore: it must not delete what the bucket holds
    assert sorted(p.relative_to(bucket) for p in bucket.rglob("*") if p.is_file()) == held


def test_the_runner_pushes_at_most_every_interval_and_on_its_way_out(space, monkeypatch):
    pusher = mirror.Pusher(space["bucket"])
    pusher.due()
    assert (space["bucket"] / registry.KEY_FILE).is_file()
    (space["run"].path / "late.txt").write_text("x")
    pusher.due()
    assert not (space["bucket"] / space["run"].path.relative_to(workspace.home()) / "late.txt").exists()
    pusher.now()
    assert (space["bucket"] / space["run"].path.relative_to(workspace.home()) / "late.txt").is_file()
    mirror.Pusher(None).now()  # no mirror configured: nothing to do
