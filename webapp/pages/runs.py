"""Runs: every run with its state, live progress, curves and log; cancel, resume, delete, download."""

import datetime

import altair as alt
import pandas as pd
import streamlit as st

from finetune.errors import UserError
from finetune.rundir import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING
from webapp import notices, run_views, widgets
from webapp.services import run_detail, runs, sweeps

POINT = ["step", "metric", "value"]  # the columns of a curve's points (webapp/services/run_detail.py)
REFRESH_SECONDS = 2  # the trainer flushes events per line; this is how stale the page may be
STATE_ICONS = {
    QUEUED: "⏳",
    "starting": "🟡",
    RUNNING: "🔵",
    "stopping": "🟠",
    FINISHED: "✅",
    FAILED: "❌",
    CANCELLED: "⏹️",
}

st.title("Runs")
user = widgets.current_user()


def _eta(seconds) -> str:
    return str(datetime.timedelta(seconds=round(seconds))) if seconds is not None else "–"


def _steps(summary: runs.RunSummary) -> str:
    if summary.stopped_early:  # finished short of its plan on purpose: not stalled
        return f"stopped early at step {summary.step} of {summary.total_steps} (eval loss stopped improving)"
    return f"step {summary.step}/{summary.total_steps or '?'}"


def _chart(data: pd.DataFrame, y_title: str) -> alt.Chart:
    """Lines with their points (a curve of one point still shows), whole-number steps, and a y-axis fitted to
    the values rather than starting at 0 (a loss falling from 6.98 to 6.81 would look flat)."""
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)),
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
            color=alt.Color("metric:N", title=None),
            tooltip=["metric", "step", "value"],
        )
    )


def _runner_caption(runner: runs.RunnerState) -> None:
    """For whoever runs the machine: the job runner's state, its log, and how to stop it."""
    state = f"running (pid {runner.pid})" if runner.pid else "running" if runner.alive else "not running"
    st.caption(
        f"Job runner: {state}; log `{runner.log}`. It exits by itself after "
        f"{runner.idle_exit_minutes} idle minutes; stop it sooner with "
        "`python -m webapp.runner stop` (runs in progress keep training)."
    )


def _experiment_table(experiment: sweeps.ExperimentSummary) -> None:
    """An experiment's runs with their primary metric and the settings they vary, the best marked ★."""
    best = f"best {experiment.metric}: ★ {experiment.best}" if experiment.best else "no run finished yet"
    order = "lower" if experiment.lower_is_better else "higher"
    st.markdown(f"**Experiment `{experiment.name}`** · {len(experiment.runs)} runs · {best} ({order} is better)")
    st.dataframe(pd.DataFrame(experiment.rows()), hide_index=True)


@st.fragment(run_every=REFRESH_SECONDS)
def overview() -> None:
    summaries = runs.list_runs(user)
    positions = runs.queue_positions(user)
    owners = runs.owner_names() if user.is_operator and len({s.owner for s in summaries}) > 1 else {}
    grouped = sweeps.experiments(summaries)
    if not summaries:
        st.info("No runs yet.")
        st.page_link("pages/new_run.py", label="Start one on the New run page", icon="🚀")
        return
    table = pd.DataFrame(
        [
            {
                "run": s.ref,
                "state": f"{STATE_ICONS.get(s.state, '')} {s.state}"
                + (f" (#{positions[s.ref]} in queue)" if s.ref in positions else ""),
                "progress": s.progress,
                "step": f"{s.step}/{s.total_steps or '?'}" + (" (stopped early)" if s.stopped_early else ""),
                "ETA": _eta(s.eta_seconds) if s.state == RUNNING else "",
                "task": s.task,
                "model": s.model_label,
                **({"owner": owners.get(s.owner, s.owner)} if owners else {}),
                **({"experiment": s.experiment or ""} if grouped else {}),
            }
            for s in summaries
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")
        },
    )
    for experiment in grouped:
        _experiment_table(experiment)
    runner = runs.runner_state() if positions or user.is_operator else None
    if runner and not runner.alive and positions:
        st.warning("The job runner is not running; reload the page to start it.")
    if runner and user.is_operator:  # the runner's pid, log path and stop command mean something only on the machine
        _runner_caption(runner)


overview()
summaries = runs.list_runs(user)
if not summaries:
    st.stop()
default = runs.default_selection(summaries, st.session_state.get("selected_run"))
# The user's own choice (not the default) is remembered outside the widget, whose state ends with the page.
run_labels = {s.ref: s.label for s in summaries}
name = st.selectbox(
    "Run",
    list(run_labels),
    index=default,
    key="runs_selected",
    format_func=run_labels.get,
    on_change=lambda: st.session_state.update(selected_run=st.session_state["runs_selected"]),
)


