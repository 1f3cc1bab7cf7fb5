"""Users of a shared app are kept apart, page by page: sessions driven through AppTest with ``at.user`` (Streamlit's
``st.user``) or the ``visitor`` query parameter see and act on their own runs only; anonymous and local modes; pushes
use the signed-in user's token; local checkpoint paths on a shared app. Services alone: test_isolation.py.
"""

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from finetune.errors import UserError
from tests.webapp.apptest import assert_ok, button, labels, state_of
from tests.webapp.conftest import APP
from tests.webapp.test_isolation import CSV, give, hf_user, snapshot
from webapp.services import catalog, identity, runs, settings, uploads, workspace


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
