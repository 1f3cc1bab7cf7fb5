"""Anonymous visitors: the page says plainly that the address is the key to their runs, and the key can be replaced,
after which the old address opens nothing. Pages are driven with AppTest and ``?visitor=``; the sidebar is read on
the first page a session opens (AppTest keeps no sidebar across its switch_page)."""

from streamlit.testing.v1 import AppTest

from finetune.errors import UserError
from tests.webapp.apptest import assert_ok, errors, warnings
from tests.webapp.conftest import APP
from tests.webapp.test_isolation import give
from tests.webapp.test_isolation_pages import session, table_of
from webapp.services import identity, runs, visitors


def first_page(visitor: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    if visitor:
        at.query_params["visitor"] = visitor
    at.run()
    assert_ok(at)
    return at


def test_the_sidebar_warns_that_the_address_gives_full_control(shared, clean_env):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    at = first_page()
    warning = " ".join(warnings(at.sidebar))
    assert "This page's address is the key to your runs" in warning
    assert "can see, cancel, delete and download your runs" in warning
    assert [b.label for b in at.sidebar.button] == ["Replace the address key"]


def test_replacing_the_key_keeps_the_runs_and_retires_the_old_address(shared, trained_runs, clean_env):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    old = identity.new_visitor_token()
    me = visitors.visitor_for(old)
    give(me, trained_runs["bert-lr2e-3"], "mine")
    assert list(table_of(session("pages/runs.py", visitor=old)).index) == ["mine"]

    at = first_page(old)
    at.sidebar.button[0].click().run()
    assert_ok(at)
    new = at.query_params.get("visitor")
    assert new != old and identity.VISITOR_TOKEN.fullmatch(new)
    assert list(table_of(session("pages/runs.py", visitor=new)).index) == ["mine"], "the same workspace, new address"
    assert visitors.visitor_for(new).key == me.key
    assert [s.name for s in runs.list_runs(visitors.visitor_for(new))] == ["mine"]

    stale = first_page(old)
    assert "was replaced by a newer one" in " ".join(errors(stale))
    assert not stale.dataframe, "the old address shows no runs"
    stale.button[0].click().run()  # "Open a new workspace"
    assert_ok(stale)
    fresh = stale.query_params.get("visitor")
    assert fresh not in (old, new) and identity.VISITOR_TOKEN.fullmatch(fresh)
    assert runs.list_runs(visitors.visitor_for(fresh)) == [] and not errors(stale)


def test_only_the_address_holder_can_replace_its_key(shared, clean_env):
    clean_env.setenv("LORA_LAB_USERS", "anonymous")
    mine, theirs = identity.new_visitor_token(), identity.new_visitor_token()
    try:
        visitors.replace_key(visitors.visitor_for(mine), theirs)
    except UserError as err:
        assert "only the visitor whose address this is" in str(err)
    else:
        raise AssertionError("replaced another visitor's key")
    assert visitors.visitor_for(theirs).key == identity.visitor_user(theirs).key, "their address still works"
