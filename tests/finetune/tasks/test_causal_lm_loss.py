"""NextTokenLoss: the loss and gradients of transformers' ForCausalLMLoss, without upcasting the whole batch."""

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from finetune.tasks.causal_lm import NextTokenLoss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradients_equal_transformers_with_ignored_labels(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(3, 17, 50) * 3).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 17))
    labels[1, 5:9] = -100  # padding and masked prompts carry -100: left out of the mean
    expected = ForCausalLMLoss(logits, labels, vocab_size=50)
    [expected_grad] = torch.autograd.grad(expected, logits)
    got = NextTokenLoss.apply(logits, labels)
    [got_grad] = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)
    assert got_grad.dtype == dtype
    torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                               atol=1e-6)  # fmt: skip
    assert torch.all(got_grad[:, -1] == 0)  # the last position predicts nothing
    assert torch.all(got_grad[1, 4:8] == 0)  # positions whose next token is ignored


def test_fp32_logits_are_left_unchanged_by_the_backward_pass():
    logits = torch.randn(2, 9, 30, requires_grad=True)
    before = logits.detach().clone()
    NextTokenLoss.apply(logits, torch.randint(0, 30, (2, 9))).backward()
    assert torch.equal(logits.detach(), before)
