"""Streamlit pieces the pages share: cached service calls, the settings form, data previews, error slots.

Caches hold only plain data (checkpoint descriptions, data reports); loaded models are cached in the
Playground with st.cache_resource, where sharing one model between sessions is safe.
"""

import dataclasses
import typing
from pathlib import Path
from typing import Optional

import streamlit as st

from finetune.config import TrainConfig, field_help
from finetune.errors import UserError
from finetune.task_kinds import task_kind
from webapp import notices
from webapp.services import catalog, devices, identity, settings, uploads, visitors

HELP = field_help()
HINTS = typing.get_type_hints(TrainConfig)
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

# The settings form: (field, widget kind). "text" fields may be left blank (= default or derived from data).
BASIC = [
    ("num_train_epochs", "text"),
    ("learning_rate", "text"),
    ("per_device_train_batch_size", "int"),
    ("finetune_method", "choice"),
    ("mixed_precision", "choice"),
    ("gradient_accumulation_steps", "int"),
]
LORA = [
    ("lora_r", "int"),
    ("lora_alpha", "float"),
    ("lora_dropout", "float"),
    ("lora_target_modules", "text"),
    ("init_lora_weights", "choice"),
    ("loraplus_lr_ratio", "text"),
    ("use_dora", "bool"),
    ("use_rslora", "bool"),
    ("load_in_4bit", "bool"),
]
ADVANCED = [
    ("head_learning_rate", "text"),
    ("warmup_ratio", "float"),
    ("weight_decay", "float"),
    ("lr_scheduler_type", "choice"),
    ("max_seq_length", "text"),
    ("block_size", "text"),
    ("validation_split_percentage", "float"),
    ("per_device_eval_batch_size", "int"),
    ("max_steps", "int"),
    ("eval_steps", "text"),
    ("save_steps", "text"),
    ("early_stopping_patience", "text"),
    ("max_grad_norm", "float"),
    ("logging_steps", "int"),
    ("seed", "int"),
    ("dataloader_num_workers", "text"),
    ("group_by_length", "bool"),
    ("gradient_checkpointing", "bool"),
    ("torch_compile", "bool"),
    ("report_to", "choice"),
]
# Rows read to offer columns when a guess failed: the text guess reads the first 200 rows too.
HEAD_ROWS = 200


@st.cache_data(ttl=300, show_spinner=False)
def hub_online() -> bool:
    return catalog.hub_online()


@st.cache_data(show_spinner=False)
def preset_checkpoint(family_key: str, online: bool) -> catalog.Checkpoint:
    return catalog.preset_checkpoint(catalog.FAMILIES[family_key], online)


@st.cache_data(ttl=600, show_spinner="Reading the checkpoint's config…")
def inspect_checkpoint(name: str, allow_local: bool) -> catalog.Checkpoint:
    return catalog.inspect_checkpoint(name, allow_local)


def typed_checkpoint(name: str, allow_local: bool) -> catalog.Checkpoint:
    """The checkpoint someone typed; a hub id the Hub cannot serve now is refused at once (downloading its
    config.json offline retries five times, ~25 s, before failing)."""
    name = name.strip()
    if _unreachable_hub_id(name):
        local = "a local folder holding config.json and the weights, or " if allow_local else ""
        raise UserError(
            f"model_name_or_path: the Hugging Face Hub can't be reached from this machine, so {name!r} "
            f"can't be downloaded; use {local}one of the model family presets above (offline they are "
            "demo-sized checkpoints made here)"
        )
    return inspect_checkpoint(name, allow_local)


def _unreachable_hub_id(name: str) -> bool:
    if not name or Path(name).expanduser().exists() or hub_online():
        return False
    try:
        return not catalog.hub_cached(name)
    except ValueError:  # not a hub id at all (HFValidationError): inspect_checkpoint says what is wrong
        return False


def current_user() -> identity.User:
    """Who this browser session is, by the operator's LORA_LAB_USERS mode; stops the page with a sign-in
    button when a Hugging Face sign-in is needed."""
    mode = settings.load().users
    if mode == "local":
        user = identity.local_user()
    elif mode == "huggingface":
        user = _signed_in_user()
    else:
        try:
            user = visitors.visitor_for(_visitor_token())
        except UserError as err:
            notices.error(str(err))
            st.button("Open a new workspace", on_click=_forget_visitor_token)
            st.stop()
    return user


def account(user: identity.User) -> None:
    """The sidebar line saying whose runs these are (nothing in local single-user mode)."""
    if user.kind == "local":
        return
    if user.kind == "visitor":
        st.sidebar.warning(
            f"You are **{user.name}**, without an account. This page's address is the key to your runs: bookmark it "
            "to come back. Anyone who gets the address (a shared link, a screenshot, browser history) can see, "
            "cancel, delete and download your runs. If it got out, replace the key: the old address then opens "
            "nothing."
        )
        st.sidebar.button("Replace the address key", on_click=_replace_visitor_key, args=(user,))
        return
    st.sidebar.caption(
        f"Signed in as **{user.name}**" + (" · operator: you see every user's runs" if user.is_operator else "")
    )
    st.sidebar.button("Sign out", on_click=st.logout)


