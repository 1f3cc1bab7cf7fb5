"""New run's time estimate for every checkpoint (demo ones too) and its optional validation and test files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import TrainConfig
from finetune.training.advice import estimated_training_seconds
from tests.conftest import OFFLINE_ENV, REPO, write_lm_text, write_sentiment_csv
from tests.webapp.apptest import assert_ok, errors, open_app, warnings
from webapp.services import catalog, devices, launch
from webapp.services.uploads import DataReport


def _estimates(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("Estimated training time")] + [
        w for w in warnings(at) if w.startswith("Estimated training time")
    ]


def test_a_demo_checkpoint_gets_a_time_estimate_and_a_warning_past_30_minutes(no_runner):
    at = open_app()
    [estimate] = _estimates(at)
    assert estimate.startswith("Estimated training time: about ") and "on CPU" in estimate, estimate
    assert not any(w.startswith("Estimated training time") for w in warnings(at)), "the sample data is quick"
    # The same demo GPT-2 on a 30 MB text (a long novel's worth of books): hours, warned about before Launch.
    demo = catalog.Checkpoint("demo/gpt2", "gpt2", "causal-lm", demo=True)
    data = DataReport(Path("books.txt"), 400_000, ["text"], "text", None, None, None, {}, None, file_bytes=30 * 2**20)
    cfg = TrainConfig.from_dict({**catalog.DEMO_OVERRIDES["gpt2"], "model_name_or_path": "demo/gpt2",
                                 "train_file": "books.txt", "output_dir": "o", "task": "causal-lm"})  # fmt: skip
    cpu = devices.setups([])[0]
    assert launch.estimate(cfg, data, demo, cpu) > 1800
    assert "training may take about" in launch.warnings(cfg, data, demo, cpu)["num_train_epochs"]


def test_the_demo_gpt2_estimate_agrees_with_what_check_measures(demo_dir, tmp_path):
    """The static estimate for a demo checkpoint (its measured cost per 128-token block, the file's bytes) lands within
    3x of the training time Check measures on this machine, for a text 20x the sample."""
    text = write_lm_text(tmp_path / "long.txt", lines=8_000, seed=3)
    overrides = catalog.DEMO_OVERRIDES["gpt2"]
    flags = ["--learning_rate", str(overrides["learning_rate"]), "--num_train_epochs", "2"]
    flags += ["--lora_target_modules", *overrides["lora_target_modules"]]
    checkpoint = demo_dir / "checkpoints" / "gpt2"
    done = subprocess.run(
        [sys.executable, "-m", "finetune.preflight", "--model_name_or_path", str(checkpoint), "--train_file",
         str(text), "--task", "causal-lm", *flags, "--json"],
        capture_output=True, text=True, cwd=REPO, env=OFFLINE_ENV, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    measured = report["total_steps"] * report["seconds_per_step"]
    cfg = TrainConfig.from_dict(
        {"model_name_or_path": str(checkpoint), "train_file": str(text), "output_dir": "o", "task": "causal-lm",
         "learning_rate": overrides["learning_rate"], "num_train_epochs": 2}
    )  # fmt: skip
    rows = len(text.read_text().splitlines())
    cost = catalog.DEMO_SECONDS_PER_EXAMPLE["gpt2"]
    estimate = estimated_training_seconds(cfg, rows, "gpt2", 0, 2, text.stat().st_size, cost)
    assert 1 / 3 < estimate / measured < 3, (estimate, measured)


def _choose(at, field: str, source: str):
    at.radio(key=f"{field}_source").set_value(source).run()
    return at


def test_validation_and_test_files_are_uploaded_or_picked_and_reach_the_config(no_runner, tmp_path):
    at = open_app()
    at.radio(key="family").set_value("bert").run()
    validation = write_sentiment_csv(tmp_path / "held.csv", rows=40, seed=5).read_bytes()
    _choose(at, "validation_file", "Upload a file")
    at.file_uploader(key="validation_file_upload").set_value(("my held-out reviews.csv", validation, "text/csv")).run()
    assert_ok(at)
    assert errors(at) == []
    assert any(c.value == "Validation data: 40 examples" for c in at.caption), [c.value for c in at.caption]
    # The test file: the upload just made, picked from the user's earlier uploads by the name they gave it.
    _choose(at, "test_file", "An earlier upload")
    assert at.selectbox(key="test_file").options == ["my held-out reviews.csv"]
    assert_ok(at)
    [config] = [c.value for c in at.code if c.value.startswith("model_name_or_path")]
    held = [line for line in config.splitlines() if line.startswith(("validation_file:", "test_file:"))]
    assert len(held) == 2 and all(line.endswith("/upload.csv") for line in held), held


def test_a_validation_file_with_other_columns_stops_the_page_with_the_reason(no_runner, tmp_path):
    at = open_app()
    at.radio(key="family").set_value("bert").run()
    _choose(at, "validation_file", "Upload a file")
    wrong = b"sentence,score\n" + b"a fine film,positive\n" * 10
    at.file_uploader(key="validation_file_upload").set_value(("other.csv", wrong, "text/csv")).run()
    [message] = errors(at)
    assert message.startswith("Validation data: ") and "review" in message, message
    assert "Launch run" not in [b.label for b in at.button]


@pytest.mark.parametrize("source", ["None", "An earlier upload"])
def test_no_held_out_file_leaves_the_config_without_one(no_runner, source):
    at = _choose(open_app(), "test_file", source)
    assert_ok(at)
    [config] = [c.value for c in at.code if c.value.startswith("model_name_or_path")]
    assert "test_file: null" in config
