"""The launch gate on a shared app: every route that makes a run (New run form, Sweep grid, a YAML config, Resume, a
queued run the runner starts) passes webapp/services/gate.py, so no setting reaches another user's files, the
server's own files or past the operator's bounds; and nothing a user uploads can pass for a run.

Bob is the attacker, Alice the victim; both are signed in ("huggingface" mode). Nothing trains: the runner lock
is held (no_runner) and the one runner ticked here starts a fake trainer that records that it was asked.
"""

import dataclasses
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from finetune.config import BOUND, POLICIES, TrainConfig, field_policies
from finetune.errors import ConfigError, UserError
from finetune.rundir import CHECKPOINT_COMPLETE, TRAINER_STATE, RunDirectory
from tests.webapp.test_isolation import hf_user, snapshot
from tests.webapp.test_jobs import FAKE_TRAINER, FakeTrainers, wait_for
from webapp.runner import jobs, loop
from webapp.services import (
    devices,
    gate,
    identity,
    launch,
    quotas,
    registry,
    runs,
    settings,
    sweeps,
    uploads,
    workspace,
)

CSV = b"review,sentiment\nthe film was great,positive\nthe film was awful,negative\n" * 20
SECRET_CSV = b"review,sentiment\nalice's secret text,positive\nanother secret,negative\n" * 20
ROUTES = ("form", "sweep", "yaml", "resume", "queued")


@pytest.fixture
def attack(no_runner, monkeypatch) -> dict:
    """Alice with an upload and a run, Bob with an upload and settings that pass; what Bob aims at."""
    for name in ("LORA_LAB_OPERATORS", "LORA_LAB_MAX_QUEUED_RUNS", "LORA_LAB_MAX_STORAGE_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORA_LAB_USERS", "huggingface")
    alice, bob = hf_user("alice"), hf_user("bob")
    alice_upload = uploads.save_upload(alice, "secret.csv", SECRET_CSV, "text-classification")
    alice_run = _bobs_kind_of_run(alice, "private", {})
    ok = {
        "model_name_or_path": str(workspace.demo_dir() / "checkpoints" / "bert"),
        "train_file": str(uploads.save_upload(bob, "mine.csv", CSV, "text-classification")),
        "max_steps": 4,
    }
    return {
        "alice": alice,
        "bob": bob,
        "home": no_runner,
        "ok": ok,
        "alice_upload": alice_upload,
        "alice_run": alice_run,
    }


def _bobs_kind_of_run(user: identity.User, name: str, values: dict, state: str = "finished") -> Path:
    """A run folder as launch.launch makes it (sealed, config.yaml, job.json, a status), with a checkpoint."""
    run = RunDirectory(workspace.runs_dir(user.key) / name)
    run.path.mkdir(parents=True)
    registry.seal(user.key, run.path)
    (run.path / "config.yaml").write_text(yaml.safe_dump({**values, "output_dir": str(run.path)}))
    jobs.Job("cpu", 1, 0).write(run)
    checkpoint = run.checkpoints_dir / "step_2"
    checkpoint.mkdir(parents=True)
    (checkpoint / CHECKPOINT_COMPLETE).write_text(json.dumps({"complete": True}))
    (checkpoint / TRAINER_STATE).write_text(json.dumps({"global_step": 2}))
    run.update_status(state=state, queued_at=time.time())
    return run.path


