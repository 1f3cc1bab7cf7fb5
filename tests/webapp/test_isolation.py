"""Users of a shared app are kept apart: each sees and manages only their own runs and uploads.

Services are called with the users the pages would build (signed in with Hugging Face, anonymous
visitors, the local user); pages are driven through AppTest with ``at.user`` (Streamlit's ``st.user``)
or the ``visitor`` query parameter. Runs are copies of the session's tiny trained runs (conftest.py).
"""

import hashlib
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from finetune.errors import UserError
from finetune.rundir import RunDirectory
from tests.webapp.apptest import state_of
from tests.webapp.conftest import name_a_hub_model
from webapp.services import identity, registry, runs, settings, uploads, workspace

CSV = b"review,sentiment\nthe movie was great,positive\nthe movie was awful,negative\n" * 20
ACTIONS = {
    "locate": runs.locate,
    "summary": runs.summary,
    "cancel": runs.cancel,
    "resume": runs.resume,
    "delete": runs.delete,
    "adapter_zip": runs.adapter_zip,
}


def hf_user(name: str, subject: str | None = None) -> identity.User:
    """The user the pages build for a Hugging Face sign-in as ``name`` (``hf_login(name)``: OIDC subject
    "id-<name>")."""
    return identity.signed_in_user(name, settings.load().operators, f"hf_{name}_secret", subject or f"id-{name}")