@st.fragment(run_every=REFRESH_SECONDS)
def live(name: str) -> None:
    try:
        summary = runs.summary(user, name)
    except UserError:  # deleted in another tab
        st.rerun()
    was_active = st.session_state.get("live_active", {}).get(name)
    st.session_state.setdefault("live_active", {})[name] = summary.active
    if was_active and not summary.active:
        st.rerun()  # the whole page: the buttons below depend on the run's state
    label = f"{STATE_ICONS.get(summary.state, '')} {summary.state} · {_steps(summary)}"
    if summary.state == RUNNING:
        label += f" · ETA {_eta(summary.eta_seconds)}"
    st.progress(summary.progress, text=label)
    detail = run_detail.detail(summary)
    if detail.throughput:
        st.caption(f"Throughput: {detail.throughput.text} ({detail.throughput.basis})")
    if summary.error:
        notices.error(summary.error)
    if detail.losses or detail.scores:
        left, right = st.columns(2)
        # Long format (one row per point): eval points, sparser than train points, still draw as a line.
        left.altair_chart(_chart(pd.DataFrame(detail.losses, columns=POINT), "loss"), width="stretch")
        if detail.scores:
            right.altair_chart(_chart(pd.DataFrame(detail.scores, columns=POINT), "score"), width="stretch")
    run_views.final_scores(detail)
    with st.expander("Log", expanded=summary.state in (FAILED, RUNNING, "starting")):
        st.code(detail.log or "(no output yet)", language="log", wrap_lines=True)
    if detail.tracking:
        st.caption(detail.tracking)


live(name)
summary = runs.summary(user, name)


@st.dialog("Delete run")
def confirm_delete(ref: str) -> None:
    st.write(f"Delete **{ref}** with its adapter, checkpoints and logs? This cannot be undone.")
    if st.button("Delete for good", type="primary"):
        try:
            runs.delete(user, ref)
            st.session_state.pop("selected_run", None)
            st.rerun()
        except UserError as err:
            notices.error(str(err))


cells = iter(st.columns(4))  # the buttons that apply, side by side from the left
if summary.active and next(cells).button("Cancel run"):
    runs.cancel(user, name)
    st.toast(f"Cancelling {name}: it saves a checkpoint and stops at the next step.")
if summary.state in (CANCELLED, FAILED) and next(cells).button("Resume"):
    try:
        runs.resume(user, name)
        st.rerun()
    except UserError as err:
        notices.error(str(err))
if not summary.active and next(cells).button("Delete…"):
    confirm_delete(name)
if summary.state == FINISHED:
    next(cells).download_button(
        "Download adapter (.zip)",
        lambda: runs.adapter_zip(user, name),
        file_name=f"{summary.name}-adapter.zip",
        mime="application/zip",
        on_click="ignore",  # no rerun: one that ends before the browser fetches the deferred zip drops it
    )
    run_views.merged_download(next(cells), user, name, summary.name)
if summary.state == FINISHED:
    with st.expander("Push the adapter to the Hugging Face Hub"):
        mode, token = runs.push_token(user)
        if mode == "off":
            # Every visitor of a shared app would push with the operator's token: never without the user's own.
            st.caption(
                "Pushing needs your own Hugging Face token: on a shared app sign in with Hugging Face (the "
                "operator sets LORA_LAB_USERS=huggingface and the write-repos scope); on your own machine set "
                "HF_TOKEN and LORA_LAB_ALLOW_PUSH=1. From a terminal: "
                "`HF_TOKEN=... python -m finetune.export.hub RUN_DIR --repo_id you/name`."
            )
        else:
            st.caption(
                "Uploads the adapter with a generated model card (base model, data, metrics, config), with "
                f"{'your Hugging Face sign-in' if mode == 'user' else 'the token in HF_TOKEN'}; the token is never "
                "stored or shown."
            )
            repo_id = st.text_input("Repository", placeholder="your-name/my-adapter", key=f"repo:{name}")
            private = st.checkbox("Private repository", value=True, key=f"private:{name}")
            update = st.checkbox("Update the repository if it exists", value=False, key=f"update:{name}")
            if st.button("Push to Hub", disabled=not repo_id):
                try:
                    with st.spinner("Uploading…"):
                        url = runs.push(user, name, repo_id, private=private, token=token, update_existing=update)
                    st.success(f"Pushed to {url}")
                except UserError as err:
                    notices.error(str(err))
