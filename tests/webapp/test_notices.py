"""Messages built from user data show as the text they are: no link, image or HTML from an upload reaches the page,
uploads are named by the names their users gave, and a shared app prints no server path."""

from markdown_it import MarkdownIt

from tests.webapp.apptest import assert_ok, errors, open_app
from webapp import notices
from webapp.services import identity, uploads, workspace

HOSTILE = "label: column ![x](https://evil.example/p.png) or [click](https://evil.example) <img src=x> **bold** :red[x]"


def _rendered(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("strikethrough").render(markdown)


def test_plain_text_renders_as_itself():
    html = _rendered(notices.plain(HOSTILE))
    assert "<img" not in html and "<a " not in html and "<strong>" not in html, html
    assert "https://evil.example/p.png" in html and "&lt;img src=x&gt;" in html, "the text itself is kept"
    assert "<img" in _rendered(HOSTILE), "unescaped, the same text would load the image"
    assert notices.plain("one\ntwo").count("  \n") == 1, "line breaks stay"


def test_messages_name_the_upload_as_given_and_a_shared_app_hides_server_paths(shared):
    bob = identity.signed_in_user("bob", ())
    stored = uploads.save_upload(bob, "My reviews (2026).csv", b"text,label\na,b\n", "text-classification")
    message = f"train_file: could not read {stored} as csv (ParserError: ...); see {workspace.home()}/runner.log"
    shown = uploads.shown(message, shared=True)
    assert shown == "train_file: could not read My reviews (2026).csv as csv (ParserError: ...); see runner.log"
    assert str(workspace.home()) in uploads.shown(message, shared=False), "a local user's own paths help them"
    assert "My reviews (2026).csv" in uploads.shown(message, shared=False)


def test_an_error_on_the_page_naming_a_hostile_column_shows_it_as_text(no_runner):
    at = open_app()
    at.radio(key="family").set_value("bert").run()
    at.radio(key="data_source").set_value("Upload a file").run()
    hostile = "![x](https://evil.example/p.png)"
    table = "text,label\n" + "".join(f"text {i},{hostile}\n" for i in range(30))  # one class: refused, named
    at.file_uploader(key="upload").set_value(("bad.csv", table.encode(), "text/csv")).run()
    assert_ok(at)
    [raw] = [e.value for e in at.error]
    assert "![x](" not in raw and "<img" not in _rendered(raw), raw
    assert hostile in errors(at)[0], "the reader still sees the column's name"
