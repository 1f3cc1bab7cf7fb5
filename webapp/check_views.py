"""The New run page's time figures: the estimate shown before Launch and Check's report with its verdict, which covers
time as well as memory (finetune.training.advice.WARN_LONGER_THAN_S)."""

from typing import Optional

import streamlit as st

from finetune.preflight import Report
from finetune.training.advice import WARN_LONGER_THAN_S, readable_duration


def time_estimate(seconds: Optional[float], device: str) -> None:
    """The run's rough training time before Launch, as a warning (with what to change) past WARN_LONGER_THAN_S."""
    if seconds is None:
        st.caption("No time estimate for this checkpoint: **Check** measures it on this machine.")
        return
    text = (
        f"Estimated training time: about {readable_duration(seconds)} of training steps on {device}, loading and "
        "evaluations on top (rough, from the model and the data's size; **Check** measures the whole run)."
    )
    if seconds > WARN_LONGER_THAN_S:
        st.warning(
            f"{text} That is over {WARN_LONGER_THAN_S // 60} min: fewer epochs, a max_steps limit, a smaller sample "
            "of the data or a GPU make it shorter."
        )
    else:
        st.caption(text)


def _verdict(checked: Report) -> None:
    """Check's verdict on a run that fits: green when it also trains within WARN_LONGER_THAN_S, else what to change."""
    memory = f"{checked.peak_memory_mb:,.0f} of {checked.memory_capacity_mb:,.0f} MiB on {checked.device}"
    took = "" if checked.estimated_seconds is None else readable_duration(checked.estimated_seconds)
    if not checked.time_advice:
        st.success(f"Fits: {memory}" + (f"; the run takes about {took}." if took else "."))
        return
    st.warning(
        f"Fits in memory ({memory}), but the run takes about {took}. To train within {WARN_LONGER_THAN_S // 60} min, "
        "change one or more of:\n\n" + "\n".join(f"- {item}" for item in checked.time_advice)
    )


def show(checked: Report) -> None:
    """Check's figures (peak memory, time per step, the run's time) and its verdict on memory and time."""
    memory_col, step_col, run_col = st.columns(3)
    memory_col.metric(
        "Peak memory",
        f"{checked.peak_memory_mb:,.0f} MiB",
        help=f"{checked.memory_measure}; "
        f"{checked.memory_capacity_mb:,.0f} MiB on {checked.device} (per device: one GPU of DDP)",
    )
    step_col.metric(
        "Time per step",
        "—" if checked.seconds_per_step is None else f"{checked.seconds_per_step:.2f} s",
        help="Per optimizer step, on the longest batches",
    )
    run_col.metric(
        "Estimated run time",
        "—" if checked.estimated_seconds is None else readable_duration(checked.estimated_seconds),
        help=f"{checked.total_steps:,} steps and {checked.evaluations} evaluation(s), set-up included",
    )
    if checked.fits:
        _verdict(checked)
    else:
        st.warning(
            f"Does not fit {checked.device} ({checked.peak_memory_mb:,.0f} of "
            f"{checked.memory_capacity_mb:,.0f} MiB). Change one or more of:\n\n"
            + "\n".join(f"- {item}" for item in checked.advice)
        )
