"""The New run page's optional validation and test files: uploaded there or picked from the user's earlier uploads,
each read by the engine's loader with the training data's columns before the run may launch."""

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import streamlit as st

from finetune.errors import UserError
from finetune.task_kinds import task_kind
from webapp import data_views, notices, widgets
from webapp.services import uploads
from webapp.services.identity import User

if TYPE_CHECKING:  # the data layer imports `datasets`: not on a page load
    from finetune.data.quality import Finding

# (config field, label, what it is for)
ROLES = (
    (
        "validation_file",
        "Validation data",
        "scored during training to pick the best checkpoint and stop early; without it a share of the training "
        "data is held out (Validation split % under Settings)",
    ),
    (
        "test_file",
        "Test data",
        "scored once at the end by the base and the fine-tuned model, never trained or selected on: the figures "
        "to report",
    ),
)
NONE, UPLOAD, EARLIER = "None", "Upload a file", "An earlier upload"


def held_out_files(user: User, task: str, columns: dict[str, Optional[str]], train: Path) -> dict[str, str]:
    """{config field: path} of the validation and test files chosen; the page stops on one that does not load, and
    warns of its examples that are in the training data ``train`` too."""
    chosen = {}
    with st.expander("Validation and test data (optional)"):
        for field, label, purpose in ROLES:
            path = _pick(user, task, field, label, purpose)
            if path is None:
                continue
            try:
                report = widgets.inspect_data(str(path), task, **columns)
            except UserError as err:
                notices.error(f"{label}: {err}")
                st.stop()
            st.caption(f"{label}: {report.num_examples:,} examples")
            data_views.findings(leaks(str(train), str(path), field, columns))
            chosen[field] = str(path)
    return chosen


@st.cache_data(show_spinner="Looking for examples also in the training data…", max_entries=32)
def leaks(train: str, held_out: str, field: str, columns: dict[str, Optional[str]]) -> list["Finding"]:
    return uploads.held_out_leaks(Path(train), Path(held_out), field, columns)


def _pick(user: User, task: str, field: str, label: str, purpose: str) -> Optional[Path]:
    """The file chosen for ``field``: None, a new upload (saved like the training data) or an earlier one."""
    source = st.radio(label, [NONE, UPLOAD, EARLIER], horizontal=True, key=f"{field}_source", help=purpose)
    if source == UPLOAD:
        kind = task_kind(task)
        uploaded = st.file_uploader(f"{label}: {kind.expected_upload}", type=list(kind.uploads), key=f"{field}_upload")
        if uploaded is None:
            return None
        try:
            return uploads.save_upload(user, uploaded.name, uploaded.getvalue(), task)
        except UserError as err:
            notices.error(str(err))
            st.stop()
    if source == EARLIER:
        earlier = uploads.earlier_uploads(user, task)
        if not earlier:
            st.caption("No earlier upload fits this task yet.")
            return None
        index = st.selectbox(f"{label}: upload", range(len(earlier)), format_func=lambda i: earlier[i][0], key=field)
        return earlier[index][1]
    return None