# What Bob may try, by name: Alice's files, the server's, the app's own, and bounds raised. Each is a field and a
# function of the fixture's paths giving the value.
HOSTILE = {
    "train_file=Alice's upload": ("train_file", lambda a: str(a["alice_upload"])),
    "train_file=Alice's upload through ..": (
        "train_file",
        lambda a: (
            f"{workspace.uploads_dir(a['bob'].key)}/../../{a['alice'].key}/uploads/"
            f"{a['alice_upload'].parent.name}/upload.csv"
        ),
    ),
    "train_file=/etc/passwd": ("train_file", lambda a: "/etc/passwd"),
    "train_file=/proc/self/environ": ("train_file", lambda a: "/proc/self/environ"),
    "train_file=LORA_LAB_HOME/users": ("train_file", lambda a: str(a["home"] / "users")),
    "train_file=the sealing key": ("train_file", lambda a: str(a["home"] / registry.KEY_FILE)),
    "train_file=a relative path": ("train_file", lambda a: "upload.csv"),
    "validation_file=Alice's upload": ("validation_file", lambda a: str(a["alice_upload"])),
    "validation_file=/etc/passwd": ("validation_file", lambda a: "/etc/passwd"),
    "test_file=Alice's upload": ("test_file", lambda a: str(a["alice_upload"])),
    "test_file=/etc/passwd": ("test_file", lambda a: "/etc/passwd"),
    "model_name_or_path=Alice's run": ("model_name_or_path", lambda a: str(a["alice_run"])),
    "model_name_or_path=/etc": ("model_name_or_path", lambda a: "/etc"),
    "model_name_or_path=LORA_LAB_HOME": ("model_name_or_path", lambda a: str(a["home"])),
    # A hub-id-shaped name that a folder of the source tree shadows.
    "model_name_or_path=tests": ("model_name_or_path", lambda a: "tests"),
    "model_name_or_path=relative": ("model_name_or_path", lambda a: "../demo/checkpoints/bert"),
    "data_cache_dir=Alice's runs": ("data_cache_dir", lambda a: str(workspace.runs_dir(a["alice"].key))),
    "output_dir=Alice's runs": ("output_dir", lambda a: str(workspace.runs_dir(a["alice"].key) / "planted")),
    "resume_from_checkpoint=Alice's": (
        "resume_from_checkpoint",
        lambda a: str(a["alice_run"] / "checkpoints" / "step_2"),
    ),
    "max_unpacked_mb": ("max_unpacked_mb", lambda a: 100_000_000),
    "max_compression_ratio": ("max_compression_ratio", lambda a: 1e9),
    "max_archive_members": ("max_archive_members", lambda a: 1_000_000),
    "max_steps": ("max_steps", lambda a: 10_000_000),
    "num_train_epochs": ("num_train_epochs", lambda a: 1000),
    "max_eval_samples": ("max_eval_samples", lambda a: 1_000_000),
    "max_seq_length": ("max_seq_length", lambda a: 100_000),
    "block_size": ("block_size", lambda a: 100_000),
    "per_device_train_batch_size": ("per_device_train_batch_size", lambda a: 4096),
    "per_device_eval_batch_size": ("per_device_eval_batch_size", lambda a: 4096),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", lambda a: 1000),
    "dataloader_num_workers": ("dataloader_num_workers", lambda a: 64),
    "save_total_limit": ("save_total_limit", lambda a: 1000),
}


def test_every_config_field_has_exactly_one_policy_and_every_bound_a_ceiling():
    policies = field_policies()
    assert set(policies) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert not [name for name, policy in policies.items() if policy not in POLICIES]
    assert {name for name, policy in policies.items() if policy == BOUND} == set(gate.CEILINGS)
    for attribute in gate.CEILINGS.values():
        assert isinstance(getattr(settings.Settings(), attribute), (int, float)), attribute


def test_bobs_own_settings_pass_every_route_with_the_apps_fields_filled_in(attack):
    bob, setup = attack["bob"], devices.setups([])[0]
    cfg, _ = launch.plan(bob, "fine", attack["ok"], setup)
    run = launch.launch(bob, cfg, setup)
    written = yaml.safe_load(run.config_path.read_text())
    assert written["data_cache_dir"] == str(gate.cache_dir(bob.key)) and written["data_cache_dir"].startswith(
        str(workspace.user_root(bob.key))
    ), "archives unpack into Bob's own folder, which his quota counts"
    assert written["save_total_limit"] == 2 and written["max_eval_samples"] == 2000  # his (the defaults)
    assert runs.queue_positions(bob) == {"fine": 1}
    assert sweeps.plan(bob, "grid", "learning_rate=1e-4,2e-4", 0, 0, attack["ok"]).names == ["grid-01", "grid-02"]
    stopped = _bobs_kind_of_run(bob, "stopped", attack["ok"], state="cancelled")
    runs.resume(bob, "stopped")
    assert RunDirectory(stopped).read_status()["state"] == "queued"
    unlimited = TrainConfig(**{**attack["ok"], "output_dir": str(workspace.runs_dir(bob.key) / "x")})
    unlimited = dataclasses.replace(unlimited, max_eval_samples=None, save_total_limit=None)
    admitted = gate.admit(bob.key, unlimited, settings.load())
    assert (admitted.max_eval_samples, admitted.save_total_limit) == (5000, 5), "'all' becomes the ceiling"
    assert admitted.max_archive_members == 5000, "a default above the operator's ceiling is lowered to it"
    assert written["max_archive_members"] == 5000


