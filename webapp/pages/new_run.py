"""New run: pick a checkpoint, pick or upload data, set hyperparameters and a device, launch."""

import shlex
import time

import streamlit as st
import yaml

from finetune.config import field_help
from finetune.errors import ConfigError, UserError
from finetune.sweep.experiment import MAX_POINTS
from finetune.task_kinds import task_kind
from webapp import check_views, data_views, held_out_views, notices, widgets
from webapp.services import catalog, devices, identity, launch, preflight, sweeps, uploads

HELP = field_help()
CUSTOM = "custom"

st.title("New run")
user = widgets.current_user()
shared = user.key != identity.LOCAL_KEY  # a shared app: no local paths typed in

# ---- 1. model ------------------------------------------------------------------------------------
st.subheader("1 · Model")
family_key = st.radio(
    "Model family",
    [*catalog.FAMILIES, CUSTOM],
    horizontal=True,
    key="family",
    persist_state="session",
    format_func=lambda k: catalog.FAMILIES[k].label if k != CUSTOM else "Other hub id or path",
)
try:
    if family_key == CUSTOM:
        typed = st.text_input(
            "Hub id or local path",
            key="custom_model",
            help=HELP["model_name_or_path"],
            placeholder="e.g. distilgpt2, bert-base-cased or /models/my-vit",
            persist_state="session",
        )
        if not typed:
            st.stop()
        checkpoint = widgets.typed_checkpoint(typed, allow_local=not shared)
    else:
        family = catalog.FAMILIES[family_key]
        with st.spinner("Preparing the demo checkpoints and sample data (first start only, about 15 s)…"):
            checkpoint = widgets.preset_checkpoint(family_key, widgets.hub_online())
except UserError as err:
    notices.error(str(err))
    st.stop()
family = catalog.FAMILIES[checkpoint.model_type]
task = checkpoint.task
if checkpoint.demo:
    st.info(
        f"**Demo checkpoint.** The Hub is not reachable, so this preset uses "
        f"{catalog.DEMO_DESCRIPTIONS[family.key]}. Its sample data trains in under a minute on 2 CPU cores; your "
        f"own data may take far longer (the estimate under Settings says how long). With network access the preset "
        f"is `{family.hub_id}`."
    )
else:
    st.caption(f"Checkpoint `{checkpoint.name_or_path}` · {checkpoint.model_type} · task {task}")

# ---- 2. data -------------------------------------------------------------------------------------
st.subheader("2 · Data")
source = st.radio(
    "Training data", ["Sample data", "Upload a file"], horizontal=True, key="data_source", persist_state="session"
)
if source == "Upload a file":
    kind = task_kind(task)
    uploaded = st.file_uploader(f"Upload {kind.expected_upload}", type=list(kind.uploads), key="upload")
    if uploaded is None:
        st.stop()
    try:
        data_path = uploads.save_upload(user, uploaded.name, uploaded.getvalue(), task)
    except UserError as err:
        notices.error(str(err))
        st.stop()
else:
    data_path = widgets.sample_data(task)
    st.caption(f"Sample data: `{data_path.name}`")

guessed, problem, about = widgets.guess_data(str(data_path), task)
failed = widgets.failed_role(about, task) if problem else None
if problem and (failed is None or data_path.is_dir()):  # no choice of columns fixes it
    notices.error(problem)
    st.stop()
columns = widgets.column_mapping(guessed, data_path, task, failed)
if None in columns.values():
    notices.warning(f"{problem}. Pick the column above to continue.")
    st.stop()
try:
    report = (
        guessed
        if guessed and columns == widgets.roles(guessed)
        else widgets.inspect_data(str(data_path), task, **columns)
    )
except UserError as err:
    notices.error(str(err))
    st.stop()
data_views.data_preview(report)
held_out = held_out_views.held_out_files(user, task, columns, data_path)

# ---- 3. settings ---------------------------------------------------------------------------------
st.subheader("3 · Settings")
defaults = {**family.defaults(), **(catalog.DEMO_OVERRIDES.get(family.key, {}) if checkpoint.demo else {})}
if st.session_state.get("defaults_for") != (checkpoint.name_or_path, task):
    # A new checkpoint brings its family's defaults and a fresh run name.
    st.session_state.update(
        defaults_for=(checkpoint.name_or_path, task), run_name=f"{family.key}-{time.strftime('%m%d-%H%M%S')}"
    )
    widgets.reset_settings(defaults)
if st.session_state.pop("renew_name", False):  # the last name was just used by a launch
    st.session_state.run_name = f"{family.key}-{time.strftime('%m%d-%H%M%S')}"
