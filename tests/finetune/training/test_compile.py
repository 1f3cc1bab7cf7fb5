"""torch_compile: true, as the New run form offers it, end to end through the real command line on the CPU
(inductor): the run finishes, saves its adapter, and the reloaded adapter scores the validation split exactly as the
compiled model did at the end of training."""

import pytest

from tests.conftest import read_json, run_cli, write_sentiment_csv
from tests.finetune.reference_eval import eval_loss_of_reloaded


def test_a_compiled_run_saves_an_adapter_that_reloads_to_the_same_scores(tiny_checkpoints, tmp_path):
    out = tmp_path / "compiled"
    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=120)
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--torch_compile",
        "true",
        "--mixed_precision",
        "no",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(out / "status.json")["state"] == "finished"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    finetuned = read_json(out / "metrics.json")["finetuned"]
    assert eval_loss_of_reloaded(out) == pytest.approx(finetuned["eval_loss"], rel=1e-4, abs=1e-5)
