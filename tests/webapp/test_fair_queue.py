"""A shared queue: round-robin across users, per-user limits on training, queueing, uploads and disk.

The real Runner serves every user's runs folder (workspace.all_runs_dirs) with fake trainers standing in
for `accelerate launch` (tests/webapp/test_jobs.py), so nothing trains. Quotas are checked through the
services the pages call (launch, resume, save_upload); the local user (local single-user mode) has none.
"""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from finetune.errors import UserError
from finetune.rundir import RunDirectory
from tests.webapp.conftest import ENV_VARS, name_a_hub_model
from tests.webapp.test_jobs import FAKE_TRAINER, FakeTrainers, wait_for
from webapp.runner import jobs, loop
from webapp.services import catalog, devices, identity, launch, registry, runs, settings, uploads, workspace

VALUES = {"model_name_or_path": "gpt2", "train_file": "t.txt", "learning_rate": "2e-4", "lora_r": 8}
MiB = 2**20


@pytest.fixture
def shared(no_runner, monkeypatch) -> Path:
    """A "huggingface" workspace whose runner lock this test holds: queueing starts no background runner."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORA_LAB_USERS", "huggingface")
    return no_runner


@pytest.fixture
def trainers() -> FakeTrainers:
    return FakeTrainers()


def user(name: str) -> identity.User:
    return identity.signed_in_user(name, ())


def queue(trainers: FakeTrainers, owner: identity.User, name: str, gpus: int = 0) -> RunDirectory:
    """Queue a run of ``owner`` as launch.launch does, trained by the fake trainer."""
    run = RunDirectory(workspace.runs_dir(owner.key) / name)
    run.path.mkdir(parents=True)
    registry.seal(owner.key, run.path)
    trainers.scripts[name] = FAKE_TRAINER
    jobs.enqueue(run, jobs.Job("single_gpu" if gpus else "cpu", 1, gpus))
    time.sleep(0.01)  # distinct queued_at stamps
    return run


def runner_for(trainers: FakeTrainers, gpu_ids: list[int], **limits) -> loop.Runner:
    return loop.Runner(workspace.all_runs_dirs, gpu_ids, command_for=trainers, limits=settings.Settings(**limits))


def state(run: RunDirectory) -> str:
    return run.read_status().get("state")


def release_and_reap(runner: loop.Runner, run: RunDirectory) -> None:
    """Let ``run``'s fake trainer finish, ticking until the runner has settled it (the same tick starts what fits)."""
    (run.path / "release").touch()
    wait_for(lambda: state(run) == "finished")
    wait_for(lambda: runner.tick() is not None and not jobs.launched(run))


def launched_runs(all_runs: list[RunDirectory]) -> list[RunDirectory]:
    return [r for r in all_runs if jobs.launched(r)]


def plan_and_launch(owner: identity.User, name: str) -> RunDirectory:
    """What the New run page does on "Launch run" (CPU setup)."""
    setup = devices.setups([])[0]
    # The demo's sample text: on a shared app a run trains on an upload of its user's or the sample data.
    cfg, _ = launch.plan(owner, name, {**VALUES, "train_file": str(catalog.sample_data("causal-lm"))}, setup)
    return launch.launch(owner, cfg, setup)


