"""Sweeps in the web app: queueing one run per point, grouping an experiment's runs, marking the best ★, and the
New run, Runs and Compare pages over them. Nothing trains: the runner lock is held (no_runner), runs stay queued.
"""

import json
import time
from pathlib import Path

import pytest
import yaml

from finetune.errors import ConfigError, UserError
from finetune.rundir import RunDirectory, write_json_atomic
from tests.webapp.apptest import assert_ok, button, errors, open_app
from webapp.runner import jobs
from webapp.services import catalog, comparison, devices, identity, runs, sweeps, workspace
from webapp.services.identity import local_user

LOCAL = local_user()
VALUES = {"model_name_or_path": "gpt2", "train_file": "t.txt", "max_steps": 4, "seed": ""}
GRID = "learning_rate=1e-4,3e-4\nlora_r=8,16\n"


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_a_sweep_queues_one_run_per_point_with_its_experiment(no_runner):
    setup = devices.setups([])[0]
    planned = sweeps.plan(LOCAL, "lr-rank", GRID, 0, 0, VALUES)
    assert planned.names == [f"lr-rank-0{i}" for i in range(1, 5)]
    assert not (no_runner / "runs" / "lr-rank-01").exists(), "planning writes nothing"
    queued = sweeps.queue(LOCAL, planned, setup)
    points = set()
    for run, name in zip(queued, planned.names):
        assert run.path == no_runner / "runs" / name
        config = _config(run.path)
        assert config["experiment_name"] == "lr-rank" and config["max_steps"] == 4 and config["seed"] == 42
        points.add((config["learning_rate"], config["lora_r"]))
        assert run.read_status()["state"] == "queued" and not run.launch_path.exists(), "queued, not started"
        assert jobs.Job.read(run) == jobs.Job("cpu", 1, 0)
    assert points == {(1e-4, 8), (1e-4, 16), (3e-4, 8), (3e-4, 16)}
    assert sorted(runs.queue_positions(LOCAL)) == planned.names
    drawn = sweeps.queue(LOCAL, sweeps.plan(LOCAL, "drawn", GRID, 2, 0, VALUES), setup)
    assert [r.path.name for r in drawn] == ["drawn-01", "drawn-02"]
    assert len({(_config(r.path)["learning_rate"], _config(r.path)["lora_r"]) for r in drawn}) == 2
    assert len(queued) == 4 and len(runs.list_runs(LOCAL)) == 6


BAD = [  # (experiment, grid, error type, what the message names)
    ("../up", GRID, ConfigError, "not a valid experiment name"),
    ("ok", "bogus=1,2", ConfigError, "bogus: 'bogus' is not a setting"),
    ("ok", "learning_rate=abc,1e-4", ConfigError, "learning_rate=abc: expected a number"),
    ("ok", "lora_r=8,-1", ConfigError, "lora_r=-1: must be a positive integer"),
    ("ok", "output_dir=/etc", ConfigError, "cannot be varied"),
    ("taken", GRID, UserError, "'taken' is taken"),
]


@pytest.mark.parametrize(("experiment", "grid", "error", "expected"), BAD)
def test_bad_sweeps_are_refused_and_write_nothing(no_runner, experiment, grid, error, expected):
    RunDirectory(no_runner / "runs" / "taken-02").update_status(state="finished")
    with pytest.raises(error) as err:
        sweeps.plan(LOCAL, experiment, grid, 0, 0, VALUES)
    assert expected in str(err.value), str(err.value)
    assert [p.name for p in (no_runner / "runs").iterdir()] == ["taken-02"]


def test_a_sweep_respects_the_users_queue_limit(no_runner, monkeypatch):
    monkeypatch.setenv("LORA_LAB_USERS", "huggingface")
    monkeypatch.setenv("LORA_LAB_MAX_QUEUED_RUNS", "3")
    alice, setup = identity.signed_in_user("alice", ()), devices.setups([])[0]
    values = {**VALUES, "train_file": str(catalog.sample_data("causal-lm"))}  # what a shared app offers
    with pytest.raises(UserError, match="this sweep queues 4 runs and you have 0 queued or training; at most 3"):
        sweeps.queue(alice, sweeps.plan(alice, "big", GRID, 0, 0, values), setup)
    assert not workspace.runs_dir(alice.key).exists() or not any(workspace.runs_dir(alice.key).iterdir())
    assert len(sweeps.queue(alice, sweeps.plan(alice, "small", GRID, 2, 0, values), setup)) == 2
    with pytest.raises(UserError, match="you have 2 queued or training; at most 3"):
        sweeps.queue(alice, sweeps.plan(alice, "more", GRID, 2, 0, values), setup)


def _finished(home: Path, name: str, accuracy: float, lr: float, experiment="exp", state="finished") -> Path:
    """A run as a sweep leaves it: config.yaml with experiment_name, status.json and (finished) metrics.json."""
    run = RunDirectory(home / "runs" / name)
    run.path.mkdir(parents=True)
    run.config_path.write_text(
        yaml.safe_dump(
            {
                "task": "text-classification",
                "model_name_or_path": "bert",
                "train_file": "r.csv",
                "output_dir": str(run.path),
                "lora_r": 8,
                "learning_rate": lr,
                "experiment_name": experiment,
            }
        )
    )
    run.update_status(state=state, started_at=time.time(), total_steps=10, step=10)
    if state == "finished":
        write_json_atomic(
            run.metrics_path,
            {
                "task": "text-classification",
                "base": {"accuracy": 0.5, "eval_loss": 0.7},
                "finetuned": {"accuracy": accuracy, "eval_loss": 1 - accuracy},
            },
        )
    return run.path