def _visitor_token() -> str:
    """The anonymous visitor's key: kept in the session (page switches may drop the address's query) and in the
    address (``?visitor=``), so reloading or bookmarking the page comes back to the same workspace."""
    token = st.session_state.get("visitor_token") or st.query_params.get("visitor")
    if not token or not identity.VISITOR_TOKEN.fullmatch(token):
        token = identity.new_visitor_token()
    st.session_state["visitor_token"] = token
    if st.query_params.get("visitor") != token:
        st.query_params["visitor"] = token
    return token


def _replace_visitor_key(user: identity.User) -> None:
    new = visitors.replace_key(user, st.session_state["visitor_token"])
    st.session_state["visitor_token"] = new
    st.query_params["visitor"] = new


def _forget_visitor_token() -> None:
    st.session_state.pop("visitor_token", None)
    st.query_params.pop("visitor", None)


def _signed_in_user() -> identity.User:
    if not st.user.is_logged_in:
        st.title("LoRA Lab")
        st.write("Sign in with your Hugging Face account: your runs and uploads are yours alone on this shared app.")
        st.button("Sign in with Hugging Face", type="primary", on_click=st.login)
        st.stop()
    tokens = st.user.tokens.to_dict()
    # Hugging Face's user name (never the display name, which anyone may choose); folders are keyed by "sub".
    username, subject = st.user.get("preferred_username"), st.user.get("sub")
    return identity.signed_in_user(
        str(username or ""), settings.load().operators, tokens.get("access"), str(subject) if subject else None
    )


@st.cache_data(show_spinner=False)
def sample_data(task: str) -> Path:
    return catalog.sample_data(task)


@st.cache_data(show_spinner="Reading the data…", max_entries=32)
def inspect_data(
    path: str,
    task: str,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    image_column: Optional[str] = None,
) -> uploads.DataReport:
    return uploads.inspect_data(Path(path), task, text_column, label_column, image_column)


@st.cache_data(show_spinner="Reading the data…", max_entries=32)
def guess_data(path: str, task: str) -> tuple[Optional[uploads.DataReport], Optional[str], Optional[str]]:
    """inspect_data with every column guessed, or None, the problem and the setting it is about. Problems are cached
    too: a file whose columns cannot be guessed is not read again on every rerun while the user picks them."""
    try:
        return uploads.inspect_data(Path(path), task), None, None
    except UserError as err:
        return None, str(err), err.field


def failed_role(field: Optional[str], task: str) -> Optional[str]:
    """The column role a data problem is about (label_column when the label could not be guessed): the user can pick
    that column. None for problems of the whole file, which no choice of columns fixes."""
    return field if field in task_roles(task) else None


def task_roles(task: str) -> tuple[str, ...]:
    """The config fields naming the columns ``task``'s data needs (text_column, label_column, ...)."""
    return tuple(f"{column_role}_column" for column_role in task_kind(task).columns)


@st.cache_data(show_spinner=False, max_entries=32)
def unguessed_roles(path: str, task: str, failed: str) -> tuple[list[str], dict[str, Optional[str]]]:
    """The file's columns and each role's guess when ``failed`` could not be guessed (None: not guessed)."""
    from finetune.data.columns import guess_column
    from finetune.data.loading import Unpacking, load_table

    head = load_table(Path(path), "train_file", Unpacking(), max_rows=HEAD_ROWS)
    found: dict[str, Optional[str]] = dict.fromkeys(task_roles(task))
    if failed == "label_column":  # the engine guesses the label last: the other roles were guessed on their own
        for column_role in task_kind(task).columns:
            if column_role != "label":
                found[f"{column_role}_column"] = guess_column(head, column_role, "train_file")
    return head.column_names, found


@st.cache_data(ttl=60, show_spinner=False)
def detect_gpus() -> list[devices.Gpu]:
    return devices.detect_gpus()


def roles(report: uploads.DataReport) -> dict[str, Optional[str]]:
    """The column roles of a report that apply to its data (image folders have fixed columns)."""
    found = {
        "text_column": report.text_column,
        "label_column": report.label_column,
        "image_column": report.image_column,
    }
    return {k: v for k, v in found.items() if v is not None}


