"""Compare: runs side by side (settings that differ, base vs fine-tuned with delta, cost), curves, confusion matrices."""

import json

import pandas as pd
import streamlit as st

from evaluation.compare import COST, PRIMARY_METRIC, compare_runs, curves, format_table, load_runs
from webapp import widgets
from webapp.services import runs

st.title("Compare")
summaries = runs.list_runs(widgets.current_user())
if not summaries:
    st.info("No runs yet.")
    st.page_link("pages/new_run.py", label="Start one on the New run page", icon="🚀")
    st.stop()
finished = [s for s in summaries if s.state == "finished"]
# Default: the finished runs of the newest finished run's task (metrics of different tasks don't compare).
task = finished[0].task if finished else summaries[0].task
default = [s.ref for s in finished if s.task == task][:6]
chosen = st.multiselect("Runs", [s.ref for s in summaries], default=default, key="compare_runs")
if not chosen:
    st.stop()
paths = {s.ref: s.path for s in summaries}
selected = load_runs([paths[name] for name in chosen])
table = compare_runs(selected)

st.subheader("Base model vs fine-tuned")
st.caption("Each run scores its untuned base model on the same evaluation split before training. "
           "**Bold**: best fine-tuned value per metric.")
# The headline: base / fine-tuned / delta of the task's main metric and eval loss first (what a reader compares),
# then the settings that differ; everything else is in the expander.
primary = PRIMARY_METRIC.get(task, "eval_loss")
headline = ["state"] + [f"{kind}_{metric}" for metric in dict.fromkeys((primary, "eval_loss"))
                        for kind in ("base", "finetuned", "delta") if f"{kind}_{metric}" in table.columns]
headline += [c for c in table.columns if c not in headline and not c.startswith(("base_", "finetuned_", "delta_"))
             and c not in COST]  # cost and throughput columns would push the row past 1280 px
# Short headers ("acc base", "acc tuned", "acc Δ"): a run's row must fit a 1280 px window without scrolling.
short = {"accuracy": "acc", "eval_loss": "loss", "perplexity": "ppl"}
headers = {f"{kind}_{metric}": f"{short.get(metric, metric)} {label}" for metric in (primary, "eval_loss")
           for kind, label in (("base", "base"), ("finetuned", "tuned"), ("delta", "Δ"))}
st.markdown(format_table(table[headline], "markdown", headers))
with st.expander("Every metric, and the cost and throughput of each run"):
    st.markdown(format_table(table, "markdown"))
st.download_button("Download table (.csv)", table.to_csv(), file_name="comparison.csv", mime="text/csv")

st.subheader("Curves")
long = curves(selected)
evals = long[long.event == "eval"]
metrics = sorted(evals.metric.unique())
if metrics:
    metric = st.selectbox("Metric", metrics, index=metrics.index(primary) if primary in metrics else 0)
    # Long format (one row per point): series logged at different steps still draw as lines.
    st.line_chart(evals[evals.metric == metric], x="step", y="value", color="run", y_label=metric)
train = long[(long.event == "train") & (long.metric == "loss")]
if not train.empty:
    st.line_chart(train, x="step", y="value", color="run", y_label="train loss")

matrices = [(run, run.metrics.get("finetuned", {}).get("confusion_matrix")) for run in selected]
matrices = [(run, matrix) for run, matrix in matrices if matrix]
if matrices:
    st.subheader("Confusion matrices (fine-tuned, rows: true label, columns: predicted)")
    cells = st.columns(min(len(matrices), 3))
    for i, (run, matrix) in enumerate(matrices):
        cell = cells[i % len(cells)]
        info_path = run.path / "adapter" / "lora_lab.json"
        labels = json.loads(info_path.read_text())["labels"] if info_path.is_file() else list(range(len(matrix)))
        cell.markdown(f"**{run.name}**")
        cell.table(pd.DataFrame(matrix, index=labels, columns=labels))