@pytest.fixture
def experiment_runs(no_runner) -> Path:
    _finished(no_runner, "exp-01", 0.80, 1e-4)
    _finished(no_runner, "exp-02", 0.90, 3e-4)
    _finished(no_runner, "exp-03", 0.99, 1e-3, state="cancelled")  # a pruned run: no metrics, never best
    _finished(no_runner, "exp-04", 0.85, 3e-3)
    _finished(no_runner, "loner", 0.95, 1e-4, experiment="../not-a-name")  # a hand-edited config: no experiment
    return no_runner


def test_experiments_group_their_runs_and_mark_the_best(experiment_runs):
    summaries = runs.list_runs(LOCAL)
    found = sweeps.experiments(summaries)
    assert [e.name for e in found] == ["exp"] and found[0].refs == ["exp-01", "exp-02", "exp-03", "exp-04"]
    experiment = found[0]
    assert experiment.metric == "accuracy" and experiment.best == "exp-02" and not experiment.lower_is_better
    rows = experiment.rows()
    assert [row["best"] for row in rows] == ["", "★", "", ""]
    assert [row["accuracy"] for row in rows] == [0.80, 0.90, None, 0.85]
    assert all(set(row) == {"best", "run", "state", "accuracy", "learning_rate"} for row in rows), "varied only"
    labels = {s.ref: s.label for s in summaries}
    assert labels["exp-02"] == "exp-02 · experiment exp" and labels["loner"] == "loner"

    choices = comparison.experiment_choices(summaries)
    assert choices == {"exp": ("text-classification", ["exp-01", "exp-02", "exp-03", "exp-04"])}
    by_ref = {s.ref: s for s in summaries}
    result = comparison.compare([by_ref[ref] for ref in choices["exp"][1]], "text-classification")
    assert result.best == "exp-02"
    marked = [line for line in result.headline.splitlines() if "★" in line]
    assert len(marked) == 2 and "exp-02" in marked[1], "the header's ★ column and the best run's row"
    assert len(rows) == 4


def test_new_run_page_sweep_expander_queues_the_grid(no_runner):
    at = open_app()
    assert button(at, "Start sweep").disabled, "nothing to sweep yet"
    at.text_area(key="sweep_grid").set_value("lora_r=4,8\nlearning_rate=abc")
    at.text_input(key="sweep_name").set_value("ui-sweep").run()
    button(at, "Start sweep").click().run()
    assert_ok(at)
    assert any("learning_rate=abc: expected a number" in e for e in errors(at)), errors(at)
    assert not list((no_runner / "runs").iterdir()), "a refused sweep writes nothing"

    at.text_area(key="sweep_grid").set_value("lora_r=4,8\nlearning_rate=1e-3,3e-3,1e-2")
    at.number_input(key="sweep_random").set_value(2).run()
    button(at, "Start sweep").click().run()
    assert_ok(at)
    assert len(at.success) == 1 and "2 runs queued (ui-sweep-01, ui-sweep-02)" in at.success[0].value
    made = sorted(p.name for p in (no_runner / "runs").iterdir())
    assert made == ["ui-sweep-01", "ui-sweep-02"]
    configs = [_config(no_runner / "runs" / name) for name in made]
    assert all(c["experiment_name"] == "ui-sweep" and c["task"] == "causal-lm" for c in configs)
    assert all(json.loads((no_runner / "runs" / name / "job.json").read_text())["preset"] == "cpu" for name in made)


def test_runs_and_compare_pages_show_the_experiment_and_its_best(experiment_runs):
    at = open_app("pages/runs.py")
    overview = at.dataframe[0].value.set_index("run")
    assert overview.loc["exp-02", "experiment"] == "exp" and overview.loc["loner", "experiment"] == ""
    table = at.dataframe[1].value
    assert list(table["run"]) == ["exp-01", "exp-02", "exp-03", "exp-04"] and list(table["best"]) == ["", "★", "", ""]
    assert any("Experiment `exp`" in m.value and "★ exp-02" in m.value for m in at.markdown)
    assert "exp-02 · experiment exp" in at.selectbox(key="runs_selected").options

    at = open_app("pages/compare.py")
    at.selectbox(key="compare_experiment").set_value("exp").run()
    assert_ok(at)
    assert at.multiselect(key="compare_runs:exp").value == ["exp-01", "exp-02", "exp-03", "exp-04"]
    headline = next(m.value for m in at.markdown if m.value.startswith("|"))
    rows = [line for line in headline.splitlines() if line.startswith("|")][2:]
    assert len(rows) == 4 and [r for r in rows if "★" in r] == [r for r in rows if "exp-02" in r]
    assert any("★: best accuracy (exp-02)" in c.value for c in at.caption)
