"""Compare: runs side by side (differing settings, base vs fine-tuned with delta, cost), curves, confusion matrices."""

import pandas as pd
import streamlit as st

from webapp import widgets
from webapp.services import comparison, runs

EVERY = "(choose runs)"  # no experiment picked: the runs are chosen one by one
st.title("Compare")
summaries = runs.list_runs(widgets.current_user())
if not summaries:
    st.info("No runs yet.")
    st.page_link("pages/new_run.py", label="Start one on the New run page", icon="🚀")
    st.stop()
task, default = comparison.default_choice(summaries)
experiments = comparison.experiment_choices(summaries)
picked = st.selectbox("Experiment", [EVERY, *experiments], key="compare_experiment") if experiments else EVERY
if picked in experiments:
    # A widget of its own per experiment: it opens on the experiment's runs, and the user may still add or drop some.
    task, default = experiments[picked]
chosen = st.multiselect(
    "Runs",
    [s.ref for s in summaries],
    default=default,
    key="compare_runs" if picked == EVERY else f"compare_runs:{picked}",
)
if not chosen:
    st.stop()
by_ref = {s.ref: s for s in summaries}
result = comparison.compare([by_ref[ref] for ref in chosen], task)

st.subheader("Base model vs fine-tuned")
st.caption(
    "Each run scores its untuned base model on the same evaluation split before training. "
    f"**Bold**: best fine-tuned value per metric. ★: best {result.primary}"
    + (f" ({result.best})." if result.best else " (no finished run).")
)
st.markdown(result.headline)
with st.expander("Every metric, and the cost and throughput of each run"):
    st.markdown(result.everything)
st.download_button("Download table (.csv)", result.csv, file_name="comparison.csv", mime="text/csv")

st.subheader("Curves")
metrics = sorted(result.evals.metric.unique())
if metrics:
    metric = st.selectbox("Metric", metrics, index=metrics.index(result.primary) if result.primary in metrics else 0)
    # Long format (one row per point): series logged at different steps still draw as lines.
    st.line_chart(result.evals[result.evals.metric == metric], x="step", y="value", color="run", y_label=metric)
if not result.train_loss.empty:
    st.line_chart(result.train_loss, x="step", y="value", color="run", y_label="train loss")

if result.matrices:
    st.subheader("Confusion matrices (fine-tuned, rows: true label, columns: predicted)")
    cells = st.columns(min(len(result.matrices), 3))
    for i, (name, labels, matrix) in enumerate(result.matrices):
        cell = cells[i % len(cells)]
        cell.markdown(f"**{name}**")
        cell.table(pd.DataFrame(matrix, index=labels, columns=labels))