def _try_route(route: str, a: dict, field: str, value) -> str:
    """Bob's attempt through ``route``; the refusal's text."""
    bob, setup = a["bob"], devices.setups([])[0]
    hostile = {**a["ok"], field: value}
    if route == "form":
        with pytest.raises(ConfigError) as err:
            cfg, _ = launch.plan(bob, "attempt", hostile, setup)
            launch.launch(bob, cfg if field != "output_dir" else dataclasses.replace(cfg, output_dir=value), setup)
        return str(err.value)
    if route == "sweep":
        with pytest.raises(ConfigError) as err:
            sweeps.queue(bob, sweeps.plan(bob, "attempt", f"{field}={value}", 0, 0, a["ok"]), setup)
        return str(err.value)
    if route == "yaml":
        path = a["home"] / "attempt.yaml"
        output_dir = value if field == "output_dir" else str(workspace.runs_dir(bob.key) / "attempt")
        path.write_text(yaml.safe_dump({**hostile, "output_dir": output_dir}))
        with pytest.raises(ConfigError) as err:
            launch.launch(bob, TrainConfig.from_yaml(path), setup)
        return str(err.value)
    if route == "resume":
        _bobs_kind_of_run(bob, "attempt", hostile, state="cancelled")
        with pytest.raises(UserError) as err:
            runs.resume(bob, "attempt")
        assert runs.summary(bob, "attempt").state == "cancelled"
        return str(err.value)
    trainers = FakeTrainers()
    trainers.scripts["attempt"] = FAKE_TRAINER
    queued = RunDirectory(_bobs_kind_of_run(bob, "attempt", hostile, state="queued"))
    runner = loop.Runner(workspace.all_runs_dirs, [], command_for=trainers, limits=settings.load())
    runner.tick()
    assert trainers.built == [], "nothing was started"
    assert queued.read_status()["state"] == "failed"
    return queued.read_status()["error"]


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_every_hostile_setting_and_writes_nothing(attack, route, case):
    field, value_of = HOSTILE[case]
    if field == "output_dir" and route in ("resume", "queued"):
        pytest.skip("a queued or resumed run writes into its own folder whatever its config.yaml says")
    alice_before = snapshot(workspace.user_root(attack["alice"].key))
    message = _try_route(route, attack, field, value_of(attack))
    assert field in message, message
    bob_runs = workspace.runs_dir(attack["bob"].key)
    if route in ("form", "sweep", "yaml"):
        assert not bob_runs.exists() or not list(bob_runs.iterdir()), "nothing is queued"
    assert snapshot(workspace.user_root(attack["alice"].key)) == alice_before


def test_the_app_on_one_machine_keeps_its_users_paths(no_runner, monkeypatch):
    """Local mode: the one user owns the machine, so a local path is theirs to train on."""
    monkeypatch.setenv("LORA_LAB_USERS", "local")
    cfg = TrainConfig(model_name_or_path="/models/mine", train_file="/data/mine.csv", output_dir="/tmp/x")
    assert gate.admit(identity.LOCAL_KEY, cfg, settings.load()) is cfg


