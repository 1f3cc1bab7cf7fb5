"""The change of each score with its bootstrap interval, and the verdict in words, on the Runs page's run detail and
on Compare's Δ cells (hand-written run folders: nothing trains)."""

from tests.webapp.apptest import assert_ok, open_app
from tests.webapp.test_compare_tasks import TEXT, tables, write_run


def _metrics(low: float, high: float) -> dict:
    bounds = {"eval_loss": [-0.5, -0.3], "accuracy": [low, high]}
    return {
        "base": {"accuracy": 0.53, "eval_loss": 0.7},
        "finetuned": {"accuracy": 0.94, "eval_loss": 0.3},
        "intervals": {"level": 0.95, "resamples": 1000, "examples": 120, "delta": bounds},
    }


def test_the_run_detail_shows_each_change_with_its_interval_and_the_verdict(no_runner):
    write_run(no_runner, "sure", TEXT, _metrics(0.33, 0.49))
    write_run(no_runner, "noisy", TEXT, _metrics(-0.02, 0.6))
    at = open_app("pages/runs.py")
    at.selectbox(key="runs_selected").set_value("sure").run()
    assert_ok(at)
    shown = [m.value for m in at.markdown]
    assert any(
        "accuracy **+0.41 [0.33, 0.49]**" in text and "eval_loss **-0.40 [-0.50, -0.30]**" in text for text in shown
    ), shown
    assert "On the validation split, fine-tuning improved accuracy by +0.41 [0.33, 0.49]." in shown
    at.selectbox(key="runs_selected").set_value("noisy").run()
    assert any(
        text.startswith("The difference in accuracy is within noise: the validation split (120 examples)")
        for text in (m.value for m in at.markdown)
    )


def test_compare_shows_the_interval_in_the_delta_cell(no_runner):
    write_run(no_runner, "sure", TEXT, _metrics(0.33, 0.49))
    write_run(no_runner, "older", TEXT, {k: v for k, v in _metrics(0, 1).items() if k != "intervals"})
    at = open_app("pages/compare.py")
    at.multiselect(key="compare_runs").set_value(["sure", "older"]).run()
    assert_ok(at)
    (headline,) = tables(at)
    assert [(row["run"], row["acc Δ"], row["loss Δ"]) for row in headline] == [
        ("sure", "+0.41 [0.33, 0.49]", "-0.40 [-0.50, -0.30]"),
        ("older", "0.41", "-0.4"),
    ]
    details = at.dataframe[0].value
    assert details.loc["sure", "delta_accuracy_low"] == 0.33 and details.loc["sure", "delta_accuracy_high"] == 0.49
