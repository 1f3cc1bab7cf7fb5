"""Small helpers for AppTest-driven page tests."""

import re
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

from finetune.rundir import RunDirectory
from tests.conftest import REPO
from tests.webapp.conftest import APP

# The accelerate of the environment the tests run in, as the page names it for copy-paste from the project folder.
ACCELERATE = Path(sys.executable).absolute().with_name("accelerate")
ACCELERATE = ACCELERATE.relative_to(REPO) if ACCELERATE.is_relative_to(REPO) else ACCELERATE
CPU_PREFIX = f"{ACCELERATE} launch --config_file configs/accelerate/cpu.yaml"


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    if page:
        at.switch_page(page).run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert len(found) == 1, f"expected one {label!r} button, found {[b.label for b in at.button]}"
    return found[0]


def labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def shown(markdown: str) -> str:
    """The text a message element shows: the pages escape Markdown in messages (webapp/notices.py)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("  \n", "\n")


def errors(at) -> list[str]:
    """The text of each error message on the page (``at`` an AppTest or one of its blocks, e.g. at.sidebar)."""
    return [shown(e.value) for e in at.error]


def warnings(at) -> list[str]:
    return [shown(w.value) for w in at.warning]


def state_of(run: Path) -> str:
    return RunDirectory(run).read_status().get("state")


def upload_image_zip(at: AppTest, root: Path, name: str = "colours.zip") -> AppTest:
    """Choose ViT on New run and upload the class folders under ``root`` as a .zip, as a person would."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted(root.rglob("*.png")):
            archive.write(file, file.relative_to(root))
    at.radio(key="family").set_value("vit").run()
    at.radio(key="data_source").set_value("Upload a file").run()
    return at.file_uploader(key="upload").set_value((name, buffer.getvalue(), "application/zip")).run()
