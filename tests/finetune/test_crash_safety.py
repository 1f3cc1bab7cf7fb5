"""Crash safety through the real command line: kill -9 at every state-file write, resume at max_steps, output_dir
guard."""

import json
import subprocess
import sys

import pytest
import yaml

from finetune.config import TrainConfig
from finetune.rundir import RunDirectory
from tests.conftest import OFFLINE_ENV, REPO, read_events, read_json, run_cli, write_sentiment_csv

# 12 steps, a checkpoint every 4: kills land before, between and after checkpoints.
STEPS = [
    "--max_steps",
    "12",
    "--save_steps",
    "4",
    "--save_total_limit",
    "10",
    "--logging_steps",
    "1",
    "--learning_rate",
    "2e-3",
    "--head_learning_rate",
    "1e-2",
]
# (file, which write of it): each kill leaves the run resumable.
KILL_POINTS = [
    ("trainer_state.json", 2),  # saving step 8: step_8 is incomplete, resume from step_4
    ("checkpoint_complete.json", 2),  # step_8's files all there but not marked complete
    ("metrics.json", 1),  # after the last checkpoint (step 12 = max_steps): nothing left to train
    ("lora_lab.json", 1),  # adapter half written
    ("status.json", "last-state"),  # the final "finished" never lands
]


@pytest.fixture(scope="module")
def setup(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data = write_sentiment_csv(root / "reviews.csv", rows=120)
    common = ["--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), *STEPS]
    reference = root / "reference"
    assert run_cli(*common, "--output_dir", str(reference)).returncode == 0
    return root, common, read_json(reference / "metrics.json")


def _killed_at(common, run, name: str, nth: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.finetune.kill_at_write", name, str(nth), *common, "--output_dir", str(run)],
        cwd=REPO,
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -9, f"{name}#{nth} was not reached:\n{result.stderr[-2000:]}"
    assert list(run.rglob(f".{name}.killed.tmp")), "the kill landed mid-write"


@pytest.mark.parametrize(("name", "nth"), KILL_POINTS, ids=[f"{name}#{nth}" for name, nth in KILL_POINTS])
def test_kill_9_during_each_state_file_write_leaves_a_run_that_resumes(setup, name, nth):
    root, common, reference = setup
    run = root / f"killed-{name}-{nth}"
    _killed_at(common, run, name, nth)
    for path in [run / "status.json", run / "metrics.json", *run.glob("checkpoints/*/*.json")]:
        if path.exists():
            json.loads(path.read_text())  # whole, never truncated
    TrainConfig.from_yaml(run / "config.yaml")
    last = run / "checkpoints" / "step_12" / "trainer_state.json"
    earlier_runtime = read_json(last)["runtime_seconds"] if last.exists() else None
    resumed = run_cli(
        "--config", str(run / "config.yaml"), "--output_dir", str(run), "--resume_from_checkpoint", "true"
    )
    assert resumed.returncode == 0, f"{name}#{nth}:\n{resumed.stderr[-3000:]}"
    metrics = read_json(run / "metrics.json")
    assert read_json(run / "status.json")["state"] == "finished", name
    assert metrics["steps"] == 12 and metrics["finetuned"] is not None and metrics["base"] == reference["base"], name
    assert metrics["finetuned"]["eval_loss"] == pytest.approx(reference["finetuned"]["eval_loss"], rel=1e-5), name
    assert max(e["step"] for e in read_events(run)) == 12, f"{name}: no step beyond max_steps"
    if nth == 2:  # killed while saving step_8: skipped with a log line, resumed from step_4
        log = (run / "train.log").read_text()
        assert "Skipping" in log and "step_8" in log and "checkpoints/step_4 at step 4" in log, name
    if earlier_runtime is not None:  # resumed at max_steps: runtime spans the segment before the kill too
        assert metrics["train_runtime_seconds"] > earlier_runtime > 0, name


def test_config_yaml_survives_a_kill_during_its_rewrite(setup):
    root, common, _ = setup
    run = root / "config-kill"
    # Queued as the web app does (config.yaml and status.json first); the trainer rewrites config.yaml once, with
    # the task inferred from the checkpoint, and is killed in the middle of that write.
    queued = {"model_name_or_path": common[1], "train_file": common[3], "output_dir": str(run)}
    run.mkdir()
    TrainConfig.from_dict(queued).to_yaml(run / "config.yaml")
    RunDirectory(run).update_status(state="queued")
    _killed_at(common, run, "config.yaml", 1)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert TrainConfig.from_dict(config).output_dir == str(run) and read_json(run / "status.json")["state"] == "running"


# name: (output_dir, with {repo} and {foreign} filled in, the message expected)
OUTPUT_DIRS = {
    "root": ("/", "is a system, home or project folder"),
    "project": ("{repo}", "is a system, home or project folder"),
    "project subfolder": ("{repo}/finetune", "is a system, home or project folder"),
    "foreign folder": ("{foreign}", "holds no LoRA Lab run"),
    "a file": ("{foreign}/config.yaml", "is a file"),
}


@pytest.mark.parametrize("case", OUTPUT_DIRS)
def test_output_dir_must_be_new_empty_or_a_run(setup, tmp_path, case):
    _, common, _ = setup
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my: own settings\n")
    output_dir, message = OUTPUT_DIRS[case]
    output_dir = output_dir.format(repo=REPO, foreign=foreign)
    result = run_cli(*common, "--output_dir", output_dir)
    assert result.returncode == 2 and message in result.stderr, (output_dir, result.stderr[-500:])
    assert (foreign / "config.yaml").read_text() == "my: own settings\n" and len(list(foreign.iterdir())) == 1
    assert not (REPO / "status.json").exists() and not (REPO / "finetune" / "status.json").exists()
