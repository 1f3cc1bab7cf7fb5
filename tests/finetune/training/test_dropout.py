"""LaneDropout: torch's dropout semantics (drop rate, scaling, gradient, evaluation) from a quarter of the draws."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from finetune.training.dropout import LaneDropout, use_lane_dropout

ELEMENTS = 2_000_000


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_at_rate_p_and_keeps_the_expected_value(p):
    torch.manual_seed(0)
    dropout = LaneDropout(p).train()
    out = dropout(torch.ones(ELEMENTS))
    dropped = (out == 0).float().mean().item()
    # Binomial standard error at 2M elements is below 4e-4; the rounding of p to 1/65536 below 8e-6.
    assert dropped == pytest.approx(p, abs=2e-3)
    assert out.mean().item() == pytest.approx(1.0, abs=4e-3)  # kept elements scaled by 1 / keep rate
    assert out.unique().tolist() == [0.0, pytest.approx(1 / (1 - p), rel=1e-4)]


def test_every_lane_of_a_draw_is_uniform():
    """Each 64-bit draw feeds 4 neighbouring elements: each position within the 4 must drop at rate p."""
    torch.manual_seed(1)
    out = LaneDropout(0.25).train()(torch.ones(ELEMENTS))
    per_lane = (out == 0).float().view(-1, 4).mean(dim=0)
    assert per_lane.tolist() == pytest.approx([0.25] * 4, abs=3e-3)


def test_gradient_flows_through_the_kept_elements_only():
    torch.manual_seed(2)
    inputs = torch.randn(64, 33, requires_grad=True)  # an element count not divisible by 4
    out = LaneDropout(0.3).train()(inputs)
    out.backward(torch.ones_like(out))
    kept = out != 0
    assert torch.equal(inputs.grad != 0, kept)
    assert torch.allclose(inputs.grad[kept], torch.full((int(kept.sum()),), 1 / (1 - 0.3)), rtol=1e-4)
    assert torch.allclose(out[kept], inputs.detach()[kept] / (1 - 0.3), rtol=1e-4)


def test_same_seed_same_masks_and_identity_in_evaluation():
    dropout = LaneDropout(0.1).train()
    torch.manual_seed(3)
    first = dropout(torch.ones(1000))
    torch.manual_seed(3)
    assert torch.equal(first, dropout(torch.ones(1000)))
    inputs = torch.randn(100)
    assert torch.equal(dropout.eval()(inputs), inputs)
    assert torch.equal(LaneDropout(1.0).train()(inputs), torch.zeros(100))
    assert torch.equal(LaneDropout(0.0).train()(inputs), inputs)


def test_every_dropout_of_a_lora_model_is_replaced_and_the_adapter_is_unchanged():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.drop, self.head = nn.Linear(8, 8), nn.Dropout(0.2), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.drop(self.proj(x)))

    model = get_peft_model(Net(), LoraConfig(r=2, lora_dropout=0.1, target_modules=["proj"]))
    keys = set(model.state_dict())
    assert use_lane_dropout(model) == 2  # the model's own and LoRA's
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [type(m) for m in dropouts] == [LaneDropout, LaneDropout]
    assert sorted(m.p for m in dropouts) == [0.1, 0.2]
    assert set(model.state_dict()) == keys  # dropout holds no weights: checkpoints and adapters unchanged
    model.train()(torch.randn(4, 8)).sum().backward()  # LoRA's forward calls the replaced module
    assert model.base_model.model.proj.lora_A["default"].weight.grad is not None