def column_mapping(
    report: Optional[uploads.DataReport], path: Path, task: str, failed: Optional[str] = None
) -> dict[str, Optional[str]]:
    """Select boxes for the column roles, pre-filled with the engine's guess; without a ``report`` (the
    ``failed`` role could not be guessed) the roles it could not guess start empty (None) for the user to pick."""
    if report is not None and (path.suffix.lower() == ".zip" or path.is_dir()):
        st.caption(f"Images by class folder: {len(report.labels or [])} classes.")
        return roles(report)
    names, guessed = (report.column_names, roles(report)) if report else unguessed_roles(str(path), task, failed)
    chosen = {}
    for cell, (role, guess) in zip(st.columns(len(guessed)), guessed.items()):
        note = f"Guessed: {guess}." if guess else "Could not be guessed: pick the column that holds it."
        chosen[role] = cell.selectbox(
            role.replace("_", " ").capitalize(),
            names,
            index=names.index(guess) if guess else None,
            placeholder="Pick a column",
            key=f"{role}:{path}",
            help=f"{HELP[role]} {note}",
            persist_state="session",
        )
    return chosen


class ErrorSlots:
    """A placeholder under each input, filled with that field's problems (or warnings) after validation."""

    def __init__(self) -> None:
        self.slots: dict[str, typing.Any] = {}

    def slot(self, name: str) -> None:
        self.slots[name] = st.empty()

    def show(self, problems: dict[str, list[str]]) -> None:
        for name, messages in problems.items():
            target = self.slots.get(name)
            text = "; ".join(messages) if target is not None else f"{name}: {'; '.join(messages)}"
            notices.error(text, target or st)

    def warn(self, warnings: dict[str, str]) -> None:
        """Non-blocking notes under their fields (only for a valid form, so no error holds the slot)."""
        for name, message in warnings.items():
            target = self.slots.get(name)
            notices.warning(message if target is not None else f"{name}: {message}", target or st)


def reset_settings(defaults: dict) -> None:
    """Put a family's defaults into the form's inputs."""
    for name, kind in BASIC + LORA + ADVANCED:
        value = defaults.get(name, FIELD_DEFAULTS.get(name))
        if kind == "text":
            value = ",".join(value) if isinstance(value, list) else ("" if value is None else str(value))
        elif kind in ("int", "float"):
            value = int(value) if kind == "int" else float(value)
        elif kind == "bool":
            value = bool(value)
        st.session_state[f"cfg_{name}"] = value


def settings_form(task: str, errors: ErrorSlots, unavailable: dict[str, str]) -> dict:
    """Render the hyperparameter inputs (``unavailable``: {switch: why this machine cannot run it}, shown off and
    greyed out); returns their raw values for TrainConfig.from_dict."""
    not_settings = task_kind(task).not_settings  # fields that mean nothing for this task are left out
    values = _inputs([f for f in BASIC if f[0] not in not_settings], errors, columns=3)
    st.markdown(
        "**LoRA** · targets left blank (or `attention`) are discovered from the model's attention layers "
        "(Conv2d for ResNet); `all-linear` adapts every linear layer. Variants: docs/lora-variants.md."
    )
    # Always drawn (greyed out for full fine-tuning), and kept across page switches (persist_state), so the
    # form never falls back to Streamlit's own zeros.
    lora = _inputs(LORA, errors, columns=4, disabled=values["finetune_method"] != "lora", unavailable=unavailable)
    # Full fine-tuning ignores them, and refuses some (use_dora, load_in_4bit, loraplus_lr_ratio), which greyed out
    # could not be unset: they are sent for LoRA only.
    values.update(lora if values["finetune_method"] == "lora" else {})
    with st.expander("Advanced settings"):
        advanced = [f for f in ADVANCED if f[0] not in not_settings]
        values.update(_inputs(advanced, errors, columns=3, unavailable=unavailable))
    return values


def _inputs(
    spec: list[tuple[str, str]],
    errors: ErrorSlots,
    columns: int,
    disabled: bool = False,
    unavailable: Optional[dict[str, str]] = None,
) -> dict:
    values = {}
    cells = st.columns(columns)
    for i, (name, kind) in enumerate(spec):
        with cells[i % columns]:
            label, key = name.replace("_", " ").capitalize(), f"cfg_{name}"
            if name in (unavailable or {}):  # a switch this machine cannot run: shown off, with why
                values[name] = st.checkbox(label, value=False, key=f"{key}_unavailable", disabled=True,
                                           help=f"Not available here: {unavailable[name]}")  # fmt: skip
            elif kind == "int":
                values[name] = st.number_input(
                    label, step=1, key=key, help=HELP[name], disabled=disabled, persist_state="session"
                )
            elif kind == "float":
                values[name] = st.number_input(
                    label, step=0.01, format="%g", key=key, help=HELP[name], disabled=disabled, persist_state="session"
                )
            elif kind == "bool":
                values[name] = st.checkbox(label, key=key, help=HELP[name], disabled=disabled, persist_state="session")
            elif kind == "choice":
                values[name] = st.selectbox(
                    label,
                    typing.get_args(HINTS[name]),
                    key=key,
                    help=HELP[name],
                    disabled=disabled,
                    persist_state="session",
                )
            else:
                values[name] = st.text_input(
                    label, key=key, help=HELP[name], placeholder="default", disabled=disabled, persist_state="session"
                )
            errors.slot(name)
    return values
