"""Streamlit pieces of the Runs page (pages/runs.py): the merged-model download, built in the background, and
a finished run's scores."""

import datetime

import pandas as pd
import streamlit as st

from finetune.errors import UserError
from webapp import notices
from webapp.services import runs
from webapp.services.identity import User
from webapp.services.run_detail import RunDetail

BUILD_REFRESH_SECONDS = 2  # how stale the build's progress may be
MERGED_HELP = (
    "The adapter folded into the base weights: loads with plain from_pretrained, no PEFT needed. Building it takes "
    "minutes for a large model; it goes on if you leave the page, and the download button appears when it is ready."
)


def merged_download(cell, user: User, ref: str, run_name: str) -> None:
    """The merged model's button in ``cell`` (build, building, download, or build again), and below it the build's
    progress or why it failed."""
    build = runs.merged_build(user, ref)
    if build.state == "ready":
        cell.download_button(
            "Download merged model (.zip)",
            lambda: runs.merged_zip(user, ref),  # the finished file, read only when the user clicks
            file_name=f"{run_name}-merged.zip",
            mime="application/zip",
            help=MERGED_HELP,
            on_click="ignore",  # no rerun: one that ends before the browser fetches the deferred zip drops it
        )
        return
    label = "Build merged model again" if build.state == "failed" else "Build merged model (.zip)"
    if cell.button(label, disabled=build.state == "building", help=MERGED_HELP, key=f"merge:{ref}"):
        try:
            runs.start_merged_build(user, ref)  # a second request joins the build under way
            st.rerun()
        except UserError as err:
            notices.error(str(err))
    if build.state == "building":
        _build_progress(user, ref)
    elif build.state == "failed":
        notices.error(build.error)


@st.fragment(run_every=BUILD_REFRESH_SECONDS)
def _build_progress(user: User, ref: str) -> None:
    build = runs.merged_build(user, ref)
    if build.state != "building":
        st.rerun()  # the whole page: the download button, or the error, replaces the progress
    elapsed = datetime.timedelta(seconds=round(build.elapsed))
    if build.phase == "zipping":
        step = f"step 2 of 2, zipping: {build.done_bytes / 2**20:,.0f} of {build.total_bytes / 2**20:,.0f} MiB"
    else:  # merging: loading the base model and folding the adapter in, which reports no progress of its own
        step = "step 1 of 2, merging the adapter into the base weights"
    st.progress(build.progress, text=f"Building the merged model ({step}) · {elapsed} so far")


def final_scores(detail: RunDetail) -> None:
    """The base model's and the fine-tuned model's scores on the validation split, and beside them those on the test
    file the user gave, when the run had one; under each, the changes with their 95% bootstrap intervals and, in
    words, whether the split was large enough to tell the main metric's change from noise."""
    splits = [
        (split, title, table)
        for split, title, table in (
            ("validation", "On the validation split", detail.final),
            ("test", "On the test file", detail.test),
        )
        if table
    ]
    if not splits:
        return
    for column, (split, title, table) in zip(st.columns(len(splits)), splits):
        column.markdown(f"**{title}**")
        column.table(pd.DataFrame.from_dict(table, orient="index"))
        changes = detail.changes.get(split)
        if changes:
            column.markdown(
                "Change, fine-tuned − base [95% bootstrap interval]: "
                + " · ".join(f"{metric} **{text}**" for metric, text in changes.items())
            )
        if detail.verdicts.get(split):
            column.markdown(detail.verdicts[split])