name = st.text_input(
    "Run name",
    key="run_name",
    help="Folder name of the run; letters, digits, '.', '_' and '-'.",
    persist_state="session",
)
errors = widgets.ErrorSlots()
errors.slot("run name")
values = widgets.settings_form(task, errors, devices.unavailable_settings(widgets.detect_gpus()))
values.update(model_name_or_path=checkpoint.name_or_path, task=task, train_file=str(data_path), **columns, **held_out)

# ---- 4. device -----------------------------------------------------------------------------------
st.subheader("4 · Device")
gpus = widgets.detect_gpus()
if gpus:
    st.caption(" · ".join(f"GPU {g.index}: {g.name} ({g.memory_mib / 1024:.0f} GiB)" for g in gpus))
else:
    st.caption("No GPU found: runs train on the CPU, one at a time.")
options = devices.setups(gpus)
setup = options[
    st.selectbox(
        "Run on", range(len(options)), format_func=lambda i: options[i].label, key="setup", persist_state="session"
    )
]

# ---- validate, show the command, launch ----------------------------------------------------------
try:
    cfg, command = launch.plan(user, name, values, setup)
except ConfigError as err:
    errors.show(launch.problems_by_field(err))
    st.error(f"Fix {len(err.problems)} setting(s) marked above before launching.")
    st.stop()
# Far-off settings are noted under their fields; Launch stays.
warned = launch.warnings(cfg, report, checkpoint, setup)
errors.warn(warned)
check_views.time_estimate(launch.estimate(cfg, report, checkpoint, setup), setup.label)
if warned:
    st.caption(
        f"⚠️ {len(warned)} setting(s) look far off ({', '.join(warned)}): see the notes under them. "
        "You can still launch."
    )
st.markdown(
    "The exact command the runner starts. Launching writes the run's settings to the `config.yaml` it "
    "names; to train headless instead, save the settings below there and run the command from the project folder."
)
st.code(shlex.join(command), language="bash", wrap_lines=True)
with st.expander("config.yaml"):
    st.code(yaml.safe_dump(cfg.to_dict(), sort_keys=False), language="yaml")
launch_col, check_col = st.columns([1, 5])
# Check runs finetune.preflight in a subprocess (this page never imports torch): a few real steps, nothing saved.
if check_col.button(
    "Check",
    help="Load the model on the device chosen above (a GPU no run is training on, or the CPU), train a few steps "
    "on the longest batches of the data, and show the peak memory, the time per step and the whole run's "
    "estimated time. Nothing is saved; a big model on a CPU takes minutes.",
):
    try:
        with st.spinner("Checking: loading the model and training a few steps on the longest batches…"):
            checked = preflight.check(cfg, shared, use_gpu=setup.uses_gpus)
    except UserError as err:
        notices.error(str(err))
    else:
        check_views.show(checked)
if launch_col.button("Launch run", type="primary"):
    try:
        run = launch.launch(user, cfg, setup)
    except UserError as err:
        notices.error(str(err))
        st.stop()
    st.session_state.update(selected_run=run.path.name, renew_name=True)
    st.success(
        f"Run **{run.path.name}** is queued; it starts as soon as a {'GPU' if setup.uses_gpus else 'CPU slot'} is free."
    )
    st.page_link("pages/runs.py", label="Watch it on the Runs page", icon="📈")

# ---- sweep: one queued run per point of a grid, grouped as one experiment (docs/sweeps.md) ----------
with st.expander("Sweep: one run per point of a grid"):
    st.caption(
        "Every run takes the settings above, with the values below in turn (all combinations, or a random "
        "draw of them); the runs are named EXPERIMENT-01, -02 … and the Runs page marks the best ★."
    )
    grid_text = st.text_area(
        "Grid",
        key="sweep_grid",
        placeholder="learning_rate=1e-4,3e-4\nlora_r=8,16",
        help="One setting per line: name=value1,value2 (the names of the settings above).",
    )
    name_col, random_col = st.columns(2)
    experiment = name_col.text_input(
        "Experiment name",
        key="sweep_name",
        placeholder="lr-vs-rank",
        help="1-60 letters, digits, '.', '_' or '-'; names the experiment's runs.",
    )
    random_count = random_col.number_input(
        "Random points",
        min_value=0,
        max_value=MAX_POINTS,
        value=0,
        key="sweep_random",
        help="0: every combination; N: N distinct combinations drawn at random.",
    )
    if st.button("Start sweep", disabled=not (grid_text.strip() and experiment)):
        try:
            planned = sweeps.plan(user, experiment, grid_text, int(random_count), 0, values)
            queued = sweeps.queue(user, planned, setup)
        except ConfigError as err:
            notices.error("Fix the sweep:\n" + "\n".join(f"· {problem}" for problem in err.problems))
        except UserError as err:
            notices.error(str(err))
        else:
            st.success(f"Experiment **{experiment}**: {len(queued)} runs queued ({', '.join(planned.names)}).")
            st.page_link("pages/runs.py", label="Watch them on the Runs page", icon="📈")
