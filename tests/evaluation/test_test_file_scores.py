"""Scores on a test file in the Compare table: metrics.json's optional "test" section ({"base": ..., "finetuned":
...}, the metrics of "base" and "finetuned") becomes test_base_, test_finetuned_ and test_delta_ columns, apart
from the validation scores that rank the runs; runs without one leave them empty."""

import json

import pandas as pd
import pytest

from evaluation.compare import COST, best_runs, compare_runs, format_table, load_runs, main
from tests.evaluation.test_throughput_columns import OLD, write_run

TESTED = {
    **OLD,
    "test": {"base": {"accuracy": 0.55, "eval_loss": 0.69}, "finetuned": {"accuracy": 0.8, "eval_loss": 0.4}},
}


def test_a_test_section_adds_test_columns_before_the_cost(tmp_path):
    # The run without test scores comes first: its row alone would put the cost before the test columns.
    paths = [write_run(tmp_path, "plain", OLD, lr=1e-3), write_run(tmp_path, "tested", TESTED, lr=2e-3)]
    table = compare_runs(load_runs(paths))
    test = [c for c in table.columns if c.startswith("test_")]
    assert test == [
        "test_base_accuracy",
        "test_finetuned_accuracy",
        "test_delta_accuracy",
        "test_base_eval_loss",
        "test_finetuned_eval_loss",
        "test_delta_eval_loss",
    ]
    assert table.columns.get_loc("test_delta_eval_loss") < table.columns.get_loc("best_step")
    cost = [c for c in table.columns if c in COST]
    assert list(table.columns[-len(cost) :]) == cost, "cost comes last"
    assert table.loc["tested", "test_finetuned_accuracy"] == 0.8
    assert table.loc["tested", "test_delta_accuracy"] == pytest.approx(0.25)
    assert pd.isna(table.loc["plain", "test_finetuned_accuracy"])
    assert table.loc["plain", "finetuned_accuracy"] == table.loc["tested", "finetuned_accuracy"] == 0.9
    assert best_runs(table) == {"accuracy": "plain", "eval_loss": "plain"}, "test scores rank nothing (a tie: first)"


def test_runs_without_a_test_section_get_no_test_columns(tmp_path):
    table = compare_runs(load_runs([write_run(tmp_path, "a", OLD, lr=1e-3), write_run(tmp_path, "b", OLD, lr=2e-3)]))
    assert not [c for c in table.columns if c.startswith("test_")]
    assert "test_" not in format_table(table, "markdown")


def test_the_command_line_prints_the_test_columns(tmp_path, capsys):
    paths = [write_run(tmp_path, "plain", OLD, lr=1e-3), write_run(tmp_path, "tested", TESTED, lr=2e-3)]
    assert main([str(p) for p in paths] + ["--format", "json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["tested"]["test_base_accuracy"] == 0.55 and rows["plain"]["test_base_accuracy"] is None
