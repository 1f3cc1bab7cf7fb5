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
from streamlit.testing.v1 import AppTest

from finetune.errors import UserError
from finetune.rundir import RunDirectory
from tests.webapp.apptest import assert_ok, button, labels, state_of
from tests.webapp.conftest import APP, name_a_hub_model
from webapp.services import catalog, identity, registry, runs, settings, uploads, workspace

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


def session(page: str, user: dict | None = None, visitor: str | None = None) -> AppTest:
    """A browser session on ``page`` (relative to webapp/), signed in as ``user`` or with ``?visitor=``."""
    at = AppTest.from_file(APP, default_timeout=180)
    if user is not None:
        at.user = user
    if visitor is not None:
        at.query_params["visitor"] = visitor
    at.switch_page(page).run()
    assert not at.exception, (page, user, visitor, [e.value for e in at.exception])
    return at


def hf_login(name: str) -> dict:
    """What ``st.user`` holds after "Sign in with Hugging Face" (expose_tokens = ["access"])."""
    return {
        "is_logged_in": True,
        "preferred_username": name,
        "name": name.title(),
        "sub": f"id-{name}",
        "tokens": {"access": f"hf_{name}_secret"},
    }


def table_of(at: AppTest):
    return at.dataframe[0].value.set_index("run")


def test_runs_page_sessions_see_and_act_on_their_own_runs_only(shared, trained_runs):
    bert = trained_runs["bert-lr2e-3"]
    alice, bob = hf_user("alice"), hf_user("bob")
    users = {alice.name: alice, bob.name: bob}
    made = {
        (u, n): give(users[u], bert, n, state)
        for u in users
        for n, state in (("same", None), ("waiting", "queued"), ("stopped", "cancelled"), (f"{u}-only", None))
    }

    at_alice, at_bob = session("pages/runs.py", hf_login("alice")), session("pages/runs.py", hf_login("bob"))
    for at, name in ((at_alice, "alice"), (at_bob, "bob")):
        own = {"same", "waiting", "stopped", f"{name}-only"}
        assert set(table_of(at).index) == own and "owner" not in table_of(at).columns
        assert set(at.selectbox(key="runs_selected").options) == own
        assert table_of(at).loc["waiting", "state"].startswith("⏳ queued (#")

    bobs_files = snapshot(workspace.user_root(bob.key))
    at = at_alice
    at.selectbox(key="runs_selected").set_value("waiting").run()
    button(at, "Cancel run").click().run()
    assert_ok(at)
    at.selectbox(key="runs_selected").set_value("stopped").run()
    button(at, "Resume").click().run()
    assert_ok(at)
    at.selectbox(key="runs_selected").set_value("same").run()
    button(at, "Delete…").click().run()
    button(at, "Delete…").click()  # AppTest reruns the whole script: the dialog is opened again (test_runs_page.py)
    button(at, "Delete for good").click().run()
    assert_ok(at)
    assert (state_of(made["alice", "waiting"]), state_of(made["alice", "stopped"])) == ("cancelled", "queued")
    assert not made["alice", "same"].exists()
    assert snapshot(workspace.user_root(bob.key)) == bobs_files, "alice's actions left bob's folder untouched"
    assert set(at.selectbox(key="runs_selected").options) == {"waiting", "stopped", "alice-only"}

    at_bob.run()
    assert_ok(at_bob)
    table = table_of(at_bob)
    assert set(table.index) == {"same", "waiting", "stopped", "bob-only"}
    assert table.loc["waiting", "state"].startswith("⏳ queued") and table.loc["stopped", "state"] == "⏹️ cancelled"

    # The operator sees both users' runs with their owner, and manages them.
    at_carol = session("pages/runs.py", hf_login("carol"))
    table = table_of(at_carol)
    refs = {f"{alice.key}/{n}" for n in ("waiting", "stopped", "alice-only")}
    refs |= {f"{bob.key}/{n}" for n in ("same", "waiting", "stopped", "bob-only")}
    assert set(table.index) == refs
    assert {ref: table.loc[ref, "owner"] for ref in refs} == {
        ref: "alice" if ref.startswith(alice.key) else "bob" for ref in refs
    }
    at_carol.selectbox(key="runs_selected").set_value(f"{bob.key}/waiting").run()
    button(at_carol, "Cancel run").click().run()
    assert_ok(at_carol)
    assert state_of(made["bob", "waiting"]) == "cancelled" and state_of(made["alice", "stopped"]) == "queued"


