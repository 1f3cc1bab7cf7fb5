"""Dropout for CPU training that draws a quarter of the random numbers torch's does.

On a CPU, torch's dropout draws one Mersenne Twister number per element (``bernoulli_``, about 7 ns each on this
project's 2-core test machine) and keeps a mask of the input's dtype for the backward pass. On a real-size model
that is most of a step that bf16 matmuls have made cheap: 15% of a GPT-2 124M LoRA step, more of a BERT-base one.
This dropout cuts each 64-bit draw into four 16-bit lanes, compares each lane with the drop threshold, and keeps a
1-byte mask: 2x faster forward and backward, and a smaller mask kept for the backward pass.
The drop probability is rounded to a multiple of 1/65536 (0.1 becomes 0.099991) and the kept elements are scaled by
the inverse of the rounded keep rate, so every element's expected value is unchanged, as with torch's.
"""

import torch
from torch import nn

# 16-bit lanes: a drop probability is resolved to 1/65536.
LANE_VALUES = 1 << 16
LANES_PER_DRAW = 4  # 64-bit draws
LOWEST_LANE = -(1 << 15)


class _LaneDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, p: float) -> torch.Tensor:
        dropped_lanes = round(p * LANE_VALUES)
        count = inputs.numel()
        draws = torch.empty(-(-count // LANES_PER_DRAW), dtype=torch.int64, device=inputs.device)
        # from=-2**63 with no upper bound: every bit of each draw random, so each 16-bit lane is uniform.
        draws.random_(torch.iinfo(torch.int64).min, None)
        lanes = draws.view(torch.int16)[:count].view(inputs.shape)
        keep = lanes >= LOWEST_LANE + dropped_lanes
        ctx.scale = LANE_VALUES / (LANE_VALUES - dropped_lanes)
        ctx.save_for_backward(keep)
        return torch.mul(inputs, keep).mul_(ctx.scale)  # scaled in place: one tensor allocated, not two

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.mul(grad_output, keep).mul_(ctx.scale), None


class LaneDropout(nn.Dropout):
    """``nn.Dropout`` with the draws of ``_LaneDropout`` when training; the identity in evaluation."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1:
            return super().forward(inputs)  # p=1 zeroes everything, which torch does exactly
        return lane_dropout(inputs, self.p)


def lane_dropout(inputs: torch.Tensor, p: float) -> torch.Tensor:
    """Training-time dropout of ``inputs`` with probability 0 < p < 1 (attention probabilities: no module there)."""
    return _LaneDropout.apply(inputs, p)


def use_lane_dropout(model: nn.Module) -> int:
    """Replace every ``nn.Dropout`` in ``model`` (its own and LoRA's) by a ``LaneDropout`` of the same p. Dropout
    modules hold no weights, so checkpoints and saved adapters are unchanged. Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:  # subclasses may do more than drop
                setattr(parent, name, LaneDropout(child.p, inplace=child.inplace))
                replaced += 1
    return replaced