def _run_shaped_zip() -> bytes:
    """Bob's upload: class folders of images, plus the files of a queued run."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("status.json", json.dumps({"state": "queued", "queued_at": time.time()}))
        archive.writestr("job.json", json.dumps({"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False}))
        archive.writestr("config.yaml", yaml.safe_dump({"model_name_or_path": "gpt2", "train_file": "/etc/passwd"}))
        archive.writestr(registry.SEAL_FILE, "0" * 64)
    return buffer.getvalue()


def test_a_folder_the_app_did_not_make_is_never_listed_queued_counted_or_started(attack, monkeypatch):
    """Bob's zip, unpacked where a run would be (as a data_cache_dir pointed at Alice's runs folder once did)."""
    monkeypatch.setenv("LORA_LAB_MAX_QUEUED_RUNS", "1")
    alice = attack["alice"]
    planted = workspace.runs_dir(alice.key) / "planted"
    with zipfile.ZipFile(io.BytesIO(_run_shaped_zip())) as archive:
        archive.extractall(planted)
    copied = workspace.runs_dir(alice.key) / "copied"  # a real run's folder under another name: its seal is not
    (copied).mkdir()
    for name in ("config.yaml", "job.json", "status.json", registry.SEAL_FILE):
        (copied / name).write_bytes((attack["alice_run"] / name).read_bytes())
    RunDirectory(copied).update_status(state="queued")
    assert [s.name for s in runs.list_runs(alice)] == ["private"]
    assert runs.queue_positions(alice) == {}
    quotas.check_can_queue(alice.key, settings.load())  # neither counts against her one queued run
    for ref in ("planted", "copied"):
        with pytest.raises(UserError, match="there is no run called"):
            runs.locate(alice, ref)
    trainers = FakeTrainers()
    loop.Runner(workspace.all_runs_dirs, [], command_for=trainers, limits=settings.load()).tick()
    assert trainers.built == []


def test_anonymous_visitors_share_one_allowance_however_many_addresses_they_open(no_runner, monkeypatch):
    monkeypatch.setenv("LORA_LAB_USERS", "anonymous")
    monkeypatch.setenv("LORA_LAB_MAX_ANONYMOUS_RUNS", "3")
    setup = devices.setups([])[0]
    visitors = [identity.visitor_user(identity.new_visitor_token()) for _ in range(4)]
    for visitor in visitors[:3]:
        values = {
            "model_name_or_path": str(workspace.demo_dir() / "checkpoints" / "bert"),
            "train_file": str(uploads.save_upload(visitor, "mine.csv", CSV, "text-classification")),
        }
        launch.launch(visitor, launch.plan(visitor, "one", values, setup)[0], setup)
    last = visitors[3]
    values["train_file"] = str(uploads.save_upload(last, "mine.csv", CSV, "text-classification"))
    with pytest.raises(UserError, match="visitors without an account have 3 runs queued or training"):
        launch.launch(last, launch.plan(last, "one", values, setup)[0], setup)
    assert not workspace.runs_dir(last.key).exists()
    signed_in = hf_user("dora")  # not a visitor: her own limits only (were the app in signed-in mode)
    quotas.check_can_queue(signed_in.key, settings.load())


def test_an_anonymous_run_is_stopped_at_the_anonymous_time_limit(no_runner, monkeypatch):
    monkeypatch.setenv("LORA_LAB_USERS", "anonymous")
    visitor, member = identity.visitor_user(identity.new_visitor_token()), hf_user("erin")
    trainers, setup, started = FakeTrainers(), devices.setups([])[0], {}
    for user in (visitor, member):  # queued in this order: the visitor's run takes the CPU first
        values = {
            "model_name_or_path": str(workspace.demo_dir() / "checkpoints" / "bert"),
            "train_file": str(uploads.save_upload(user, "mine.csv", CSV, "text-classification")),
        }
        started[user.kind] = launch.launch(user, launch.plan(user, f"run-{user.kind}", values, setup)[0], setup)
        trainers.scripts[f"run-{user.kind}"] = FAKE_TRAINER
        time.sleep(0.01)
    limits = settings.Settings(users="anonymous", anonymous_max_run_seconds=1.0)
    runner = loop.Runner(workspace.all_runs_dirs, [], command_for=trainers, limits=limits)
    wait_for(lambda: runner.tick() and started["visitor"].read_status().get("state") == "failed", timeout=60)
    assert "ran longer than the 1 s one run may take" in started["visitor"].read_status()["error"]
    wait_for(lambda: runner.tick() and started["huggingface"].read_status().get("state") == "running", timeout=60)
    time.sleep(2.0)
    runner.tick()
    assert started["huggingface"].read_status()["state"] == "running", "a signed-in user's run has the full time"
    (started["huggingface"].path / "release").touch()
    wait_for(lambda: runner.tick() is not None and started["huggingface"].read_status()["state"] == "finished")
