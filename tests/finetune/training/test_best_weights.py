"""training.BestWeights: the weights of the best evaluation come back when later evaluations scored worse."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from finetune.training.progress import BestWeights, TrainerState


def _model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    model[0].weight.requires_grad_(False)  # frozen, like a LoRA base weight: not copied
    return model


def _evaluate(best: BestWeights, model, state: TrainerState, loss: float) -> None:
    state.record_eval(loss)
    best.offer(model, state, {"eval_loss": loss})


def test_best_weights_are_restored_with_their_metrics():
    model, state = _model(), TrainerState()
    best = BestWeights(SimpleNamespace(distributed_type=DistributedType.NO), enabled=True)
    state.step = 2
    _evaluate(best, model, state, 0.5)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    assert set(best.weights) == {
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    with torch.no_grad():
        model[0].bias.add_(1.0)
        model[1].running_mean.add_(2.0)
    state.step = 4
    _evaluate(best, model, state, 0.7)  # worse: nothing copied
    assert best.step == 2
    assert best.restore(model, state) == {"eval_loss": 0.5}
    restored = model.state_dict()
    assert restored.keys() == kept.keys()
    for name, value in restored.items():
        assert torch.equal(value, kept[name]), name


def test_nothing_is_restored_when_the_last_evaluation_is_best_or_when_disabled_or_sharded():
    for distributed, enabled in ((DistributedType.NO, True), (DistributedType.NO, False), (DistributedType.FSDP, True)):
        model, state = _model(), TrainerState()
        best = BestWeights(SimpleNamespace(distributed_type=distributed), enabled=enabled)
        state.step = 2
        _evaluate(best, model, state, 0.9)
        state.step = 4
        _evaluate(best, model, state, 0.5)
        assert best.restore(model, state) is None
        assert best.weights is None or best.step == 4


def test_the_command_line_keeps_the_best_evaluation_when_the_last_one_is_worse(tiny_checkpoints, tmp_path):
    """A learning rate far too high (0.2, constant) makes the evaluations swing: the best is at step 1 and the last
    (step 8) is much worse. The adapter written at the end is step 1's, and metrics.json says so."""
    from tests.conftest import read_events, read_json, run_cli, write_sentiment_csv
    from tests.finetune.reference_eval import eval_loss_of_reloaded

    run = tmp_path / "run"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(write_sentiment_csv(tmp_path / "reviews.csv", rows=60)),
        "--output_dir",
        str(run),
        "--max_steps",
        "8",
        "--eval_steps",
        "1",
        "--learning_rate",
        "0.2",
        "--head_learning_rate",
        "0.2",
        "--lr_scheduler_type",
        "constant",
        "--warmup_ratio",
        "0",
        "--mixed_precision",
        "no",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_json(run / "metrics.json")
    evals = {e["step"]: e for e in read_events(run) if e["event"] == "eval" and e["step"] > 0}
    best = min(evals, key=lambda step: evals[step]["eval_loss"])
    assert len(evals) == 8 and evals[8]["eval_loss"] > 1.5 * evals[best]["eval_loss"], "the last evaluation is worse"
    assert metrics["adapter_step"] == metrics["best_step"] == best < metrics["steps"] == 8
    assert metrics["finetuned"]["eval_loss"] == pytest.approx(evals[best]["eval_loss"], rel=1e-6)
    assert eval_loss_of_reloaded(run) == pytest.approx(evals[best]["eval_loss"], rel=1e-4), (
        "the saved adapter is the best"
    )
    assert "Restored the weights of step" in (run / "train.log").read_text()


def test_a_run_resumed_after_its_best_evaluation_ends_with_the_same_result(tiny_checkpoints, tmp_path):
    """Killed after the checkpoint that follows the best evaluation, then resumed: the checkpoint carries the best
    weights, so the result is the uninterrupted run's (the best evaluation's adapter, its metrics), not the last
    step's."""
    from safetensors.torch import load_file

    from tests.conftest import read_json, run_cli, write_sentiment_csv

    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=60)
    swinging = [  # the evaluations swing: the best is early, the last much worse (the test above)
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(data), "--max_steps", "8",
        "--eval_steps", "1", "--save_steps", "4", "--learning_rate", "0.2", "--head_learning_rate", "0.2",
        "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--mixed_precision", "no",
    ]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_cli(*swinging, "--output_dir", str(whole)).returncode == 0
    expected = read_json(whole / "metrics.json")
    assert expected["best_step"] < 4, "the best evaluation comes before the checkpoint the resume starts from"
    shutil.copytree(whole / "checkpoints" / "step_4", resumed / "checkpoints" / "step_4")
    result = run_cli(*swinging, "--output_dir", str(resumed), "--resume_from_checkpoint", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    got = read_json(resumed / "metrics.json")
    assert got["adapter_step"] == expected["adapter_step"] == expected["best_step"]
    assert got["finetuned"]["eval_loss"] == pytest.approx(expected["finetuned"]["eval_loss"], rel=1e-6)
    mine, theirs = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (resumed, whole))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
