"""Attention for training on a CPU: two batched matmuls and a softmax in the compute dtype, with LaneDropout.

On a CPU, torch's scaled_dot_product_attention picks its flash kernel when there is no dropout (ViT), whose backward
is slow on CPUs: 42 ms forward and backward for one ViT-base layer at batch 8 (bf16), 30% of a LoRA step. With
attention dropout (BERT, GPT-2) it takes the math path, which upcasts bf16 to fp32 and draws the dropout mask one
element at a time: 38 ms. Two bf16 batched matmuls and a bf16 softmax (accumulated in fp32 inside torch's kernel,
rounded to bf16 as flash attention rounds its probabilities before multiplying by V) take 15 ms.

Registered with transformers' AttentionInterface under its own name and set on the model only for CPU training; the
name is never saved (transformers does not serialize the attention implementation), so a saved adapter or merged
model loads with the library's default.
"""

from typing import Optional

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from finetune.training.dropout import lane_dropout

NAME = "lora_lab_cpu"


def cpu_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T x scaling, masked) V for (batch, heads, length, head size) inputs, as transformers' eager
    attention computes it; returns the output as (batch, length, heads, head size) and the probabilities."""
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attention_mask is not None:  # boolean, from cpu_attention_mask: True where a query may attend
        scores = scores.masked_fill(~attention_mask[:, :, :, : key.shape[-2]], torch.finfo(scores.dtype).min)
    probabilities = scores.softmax(dim=-1).to(value.dtype)
    if module.training and dropout > 0:
        probabilities = lane_dropout(probabilities, dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), probabilities


def cpu_attention_mask(*args, **kwargs) -> Optional[torch.Tensor]:
    """sdpa's boolean mask (True: attend), made explicit for causal models too: the is_causal shortcut, where no mask
    is made, is for sdpa's kernels, and ``cpu_attention`` reads only the mask."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})


def use_cpu_attention(model: PreTrainedModel) -> bool:
    """Set ``cpu_attention`` on ``model`` when its attention layers take their function from
    transformers' AttentionInterface (GPT-2, BERT and ViT do; ResNet has no attention). True if set."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # under LoRA: the model it wraps
    # transformers' flag for models whose attention layers call a registered function (False for ResNet)
    supported = isinstance(model, PreTrainedModel) and model._supports_attention_backend
    if not supported or not model._can_set_attn_implementation():
        return False
    AttentionInterface.register(NAME, cpu_attention)
    AttentionMaskInterface.register(NAME, cpu_attention_mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