def give(user: identity.User, source: Path, name: str, state: str | None = None) -> Path:
    """A copy of a trained run in ``user``'s runs folder; ``state`` rewrites its status as the app would leave it."""
    workspace.register(user.key, user.name)
    target = workspace.runs_dir(user.key) / name
    shutil.copytree(source, target, symlinks=True)
    registry.seal(user.key, target)
    name_a_hub_model(target)
    if state:
        (target / "job.json").write_text(json.dumps({"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False}))
        RunDirectory(target).status_path.write_text(json.dumps({"state": state, "queued_at": time.time()}))
    return target


def snapshot(root: Path) -> dict[str, str]:
    """Every folder and file under ``root`` (symbolic links not followed), files by content hash."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def crafted_refs(victim: identity.User, name: str) -> list:
    """References another user might type or forge to reach ``victim``'s run ``name``."""
    key, root = victim.key, workspace.runs_dir(victim.key)
    return [
        name,
        f"{key}/{name}",
        f"/{name}",
        f"./{name}",
        f"{name}/",
        f"{name}/.",
        f"{key}/{name}/",
        f"{key}//{name}",
        f"{key}/./{name}",
        f"{key}/../{key}/{name}",
        f"../users/{key}/runs/{name}",
        f"../../users/{key}/runs/{name}",
        f"users/{key}/runs/{name}",
        f"runs/../../users/{key}/runs/{name}",
        str(root / name),
        str(root),
        f"{root}/",
        f"..\\users\\{key}\\runs\\{name}",
        f"%2e%2e/users/{key}/runs/{name}",
        f"~/{name}",
        f"{key.upper()}/{name}",
        f"{key} /{name}",
        f" {key}/{name}",
        f"{identity.LOCAL_KEY}/{name}",
        f"{identity.LOCAL_KEY}/../users/{key}/runs/{name}",
        "..",
        ".",
        "",
        "/",
        "//",
        None,
        "*",
        f"{name[:3]}*",
        f"{key}/*",
        "\0",
        f"{name}\0",
        f"{key}/{name}\0",
        f"{key}\0/{name}",
        f"\0/{name}",
        "a" * 300,
        f"{key}/{'a' * 300}",
    ]


def refused(action, user: identity.User, ref) -> str:
    with pytest.raises(UserError) as err:
        action(user, ref)
    return str(err.value)


# ---- 1. services: runs, uploads, operators, visitors -------------------------------------------------


def test_services_keep_each_users_runs_and_uploads_apart(shared, trained_runs):
    home, bert = shared, trained_runs["bert-lr2e-3"]
    alice, bob, carol = hf_user("alice"), hf_user("bob"), hf_user("carol")
    assert (alice.is_operator, bob.is_operator, carol.is_operator) == (False, False, True)
    assert len({alice.key, bob.key, carol.key}) == 3 and all(identity.KEY.fullmatch(u.key) for u in (alice, bob, carol))
    mine = {
        "alice-done": give(alice, bert, "alice-done"),
        "alice-waiting": give(alice, bert, "alice-waiting", "queued"),
        "alice-stopped": give(alice, bert, "alice-stopped", "cancelled"),
    }
    bobs = {"bob-done": give(bob, bert, "bob-done"), "same": give(bob, bert, "same")}
    local_run = give(identity.local_user(), bert, "local-done")
    assert local_run.parent == home / "runs" and mine["alice-done"].parent == home / "users" / alice.key / "runs"

    # Each user lists only their own runs, by plain name.
    assert {s.ref: s.path for s in runs.list_runs(alice)} == mine
    assert {s.ref: s.path for s in runs.list_runs(bob)} == bobs
    assert {s.owner for s in runs.list_runs(alice)} == {alice.key}
    assert runs.summary(bob, "bob-done").path == bobs["bob-done"]
    assert zipfile.ZipFile(io.BytesIO(runs.adapter_zip(bob, "bob-done"))).namelist()
    assert set(runs.queue_positions(alice)) == {"alice-waiting"} and runs.queue_positions(bob) == {}

    # Bob reaches none of alice's runs (nor the local user's), whatever he passes as the reference: see
    # test_no_crafted_reference_reaches_another_users_run.

    # A user name given up and taken by someone else (another OIDC subject) is another workspace.
    newcomer = hf_user("alice", subject="id-someone-else")
    assert newcomer.key != alice.key and runs.list_runs(newcomer) == []
    refused(runs.locate, newcomer, "alice-done")

    # Bob's own run called "same" is his: acting on "same" never touches another user's folder.
    give(alice, bert, "same")
    runs.delete(bob, "same")
    assert not bobs["same"].exists() and (workspace.runs_dir(alice.key) / "same").is_dir()

    # Uploads: the same bytes from two users are stored twice, each in its uploader's folder.
    paths = {u.name: uploads.save_upload(u, "reviews.csv", CSV, "text-classification") for u in (alice, bob, carol)}
    assert len(set(paths.values())) == 3
    for user in (alice, bob, carol):
        path = paths[user.name]
        assert path.is_relative_to(workspace.uploads_dir(user.key)) and path.read_bytes() == CSV
        assert [p for p in paths.values() if p.is_relative_to(workspace.uploads_dir(user.key))] == [path]
    assert uploads.save_upload(alice, "again.csv", CSV, "text-classification") == paths["alice"], "stored once per user"
    shutil.rmtree(paths["alice"].parent)
    assert paths["bob"].read_bytes() == CSV and paths["carol"].read_bytes() == CSV

    # Carol, an operator, sees every user's runs as "owner/name" and acts on them.
    seen = {s.ref: s for s in runs.list_runs(carol)}
    expected = {f"{alice.key}/{n}" for n in [*mine, "same"]} | {f"{bob.key}/bob-done", "local/local-done"}
    assert set(seen) == expected
    assert all(seen[ref].owner == ref.split("/")[0] for ref in expected)
    names = runs.owner_names()
    assert (names[alice.key], names[bob.key], names[identity.LOCAL_KEY]) == ("alice", "bob", "local")
    assert runs.summary(carol, f"{alice.key}/alice-done").path == mine["alice-done"]
    assert runs.locate(carol, f"{bob.key}/bob-done") == bobs["bob-done"]
    assert zipfile.ZipFile(io.BytesIO(runs.adapter_zip(carol, f"{alice.key}/alice-done"))).namelist()
    assert set(runs.queue_positions(carol)) == {f"{alice.key}/alice-waiting"}
    runs.cancel(carol, f"{alice.key}/alice-waiting")
    assert state_of(mine["alice-waiting"]) == "cancelled"
    runs.resume(carol, f"{alice.key}/alice-stopped")
    assert state_of(mine["alice-stopped"]) == "queued"
    runs.delete(carol, f"{bob.key}/bob-done")
    assert not bobs["bob-done"].exists() and mine["alice-done"].is_dir()
    # Even an operator's references are names, never paths: every forged form is refused.
    before = snapshot(home)
    forged = [r for r in crafted_refs(alice, "alice-done") if r != f"{alice.key}/alice-done"]
    for ref in forged:
        refused(runs.locate, carol, ref)
    assert len(forged) == 40 and snapshot(home) == before


@pytest.mark.parametrize("action_name", ACTIONS)
@pytest.mark.parametrize("target", ["alice-done", "alice-waiting", "alice-stopped", "local-done"])
def test_no_crafted_reference_reaches_another_users_run(shared, trained_runs, target, action_name):
    """Bob reaches none of alice's runs (nor the local user's), whatever he passes as the reference."""
    home, bert, action = shared, trained_runs["bert-lr2e-3"], ACTIONS[action_name]
    alice, bob = hf_user("alice"), hf_user("bob")
    mine = {
        "alice-done": give(alice, bert, "alice-done"),
        "alice-waiting": give(alice, bert, "alice-waiting", "queued"),
        "alice-stopped": give(alice, bert, "alice-stopped", "cancelled"),
    }
    give(bob, bert, "bob-done")
    give(identity.local_user(), bert, "local-done")
    before = snapshot(home)
    statuses = {name: RunDirectory(path).read_status() for name, path in mine.items()}
    victim = identity.local_user() if target == "local-done" else alice
    for ref in crafted_refs(victim, target):
        message = refused(action, bob, ref)
        if victim is alice:
            assert message.startswith(("run: ", "owner: ")), (action_name, ref, message)
    assert snapshot(home) == before, "a refused action changed nothing on disk (no run, file or folder)"
    assert {name: RunDirectory(path).read_status() for name, path in mine.items()} == statuses
    assert state_of(mine["alice-waiting"]) == "queued" and state_of(mine["alice-stopped"]) == "cancelled"


def visitors(home: Path, bert: Path) -> tuple[identity.User, identity.User]:
    """Two visitors (two addresses), each with one run: "mine" and "theirs"."""
    tokens = [identity.new_visitor_token() for _ in range(2)]
    first, second = (identity.visitor_user(t) for t in tokens)
    assert identity.visitor_user(tokens[0]) == first, "the same address is the same workspace"
    give(first, bert, "mine")
    give(second, bert, "theirs")
    return first, second


def test_visitors_get_their_own_folders(shared, trained_runs, clean_env):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    home = shared
    first, second = visitors(home, trained_runs["bert-lr2e-3"])
    assert first.key != second.key and first.kind == second.kind == "visitor"
    assert not (first.is_operator or second.is_operator) and first.hub_token is None
    assert workspace.runs_dir(first.key) == home / "users" / first.key / "runs"
    assert [s.ref for s in runs.list_runs(first)] == ["mine"] and [s.ref for s in runs.list_runs(second)] == ["theirs"]
    assert sorted(p.name for p in (home / "users").iterdir()) == sorted([first.key, second.key])


# name: a reference to the other visitor's run "theirs", {key} being the other visitor's key
VISITOR_REFS = {"name": "theirs", "key/name": "{key}/theirs", "path": "../users/{key}/runs/theirs"}


@pytest.mark.parametrize("action_name", ACTIONS)
@pytest.mark.parametrize("ref", VISITOR_REFS)
def test_a_visitor_reaches_no_other_visitors_run(shared, trained_runs, clean_env, ref, action_name):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    first, second = visitors(shared, trained_runs["bert-lr2e-3"])
    refused(ACTIONS[action_name], first, VISITOR_REFS[ref].format(key=second.key))
    assert (workspace.runs_dir(second.key) / "theirs").is_dir()


MALFORMED_VISITOR_KEYS = {
    "empty": "",
    "none": None,
    "short": "short",
    "21 characters": "a" * 21,
    "65 characters": "a" * 65,
    "a path": "../../../etc/passwd",
    "a folder": "a" * 21 + "/",
    "a dot": "a" * 21 + ".",
    "spaces": "a b" * 8,
    "not ascii": "ä" * 22,
    "a nul at the end": "a" * 22 + "\0",
    "nuls": "\0" * 22,
    "a slash inside": "a" * 11 + "/" + "a" * 11,
    "url-encoded dots": "%2e%2e" * 4,
}


@pytest.mark.parametrize("case", MALFORMED_VISITOR_KEYS)
def test_malformed_visitor_keys_are_refused(shared, trained_runs, clean_env, case):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    home = shared
    first, second = visitors(home, trained_runs["bert-lr2e-3"])
    message = refused(lambda _, t: identity.visitor_user(t), None, MALFORMED_VISITOR_KEYS[case])
    assert "visitor: the key in the address is malformed" in message
    assert sorted(p.name for p in (home / "users").iterdir()) == sorted([first.key, second.key])


# name: a call given a name, key or token with a trailing newline (alice and carol as arguments)
TRAILING_NEWLINE = {
    "check_key('local\\n')": lambda alice, carol: identity.check_key("local\n"),
    "check_key(alice's key + '\\n')": lambda alice, carol: identity.check_key(alice.key + "\n"),
    "visitor_user('a' * 22 + '\\n')": lambda alice, carol: identity.visitor_user("a" * 22 + "\n"),
    "check_new_name(alice, 'evil\\n')": lambda alice, carol: runs.check_new_name(alice, "evil\n"),
    # an operator's reference
    "locate(carol, alice's key + '\\n/x')": lambda alice, carol: runs.locate(carol, f"{alice.key}\n/x"),
}


@pytest.mark.parametrize("attempt", TRAILING_NEWLINE)
def test_names_keys_and_visitor_tokens_with_a_trailing_newline_are_refused(shared, attempt):
    """Python's ``$`` also matches before a final newline: the patterns must match the whole string."""
    home, alice, carol = shared, hf_user("alice"), hf_user("carol")
    workspace.register(alice.key, alice.name)
    workspace.runs_dir(alice.key)
    before = snapshot(home)
    with pytest.raises(UserError):
        TRAILING_NEWLINE[attempt](alice, carol)
    made = sorted(set(snapshot(home)) - set(before))  # folders made for a "key" that is no user's
    assert made == [], f"made: {made}"


# ---- 2. pages: one AppTest session per browser ------------------------------------------------------