def give_compare_runs(trained_runs) -> tuple[identity.User, identity.User]:
    alice, bob = hf_user("alice"), hf_user("bob")
    give(alice, trained_runs["bert-lr2e-3"], "a-bert")
    give(alice, trained_runs["gpt2-tiny"], "a-gpt2")
    give(bob, trained_runs["bert-lr5e-3"], "b-bert")
    give(bob, trained_runs["bert-lr2e-3"], "b-stopped", "cancelled")
    return alice, bob


@pytest.mark.parametrize(
    ("who", "own", "finished"),
    [("alice", {"a-bert", "a-gpt2"}, {"a-bert", "a-gpt2"}), ("bob", {"b-bert", "b-stopped"}, {"b-bert"})],
    ids=["alice", "bob"],
)
def test_compare_and_playground_list_only_the_sessions_own_runs(shared, trained_runs, who, own, finished):
    give_compare_runs(trained_runs)
    compare = session("pages/compare.py", hf_login(who))
    assert set(compare.multiselect(key="compare_runs").options) == own
    assert set(compare.multiselect(key="compare_runs").value) <= own
    play = session("pages/playground.py", hf_login(who))
    assert {o.split(" · ")[0] for o in play.selectbox(key="play_run").options} == finished


def test_compare_lists_every_users_runs_for_the_operator(shared, trained_runs):
    alice, bob = give_compare_runs(trained_runs)
    carol = session("pages/compare.py", hf_login("carol"))
    assert set(carol.multiselect(key="compare_runs").options) == {
        f"{alice.key}/a-bert",
        f"{alice.key}/a-gpt2",
        f"{bob.key}/b-bert",
        f"{bob.key}/b-stopped",
    }


@pytest.mark.parametrize("page", ["pages/runs.py", "pages/compare.py", "pages/playground.py", "pages/new_run.py"])
def test_a_session_that_is_not_signed_in_sees_the_sign_in_button_and_no_runs(shared, trained_runs, page):
    give(hf_user("alice"), trained_runs["bert-lr2e-3"], "alice-done")
    at = session(page, {"is_logged_in": False})
    assert labels(at) == ["Sign in with Hugging Face"], page
    assert (len(at.dataframe), len(at.selectbox), len(at.multiselect)) == (0, 0, 0), page
    assert sorted(p.name for p in (shared / "users").iterdir()) == [hf_user("alice").key], "no folder for nobody"


def test_a_page_script_reached_without_the_apps_entry_point_stops_at_the_sign_in(shared, trained_runs):
    give(hf_user("alice"), trained_runs["bert-lr2e-3"], "alice-done")
    at = AppTest.from_file(str(Path(APP).parent / "pages" / "runs.py"), default_timeout=60)
    at.user = {"is_logged_in": False}
    at.run()
    assert_ok(at)
    assert labels(at) == ["Sign in with Hugging Face"] and len(at.dataframe) == 0
    assert sorted(p.name for p in (shared / "users").iterdir()) == [hf_user("alice").key], "no folder for nobody"


def test_anonymous_mode_gives_each_address_its_own_workspace(shared, trained_runs, clean_env):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    home, bert = shared, trained_runs["bert-lr2e-3"]
    fresh = session("pages/runs.py")
    token = fresh.query_params.get("visitor")
    assert isinstance(token, str) and identity.VISITOR_TOKEN.match(token), fresh.query_params
    assert [i.value for i in fresh.info] == ["No runs yet."]
    me = identity.visitor_user(token)
    assert not (home / "users" / me.key).exists(), "a visitor who only looks leaves no folder behind"
    give(me, bert, "mine")
    fresh.run()
    assert_ok(fresh)
    assert fresh.query_params.get("visitor") == token, "the key stays in the address"
    assert list(table_of(fresh).index) == ["mine"]

    other_token = identity.new_visitor_token()
    give(identity.visitor_user(other_token), bert, "theirs")
    other = session("pages/runs.py", visitor=other_token)
    assert list(table_of(other).index) == ["theirs"] and other.query_params.get("visitor") == other_token

    new_tokens = set()
    for bad in ("../../users", token[:21], token + "\0", f"{other_token}/..", token + "\n"):
        forged = session("pages/runs.py", visitor=bad)
        new_token = forged.query_params.get("visitor")
        assert new_token not in (bad, token, other_token) and identity.VISITOR_TOKEN.fullmatch(new_token), bad
        assert [i.value for i in forged.info] == ["No runs yet."], bad
        new_tokens.add(new_token)
    assert len({token, other_token, *new_tokens}) == 7
    assert sorted(p.name for p in (home / "users").iterdir()) == sorted(
        [me.key, identity.visitor_user(other_token).key]
    )


# ---- 3. local mode ------------------------------------------------------------------------------------