def stopped_run(owner: identity.User, source: Path, name: str) -> Path:
    """A cancelled run with checkpoints in ``owner``'s folder, as Resume finds it."""
    path = workspace.runs_dir(owner.key) / name
    shutil.copytree(source, path, symlinks=True)
    registry.seal(owner.key, path)
    name_a_hub_model(path)
    (path / "job.json").write_text(json.dumps({"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False}))
    RunDirectory(path).status_path.write_text(json.dumps({"state": "cancelled"}))
    return path


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---- 1. round-robin order ---------------------------------------------------------------------------


def test_runs_start_round_robin_across_users_first_in_first_out_within_each(shared, trainers):
    alice, bob, carol = user("alice"), user("bob"), user("carol")
    queued = [queue(trainers, alice, f"alice{i}") for i in (1, 2, 3)]
    queued += [queue(trainers, bob, "bob1"), queue(trainers, carol, "carol1")]
    expected = ["alice1", "bob1", "carol1", "alice2", "alice3"]

    # What the Runs page shows as "#n in queue", before anything starts.
    view = [run.path.name for _, run in jobs.queued(registry.all_runs(shared=True))]
    positions = {**runs.queue_positions(alice), **runs.queue_positions(bob), **runs.queue_positions(carol)}

    runner = runner_for(trainers, gpu_ids=[])
    runner.tick()
    started = []
    for _ in expected:
        now = launched_runs(queued)
        assert len(now) == 1, f"one run at a time on the CPU, got {[r.path.name for r in now]}"
        run = now[0]
        wait_for(lambda run=run: state(run) == "running")
        started.append(run.path.name)
        release_and_reap(runner, run)
    assert launched_runs(queued) == [] and not runner.tick()
    assert (started, view, positions) == (expected, expected, {name: i for i, name in enumerate(expected, start=1)})
    assert [name for name, _ in trainers.built] == expected, "one command per run, in that order"
    assert [state(r) for r in queued] == ["finished"] * 5


# ---- 2. runs of one user training at once ----------------------------------------------------------


def test_one_user_trains_at_most_max_running_runs_while_another_user_takes_the_free_gpu(shared, trainers):
    alice, bob = user("alice"), user("bob")
    first, second = queue(trainers, alice, "a1", gpus=1), queue(trainers, alice, "a2", gpus=1)
    bobs = queue(trainers, bob, "b1", gpus=1)
    runner = runner_for(trainers, gpu_ids=[0, 1], max_running_runs=1)
    runner.tick()
    wait_for(lambda: state(first) == "running" and state(bobs) == "running")
    assert {first.read_status()["gpus"], bobs.read_status()["gpus"]} == {"0", "1"}, "one GPU each"
    for _ in range(5):  # ticks while alice's first run trains: her second waits although it would fit later
        runner.tick()
        assert state(second) == "queued" and not jobs.launched(second)
    freed = first.read_status()["gpus"]
    release_and_reap(runner, first)
    wait_for(lambda: state(second) == "running")
    assert second.read_status()["gpus"] == freed, "alice's second run takes the GPU her first one freed"
    release_and_reap(runner, second)
    release_and_reap(runner, bobs)
    assert sorted(name for name, _ in trainers.built) == ["a1", "a2", "b1"]


def test_the_local_user_is_not_limited_to_max_running_runs(no_runner, trainers, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    local = identity.local_user()
    mine = [queue(trainers, local, f"l{i}", gpus=1) for i in (1, 2)]
    assert all(r.path.parent == no_runner / "runs" for r in mine)
    runner = runner_for(trainers, gpu_ids=[0, 1], max_running_runs=1)
    runner.tick()
    wait_for(lambda: all(state(r) == "running" for r in mine))
    assert sorted(r.read_status()["gpus"] for r in mine) == ["0", "1"]
    for run in mine:
        release_and_reap(runner, run)
    assert len(trainers.built) == 2


# ---- 3. limits, with messages that say what is wrong and what to do ---------------------------------


def queue_full(alice: identity.User, trained_runs) -> tuple[RunDirectory, RunDirectory, Path]:
    """Alice at LORA_LAB_MAX_QUEUED_RUNS=2: one run training, one waiting; and a stopped run she may resume."""
    first, second = plan_and_launch(alice, "q1"), plan_and_launch(alice, "q2")
    first.update_status(state="running")  # training counts as much as waiting
    return first, second, stopped_run(alice, trained_runs["bert-lr2e-3"], "stopped")


@pytest.mark.parametrize("refused", ["launch", "resume"])
def test_max_queued_runs_refuses_the_next_launch_or_resume_with_a_clear_message(
    shared, trained_runs, monkeypatch, refused
):
    monkeypatch.setenv("LORA_LAB_MAX_QUEUED_RUNS", "2")
    alice = user("alice")
    _, _, stopped = queue_full(alice, trained_runs)
    with pytest.raises(UserError) as err:
        if refused == "launch":
            plan_and_launch(alice, "q3")
        else:
            runs.resume(alice, "stopped")
    message = str(err.value)
    assert message.startswith("queue: you have 2 runs queued or training"), message
    assert "at most 2 per user" in message and "cancel one on the Runs page" in message, message
    assert not (workspace.runs_dir(alice.key) / "q3").exists(), "a refused launch leaves no run folder"
    assert RunDirectory(stopped).read_status()["state"] == "cancelled", "a refused resume leaves the run as it was"


def test_max_queued_runs_is_per_user_and_a_cancelled_run_frees_a_slot(shared, trained_runs, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_QUEUED_RUNS", "2")
    alice, bob = user("alice"), user("bob")
    _, second, stopped = queue_full(alice, trained_runs)
    with pytest.raises(UserError, match="at most 2 per user"):
        plan_and_launch(alice, "q3")
    assert plan_and_launch(bob, "b1").read_status()["state"] == "queued", "the limit is per user"

    runs.cancel(alice, "q2")  # a slot frees: resume goes through, and the limit holds again after it
    assert state_of(second) == "cancelled"
    runs.resume(alice, "stopped")
    assert RunDirectory(stopped).read_status()["state"] == "queued"
    with pytest.raises(UserError, match="at most 2 per user"):
        plan_and_launch(alice, "q3")


@pytest.mark.parametrize("size", [3 * MiB, int(1.4 * MiB), MiB + 1], ids=["3 MiB", "1.4 MiB", "1 MiB + 1 byte"])
def test_max_upload_mb_refuses_a_larger_file_and_stores_nothing(shared, monkeypatch, size):
    monkeypatch.setenv("LORA_LAB_MAX_UPLOAD_MB", "1")
    alice = user("alice")
    data = b"x" * (size - 1) + b"\n"
    with pytest.raises(UserError) as err:
        uploads.save_upload(alice, "big.txt", data, "causal-lm")
    message = str(err.value)
    found = re.fullmatch(r"upload: the file is ([\d.]+) MiB; at most 1 MiB per upload", message)
    assert found, message
    assert float(found.group(1)) > 1, f"the size shown must exceed the limit it is refused for: {message!r}"
    assert files_under(workspace.uploads_dir(alice.key)) == [], "nothing stored"


def test_max_upload_mb_accepts_a_file_of_exactly_the_limit(shared, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_UPLOAD_MB", "1")
    kept = uploads.save_upload(user("alice"), "fits.txt", b"y" * (MiB - 1) + b"\n", "causal-lm")
    assert kept.stat().st_size == MiB


def test_max_storage_mb_refuses_uploads_past_the_users_disk(shared, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_STORAGE_MB", "3")
    alice, bob = user("alice"), user("bob")
    uploads.save_upload(alice, "first.txt", b"a" * (2 * MiB - 1) + b"\n", "causal-lm")
    stored = files_under(workspace.uploads_dir(alice.key))
    with pytest.raises(UserError) as err:
        uploads.save_upload(alice, "second.txt", b"b" * (int(1.5 * MiB) - 1) + b"\n", "causal-lm")
    message = str(err.value)
    assert message.startswith("storage: your runs and uploads take 2 MiB of your 3 MiB"), message
    assert "delete runs you no longer need" in message
    assert files_under(workspace.uploads_dir(alice.key)) == stored, "the refused upload is not stored"
    assert uploads.save_upload(bob, "second.txt", b"b" * (int(1.5 * MiB) - 1) + b"\n", "causal-lm").is_file(), (
        "another user's disk is their own"
    )


def storage_full(alice: identity.User, trained_runs) -> Path:
    """Alice at LORA_LAB_MAX_STORAGE_MB=3 past her disk: a 2 MiB upload and a stopped run of ~2 MiB."""
    uploads.save_upload(alice, "first.txt", b"a" * (2 * MiB - 1) + b"\n", "causal-lm")
    stopped = stopped_run(alice, trained_runs["bert-lr2e-3"], "stopped")
    # Checkpoints hold the trained weights only (a few KiB here): a long log makes the run ~2 MiB, 4 MiB of 3.
    with (stopped / "train.log").open("ab") as log:
        log.write(b"x" * (2 * MiB))
    return stopped


@pytest.mark.parametrize("refused", ["launch", "resume"])
def test_max_storage_mb_refuses_launches_and_resumes_past_the_users_disk(shared, trained_runs, monkeypatch, refused):
    monkeypatch.setenv("LORA_LAB_MAX_STORAGE_MB", "3")
    alice = user("alice")
    stopped = storage_full(alice, trained_runs)
    with pytest.raises(UserError) as err:
        if refused == "launch":
            plan_and_launch(alice, "over")
        else:
            runs.resume(alice, "stopped")
    message = str(err.value)
    assert re.match(r"storage: your runs and uploads take [3-5](\.\d)? MiB of your 3 MiB; delete runs", message), (
        message
    )
    assert not (workspace.runs_dir(alice.key) / "over").exists()
    assert RunDirectory(stopped).read_status()["state"] == "cancelled"


def test_max_storage_mb_a_launch_fits_again_once_a_run_is_deleted(shared, trained_runs, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_STORAGE_MB", "3")
    alice = user("alice")
    storage_full(alice, trained_runs)
    with pytest.raises(UserError, match="storage: your runs and uploads take"):
        plan_and_launch(alice, "over")
    runs.delete(alice, "stopped")  # what the message says to do: then a launch fits again
    assert plan_and_launch(alice, "fits").read_status()["state"] == "queued"


# ---- 4. the local user has no limits ----------------------------------------------------------------


def test_the_local_user_is_exempt_from_queue_upload_and_storage_limits(no_runner, trained_runs, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in ("LORA_LAB_MAX_QUEUED_RUNS", "LORA_LAB_MAX_UPLOAD_MB", "LORA_LAB_MAX_STORAGE_MB"):
        monkeypatch.setenv(name, "1")
    local = identity.local_user()
    assert settings.load() == settings.Settings(max_queued_runs=1, max_upload_mb=1, max_storage_mb=1)
    launched = [plan_and_launch(local, f"run{i}") for i in range(3)]
    assert [state(r) for r in launched] == ["queued"] * 3, "past max_queued_runs"
    big = uploads.save_upload(local, "big.txt", b"z" * (3 * MiB - 1) + b"\n", "causal-lm")
    assert big.stat().st_size == 3 * MiB, "past max_upload_mb and max_storage_mb"
    stopped = stopped_run(local, trained_runs["bert-lr2e-3"], "stopped")
    runs.resume(local, "stopped")
    assert RunDirectory(stopped).read_status()["state"] == "queued", "resume past every limit"
    # The same calls refuse a signed-in user under these limits.
    monkeypatch.setenv("LORA_LAB_USERS", "huggingface")
    alice = user("alice")
    with pytest.raises(UserError):
        uploads.save_upload(alice, "big.txt", b"z" * (3 * MiB - 1) + b"\n", "causal-lm")
    with pytest.raises(UserError):  # the second launch is past max_queued_runs
        for i in range(2):
            plan_and_launch(alice, f"run{i}")


def state_of(run: RunDirectory) -> str:
    return run.read_status().get("state")
