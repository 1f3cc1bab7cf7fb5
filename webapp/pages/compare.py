"""Compare: runs side by side, one section per task (differing settings, base vs fine-tuned with delta, scores on a
test file, cost), curves, confusion matrices."""

import pandas as pd
import streamlit as st

from webapp import widgets
from webapp.services import comparison, runs

EVERY = "(choose runs)"  # no experiment picked: the runs are chosen one by one


def show(result: comparison.Comparison) -> None:
    """One task's runs: the headline table, the scores on test files, every metric, then curves and matrices."""
    st.subheader(result.title)
    st.caption(
        "On the validation split: each run scores its untuned base model on it before training. "
        f"**Bold**: best fine-tuned value per metric. ★: best {result.primary}"
        + (f" ({result.best})." if result.best else " (no finished run).")
        + " Δ: fine-tuned − base [95% bootstrap interval]; an interval across 0 is within noise."
    )
    st.markdown(result.headline)
    if result.test:
        st.caption("On the test file given to each run (— : a run without one); not used to rank the runs.")
        st.markdown(result.test)
    with st.expander("Every metric, setting, cost and throughput, with full names"):
        st.dataframe(result.details, width="stretch")
    st.download_button(
        "Download table (.csv)",
        result.csv,
        file_name=f"comparison-{result.task or 'runs'}.csv",
        mime="text/csv",
        key=f"compare_csv:{result.task}",
        on_click="ignore",
    )
    curves(result)
    if result.matrices:
        st.markdown("**Confusion matrices** (fine-tuned, rows: true label, columns: predicted)")
        cells = st.columns(min(len(result.matrices), 3))
        for i, (name, labels, matrix) in enumerate(result.matrices):
            cell = cells[i % len(cells)]
            cell.markdown(f"**{name}**")
            cell.table(pd.DataFrame(matrix, index=labels, columns=labels))


def curves(result: comparison.Comparison) -> None:
    metrics = sorted(result.evals.metric.unique())
    if metrics:
        st.markdown("**Curves**")
        index = metrics.index(result.primary) if result.primary in metrics else 0
        metric = st.selectbox("Metric", metrics, index=index, key=f"compare_metric:{result.task}")
        # Long format (one row per point): series logged at different steps still draw as lines.
        st.line_chart(result.evals[result.evals.metric == metric], x="step", y="value", color="run", y_label=metric)
    if not result.train_loss.empty:
        st.line_chart(result.train_loss, x="step", y="value", color="run", y_label="train loss")


st.title("Compare")
summaries = runs.list_runs(widgets.current_user())
if not summaries:
    st.info("No runs yet. Launch one on the New run page: once it has finished, compare it with others here.")
    st.page_link("pages/new_run.py", label="Launch a run on the New run page", icon="🚀")
    st.stop()
default = comparison.default_choice(summaries)
if not default:
    st.info(
        f"None of the {len(summaries)} runs has finished yet: their scores show here once they have. "
        "Pick runs below to follow their curves meanwhile."
    )
    st.page_link("pages/runs.py", label="Watch them on the Runs page", icon="📈")
experiments = comparison.experiment_choices(summaries)
picked = st.selectbox("Experiment", [EVERY, *experiments], key="compare_experiment") if experiments else EVERY
if picked in experiments:
    # A widget of its own per experiment: it opens on the experiment's runs, and the user may still add or drop some.
    _, default = experiments[picked]
chosen = st.multiselect(
    "Runs",
    [s.ref for s in summaries],
    default=default,
    key="compare_runs" if picked == EVERY else f"compare_runs:{picked}",
)
if not chosen:
    st.stop()
by_ref = {s.ref: s for s in summaries}
results = comparison.compare_by_task([by_ref[ref] for ref in chosen])
if len(results) > 1:
    st.caption(f"These runs train {len(results)} tasks, whose metrics don't compare: one table per task.")
for result in results:
    show(result)