def test_local_mode_is_one_user_owning_the_workspace(no_runner, trained_runs, clean_env):
    home = no_runner
    assert settings.load().users == "local"
    me = identity.local_user()
    assert (me.key, me.kind, me.is_operator) == ("local", "local", True)
    assert workspace.runs_dir(me.key) == home / "runs" and workspace.uploads_dir(me.key) == home / "uploads"
    run = home / "runs" / "done"
    shutil.copytree(trained_runs["bert-lr2e-3"], run, symlinks=True)
    assert [(s.ref, s.path, s.owner) for s in runs.list_runs(me)] == [("done", run, "local")]
    upload = uploads.save_upload(me, "reviews.csv", CSV, "text-classification")
    assert upload.is_relative_to(home / "uploads")
    at = session("pages/runs.py")
    assert list(table_of(at).index) == ["done"] and "owner" not in table_of(at).columns
    assert "Sign in with Hugging Face" not in labels(at)
    assert not (home / "users").exists(), "local mode makes no per-user folders"


# ---- 4. pushing to the Hub -----------------------------------------------------------------------------


def test_push_uses_the_signed_in_users_own_token_and_never_the_servers_on_a_shared_app(shared, trained_runs, clean_env):
    clean_env.setenv("HF_TOKEN", "hf_server_secret")
    clean_env.setenv("LORA_LAB_ALLOW_PUSH", "1")
    alice = hf_user("alice")
    visitor = identity.visitor_user(identity.new_visitor_token())
    no_token = identity.signed_in_user("dave", ())
    assert runs.push_token(alice) == ("user", "hf_alice_secret")
    assert runs.push_token(visitor) == ("off", None)
    assert runs.push_token(no_token) == ("off", None), "a sign-in without the write scope pushes with nothing else"
    assert runs.push_token(identity.local_user()) == ("server", None)
    clean_env.delenv("LORA_LAB_ALLOW_PUSH")
    assert runs.push_token(identity.local_user()) == ("off", None)
    assert runs.push_token(alice) == ("user", "hf_alice_secret")
    clean_env.setenv("LORA_LAB_ALLOW_PUSH", "1")

    # On the page: alice pushes with her sign-in (the token is never shown); a visitor cannot push at all.
    give(alice, trained_runs["bert-lr2e-3"], "done")
    at = session("pages/runs.py", hf_login("alice"))
    assert button(at, "Push to Hub").disabled
    assert any("your Hugging Face sign-in" in c.value for c in at.caption)
    shown = [
        str(e.value)
        for kind in (at.markdown, at.caption, at.code, at.info, at.error, at.warning, at.success, at.text_input)
        for e in kind
    ]
    assert len(shown) >= 3 and not any("hf_alice_secret" in v or "hf_server_secret" in v for v in shown)
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    token = identity.new_visitor_token()
    give(identity.visitor_user(token), trained_runs["bert-lr2e-3"], "done")
    at = session("pages/runs.py", visitor=token)
    assert "Push to Hub" not in labels(at)
    assert any("Pushing needs your own Hugging Face token" in c.value for c in at.caption)


# ---- 5. typed checkpoints on a shared app ------------------------------------------------------------


# name: a path typed as the checkpoint, {victim} being alice's run folder, {relative} its path from the workspace
LOCAL_CHECKPOINTS = {
    "a run": "{victim}",
    "its adapter": "{victim}/adapter",
    "its checkpoint": "{victim}/checkpoints/step_82",
    "the demo checkpoint": "{demo_bert}",
    "a run with a slash": "{victim}/",
    "relative": "{relative}",
    "dot-relative": "./{relative}",
    "relative via ..": "../lab/{relative}",
    "home": "~",
    "under home": "~/anything",
    "/etc": "/etc",
    "the current folder": ".",
    "the parent folder": "..",
    "a run with spaces": " {victim} ",
}


def test_a_local_checkpoint_folder_is_fine_on_ones_own_machine(shared, demo_dir):
    demo_bert = demo_dir / "checkpoints" / "bert"
    assert catalog.inspect_checkpoint(str(demo_bert)).model_type == "bert"


@pytest.mark.parametrize("case", LOCAL_CHECKPOINTS)
def test_a_shared_app_refuses_local_checkpoint_paths(shared, trained_runs, demo_dir, monkeypatch, case):
    alice = hf_user("alice")
    victim = give(alice, trained_runs["bert-lr2e-3"], "alice-done")
    monkeypatch.chdir(shared)
    name = LOCAL_CHECKPOINTS[case].format(
        victim=victim, demo_bert=demo_dir / "checkpoints" / "bert", relative=f"users/{alice.key}/runs/alice-done"
    )
    with pytest.raises(UserError, match="is a local path; on this shared app enter a hub id"):
        catalog.inspect_checkpoint(name, allow_local=False)
