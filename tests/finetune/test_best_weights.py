"""training.BestWeights: the weights of the best evaluation come back when later evaluations scored worse."""

from types import SimpleNamespace

import torch
from accelerate.utils import DistributedType

from finetune.training import BestWeights, TrainerState


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
    assert set(best.weights) == {"0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                 "1.num_batches_tracked"}
    with torch.no_grad():
        model[0].bias.add_(1.0)
        model[1].running_mean.add_(2.0)
    state.step = 4
    _evaluate(best, model, state, 0.7)  # worse: nothing copied
    assert best.step == 2
    assert best.restore(model, state) == {"eval_loss": 0.5}
    checked = 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, kept[name]), name
        checked += 1
    assert checked == 7


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
