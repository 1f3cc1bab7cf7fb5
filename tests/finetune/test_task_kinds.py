"""finetune/task_kinds.py is the one home of every task fact: it imports nothing heavy, each entry names a real task
class, the demo has each entry's sample data, and no other module spells out a task's name."""

import dataclasses
import importlib
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.config import TrainConfig
from finetune.errors import ConfigError, UserError
from finetune.task_kinds import DEFAULT_TASK, TASKS, TaskKind, tasks_for

ROOT = Path(__file__).resolve().parents[2]
TASK_NAMES = tuple(TASKS)
# The checkpoint families the table must cover (listed here, so that one missing from DEFAULT_TASK fails).
FAMILIES = ["gpt2", "bert", "vit", "resnet"]
# Modules that may spell out a task name, as {path: (most occurrences, why)}. None may today: YAML presets
# (configs/*.yaml) and tests name tasks as data, and they are not scanned. Add an entry only with its reason.
ALLOWED_TASK_NAMES: dict[str, tuple[int, str]] = {}


def test_the_table_imports_without_torch_transformers_or_datasets():
    heavy = ("torch", "transformers", "datasets")
    check = (
        f"import sys, finetune.task_kinds; loaded = [m for m in {heavy!r} if m in sys.modules]; "
        "assert not loaded, loaded; print(len(finetune.task_kinds.TASKS))"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(TASKS)) == "3"


def test_every_entry_names_its_task_class_and_the_class_finds_its_entry():
    from finetune.tasks import get_task
    from finetune.tasks.base import Task

    for name, kind in TASKS.items():
        assert kind.name == name
        cls = getattr(importlib.import_module(f"finetune.tasks.{kind.module}"), kind.task_class)
        assert cls.__name__ == kind.task_class and issubclass(cls, Task)
        task = get_task(name)
        assert type(task) is cls and task.kind is kind and task.name == name and task.unit == kind.unit
    with pytest.raises(UserError, match="unknown task 'summarization'; expected one of causal-lm"):
        get_task("summarization")
    assert len(TASKS) == 3


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_trains_its_default_task(model_type):
    from finetune.tasks import resolve_task

    default = DEFAULT_TASK[model_type]
    assert default in TASKS and model_type in TASKS[default].families
    assert tasks_for(model_type)[0] == default
    assert resolve_task(SimpleNamespace(model_type=model_type), None, "checkpoint") == default


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_trains_only_the_tasks_listing_it(model_type, name):
    from finetune.tasks import resolve_task

    config = SimpleNamespace(model_type=model_type)
    if model_type in TASKS[name].families:
        assert resolve_task(config, name, "checkpoint") == name
    else:
        with pytest.raises(UserError, match=f"task: {name} is not available for {model_type} checkpoints"):
            resolve_task(config, name, "checkpoint")


def test_every_family_of_the_table_has_a_default_task():
    # A family named in the table but without a default task would be refused as an unsupported checkpoint.
    assert {family for kind in TASKS.values() for family in kind.families} == set(DEFAULT_TASK) == set(FAMILIES)


def test_every_field_of_every_entry_holds_a_value_its_readers_understand():
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TaskKind)
    for kind in TASKS.values():
        assert set(kind.columns) <= {"text", "label", "image"} and kind.columns
        assert kind.uploads and all(ext == ext.lower() and not ext.startswith(".") for ext in kind.uploads)
        assert kind.primary_metric in kind.curve_metrics and kind.pipeline_tag and kind.expected_upload
        assert kind.playground in typing.get_args(hints["playground"])
        assert kind.unit in typing.get_args(hints["unit"])
        assert kind.not_settings <= settings, kind.not_settings - settings
    assert len(TASKS) == 3


def test_a_config_names_a_task_of_the_table():
    paths = {"model_name_or_path": "m", "train_file": "t", "output_dir": "o"}
    assert [TrainConfig(**paths, task=name).task for name in TASKS] == list(TASKS)
    with pytest.raises(ConfigError) as found:
        TrainConfig.from_dict({**paths, "task": "summarization"})
    assert found.value.problems == [("task", f"expected one of {', '.join(TASKS)}, got 'summarization'")]


def test_the_demo_writes_each_sample_and_the_engine_guesses_its_columns(tmp_path):
    from finetune.data.columns import Columns, guess_columns
    from finetune.data.loading import Unpacking, load_table
    from webapp.services.demo import SAMPLE_WRITERS

    samples = tmp_path / "samples"
    samples.mkdir()
    for name, kind in TASKS.items():
        path = samples / kind.sample
        if not path.exists():
            SAMPLE_WRITERS[kind.sample](path)
        # A sample folder is what an uploaded .zip unpacks to.
        assert (path.suffix.lstrip(".") if path.is_file() else "zip") in kind.uploads
        table = load_table(path, "train_file", Unpacking(tmp_path / "unpacked"))
        columns = guess_columns(table, name, Columns(), "train_file")
        assert all(getattr(columns, role) in table.column_names for role in kind.columns), (name, columns)
    assert len(list(samples.iterdir())) == len({kind.sample for kind in TASKS.values()}) == 3


def test_no_module_but_the_table_spells_out_a_task_name():
    found, modules = {}, 0
    for package in ("finetune", "evaluation", "webapp"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "finetune/task_kinds.py":
                continue
            modules += 1
            text = path.read_text()
            count = sum(text.count(name) for name in TASK_NAMES)
            if count > ALLOWED_TASK_NAMES.get(relative, (0, ""))[0]:
                found[relative] = count
    assert not found, f"task names outside finetune/task_kinds.py (read the table instead): {found}"
    assert modules > 50  # every module of the three packages was read
