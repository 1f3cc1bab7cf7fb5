"""report_to through the real command line: TensorBoard event files beside events.jsonl, readable by TensorBoard's
own reader; a tracker that is not installed is refused with what to install."""

import pytest

from tests.conftest import read_events, read_json, run_cli, write_sentiment_csv

STEPS = ["--max_steps", "4", "--logging_steps", "1", "--eval_steps", "2", "--learning_rate", "2e-3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("tracking") / "reviews.csv", rows=60)


def test_tensorboard_event_files_hold_the_runs_curves(tiny_checkpoints, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(run),
        "--report_to",
        "tensorboard",
        *STEPS,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    event_files = list((run / "tracking").rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file under RUN/tracking"
    scalars = {}
    for path in event_files:
        reader = EventAccumulator(str(path.parent)).Reload()
        for tag in reader.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in reader.Scalars(tag)]
    train = [e for e in read_events(run) if e["event"] == "train"]
    assert [step for step, _ in scalars["loss"]] == [e["step"] for e in train] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss"]] == pytest.approx([e["loss"] for e in train], rel=1e-6)
    assert [step for step, _ in scalars["eval_loss"]] == [0, 2, 4]  # base model, then every eval_steps
    assert {"accuracy", "learning_rate"} <= set(scalars)
    assert read_json(run / "status.json")["state"] == "finished", "events.jsonl stays the app's source"


def test_a_tracker_that_is_not_installed_is_refused_with_what_to_install(tiny_checkpoints, data, tmp_path):
    from accelerate.utils import is_mlflow_available

    if is_mlflow_available():
        pytest.skip("mlflow is installed here")
    run = tmp_path / "run"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(run),
        "--report_to",
        "mlflow",
        *STEPS,
    )
    assert result.returncode == 2
    assert "report_to: mlflow is not installed" in result.stderr and "pip install mlflow-skinny" in result.stderr
    assert read_json(run / "status.json")["state"] == "failed"
