"""Resuming a run from the command line, as the Runs page's Resume does (--resume_from_checkpoint true): a run
killed before its first checkpoint starts over and ends exactly as an uninterrupted run."""

import json

import pytest
from safetensors.torch import load_file

from finetune.rundir import RunDirectory
from tests.conftest import read_events, read_json, run_cli, write_sentiment_csv


def _trace(run) -> list[tuple]:
    """What a run did, without its clock: each train and eval event's kind, step and loss."""
    return [(e["event"], e["step"], e.get("loss", e.get("eval_loss"))) for e in read_events(run)]


def test_a_run_killed_before_its_first_checkpoint_starts_over_and_ends_as_an_uninterrupted_run(
    tiny_checkpoints, tmp_path
):
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=80)
    common = [
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), "--max_steps", "6",
        "--eval_steps", "3", "--logging_steps", "1", "--save_steps", "1000", "--mixed_precision", "no",
    ]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_cli(*common, "--output_dir", str(whole)).returncode == 0
    # What a SIGKILL before the first checkpoint leaves: the run's files, its first events, no checkpoint.
    killed.mkdir()
    (killed / "config.yaml").write_text((whole / "config.yaml").read_text().replace(str(whole), str(killed)))
    RunDirectory(killed).update_status(state="failed", error="the trainer ended without reporting")
    (killed / "events.jsonl").write_text(json.dumps({"event": "eval", "step": 0, "eval_loss": 9.9, "time": 1}) + "\n")
    result = run_cli(*common, "--output_dir", str(killed), "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting over from step 0" in (killed / "train.log").read_text()
    assert read_json(killed / "status.json")["state"] == "finished"
    assert _trace(killed) == _trace(whole), "the same events, the first attempt's replaced"
    expected, got = read_json(whole / "metrics.json"), read_json(killed / "metrics.json")
    assert got["finetuned"]["eval_loss"] == pytest.approx(expected["finetuned"]["eval_loss"], rel=1e-6)
    mine, theirs = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (killed, whole))
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)


def test_checkpoints_come_by_time_as_well_as_by_steps(tiny_checkpoints, tmp_path):
    """save_minutes: a long epoch cannot lose more than that much training to a crash (here: every step is due)."""
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=80)
    out = tmp_path / "timed"
    result = run_cli(
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), "--output_dir", str(out),
        "--max_steps", "4", "--save_steps", "1000", "--save_minutes", "0.00001", "--save_total_limit", "10",
        "--mixed_precision", "no",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in RunDirectory(out).checkpoints()] == ["step_1", "step_2", "step_3", "step_4"]
    untimed = tmp_path / "untimed"
    result = run_cli(
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), "--output_dir", str(untimed),
        "--max_steps", "4", "--save_steps", "1000", "--save_minutes", "60", "--mixed_precision", "no",
    )  # fmt: skip
    assert result.returncode == 0 and RunDirectory(untimed).checkpoints() == [], "only by steps otherwise"


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_result(tiny_checkpoints, tmp_path):
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=80)
    out = tmp_path / "done"
    common = [
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), "--output_dir", str(out),
        "--max_steps", "4", "--save_steps", "2", "--mixed_precision", "no",
    ]  # fmt: skip
    assert run_cli(*common).returncode == 0
    kept = {name: (out / name).read_bytes() for name in ("metrics.json", "adapter/adapter_model.safetensors")}
    result = run_cli(*common, "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished at step 4 already: nothing to train" in (out / "train.log").read_text()
    assert {name: (out / name).read_bytes() for name in kept} == kept, "its result is not rewritten"
    assert read_json(out / "status.json")["state"] == "finished"
