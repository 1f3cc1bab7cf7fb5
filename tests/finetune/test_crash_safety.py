"""Crash safety through the real command line: kill -9 at every state-file write, resume at max_steps, output_dir
guard."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from finetune.config import TrainConfig
from finetune.rundir import RunDirectory
from tests.conftest import OFFLINE_ENV, REPO, read_events, read_json, run_cli, write_lm_text, write_sentiment_csv

# 12 steps, an evaluation every 3 and a checkpoint every 4: kills land before, between and after both.
STEPS = [
    "--max_steps", "12", "--eval_steps", "3", "--save_steps", "4", "--save_total_limit", "10",
    "--logging_steps", "1", "--learning_rate", "2e-3", "--head_learning_rate", "1e-2", "--mixed_precision", "no",
]  # fmt: skip
# Each phase of a run, as (what, n) for tests/finetune/kill_at_write.py: a state file's nth write, or the moment
# after the train or eval event of step n.
PHASES = {
    "set-up": ("status.json", "1"),
    "after the base evaluation": ("eval", "0"),
    "before the first checkpoint": ("train", "2"),
    "mid-epoch, past a checkpoint": ("train", "6"),
    "during a checkpoint save": ("trainer_state.json", "2"),
    "after an evaluation": ("eval", "9"),
    "at the last step": ("train", "12"),
    "during the final save": ("lora_lab.json", "1"),
    "during the metrics write": ("metrics.json", "1"),
}
# Two task kinds: text classification (BERT) and causal LM (GPT-2), each killed in every phase.
CASES = [(family, phase) for family in ("bert", "gpt2") for phase in PHASES]


@pytest.fixture(scope="module")
def setup(tiny_checkpoints, tmp_path_factory):
    """Per family: the trainer's arguments and the uninterrupted run they make."""
    root = tmp_path_factory.mktemp("crash")
    data = {"bert": write_sentiment_csv(root / "reviews.csv", rows=120), "gpt2": write_lm_text(root / "lm.txt")}
    runs = {}
    for family in ("bert", "gpt2"):
        common = ["--model_name_or_path", str(tiny_checkpoints[family]), "--train_file", str(data[family]), *STEPS]
        reference = root / f"reference-{family}"
        assert run_cli(*common, "--output_dir", str(reference)).returncode == 0
        runs[family] = (common, reference)
    return root, runs


def _killed_at(common, run, what: str, nth: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.finetune.kill_at_write", what, nth, *common, "--output_dir", str(run)],
        cwd=REPO,
        env=OFFLINE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -9, f"{what}#{nth} was not reached:\n{result.stderr[-2000:]}"
    if what not in ("train", "eval"):
        assert list(run.rglob(f".{what}.killed.tmp")), "the kill landed mid-write"


def _trace(run) -> list[tuple]:
    """The run's train and eval events without their clock: kind, step, loss."""
    return [(e["event"], e["step"], e.get("loss", e.get("eval_loss"))) for e in read_events(run)]


@pytest.mark.parametrize(("family", "phase"), CASES, ids=[f"{family}: {phase}" for family, phase in CASES])
def test_a_run_killed_in_any_phase_resumes_to_the_uninterrupted_result(setup, family, phase):
    root, runs = setup
    common, reference = runs[family]
    run = root / f"killed-{family}-{phase.replace(' ', '-').replace(',', '')}"
    _killed_at(common, run, *PHASES[phase])
    for path in [run / "status.json", run / "metrics.json", *run.glob("checkpoints/*/*.json")]:
        if path.exists():
            json.loads(path.read_text())  # whole, never truncated
    resumed = run_cli(*common, "--output_dir", str(run), "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, f"{phase}:\n{resumed.stderr[-3000:]}"
    assert read_json(run / "status.json")["state"] == "finished"
    expected, got = read_json(reference / "metrics.json"), read_json(run / "metrics.json")
    assert (got["steps"], got["adapter_step"]) == (expected["steps"], expected["adapter_step"])
    for split in ("base", "finetuned"):
        assert got[split]["eval_loss"] == pytest.approx(expected[split]["eval_loss"], rel=1e-5), split
    trace, expected_trace = _trace(run), _trace(reference)
    assert [t[:2] for t in trace] == [t[:2] for t in expected_trace], "the same events, none twice"
    assert [t[2] for t in trace] == pytest.approx([t[2] for t in expected_trace], rel=1e-5)
    mine, theirs = (load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (run, reference))
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k], theirs[k], rtol=1e-5, atol=1e-7) for k in mine), "the same adapter"


def test_config_yaml_survives_a_kill_during_its_rewrite(setup):
    root, runs = setup
    common = runs["bert"][0]
    run = root / "config-kill"
    # Queued as the web app does (config.yaml and status.json first); the trainer rewrites config.yaml once, with
    # the task inferred from the checkpoint, and is killed in the middle of that write.
    queued = {"model_name_or_path": common[1], "train_file": common[3], "output_dir": str(run)}
    run.mkdir()
    TrainConfig.from_dict(queued).to_yaml(run / "config.yaml")
    RunDirectory(run).update_status(state="queued")
    _killed_at(common, run, "config.yaml", "1")
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
    common = setup[1]["bert"][0]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my: own settings\n")
    output_dir, message = OUTPUT_DIRS[case]
    output_dir = output_dir.format(repo=REPO, foreign=foreign)
    result = run_cli(*common, "--output_dir", output_dir)
    assert result.returncode == 2 and message in result.stderr, (output_dir, result.stderr[-500:])
    assert (foreign / "config.yaml").read_text() == "my: own settings\n" and len(list(foreign.iterdir())) == 1
    assert not (REPO / "status.json").exists() and not (REPO / "finetune" / "status.json").exists()
