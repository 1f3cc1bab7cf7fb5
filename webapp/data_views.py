"""The New run page's look at the data: its size, classes and first rows, and the data checks' warnings with the
example rows each found (finetune/data/quality.py)."""

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from webapp import notices
from webapp.services import uploads

if TYPE_CHECKING:  # the data layer imports `datasets`: not on a page load
    from finetune.data.quality import Finding


def data_preview(report: uploads.DataReport) -> None:
    findings(report.findings)
    if report.sampled:
        st.caption(
            f"A {report.file_bytes / 2**20:,.0f} MB file: checked and previewed from its first "
            f"{report.num_examples:,} rows; training reads all of it."
        )
    cells = st.columns(3)
    cells[0].metric("Examples", report.num_examples)
    if report.labels:
        cells[1].metric("Classes", len(report.labels))
        cells[2].bar_chart(report.label_counts, height=140, horizontal=True)
    if report.thumbnails:  # image data: its preview table would list only labels
        st.image([image for image, _ in report.thumbnails], caption=[label for _, label in report.thumbnails], width=72)
        counts = pd.DataFrame({"class": list(report.label_counts), "examples": list(report.label_counts.values())})
        st.dataframe(counts, hide_index=True)
    elif not report.preview.empty and len(report.preview.columns):
        st.dataframe(report.preview, hide_index=True, height=200)


def findings(found: list["Finding"]) -> None:
    """A warning per finding, and under it an expander with the rows it found: the table shows the data as it is
    (no Markdown), so texts and file names from the upload appear exactly."""
    for finding in found:
        notices.warning(finding.message)
        if finding.examples:
            with st.expander(f"{finding.title}: the {len(finding.examples)} listed"):
                st.dataframe(pd.DataFrame(finding.examples).astype(str), hide_index=True)
