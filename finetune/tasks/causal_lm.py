"""Causal language modelling (GPT-2): texts are tokenized, joined and cut into blocks of block_size tokens."""

import logging
import math
from itertools import chain
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, default_data_collator

from finetune.config import TrainConfig
from finetune.data.loading import MAX_TEXT_CHARS, Columns, long_text_lengths
from finetune.errors import UserError
from finetune.tasks.base import Task

logger = logging.getLogger(__name__)

# Longest block chosen by default (tokens): longer blocks cost memory quadratically for little gain
# on the small data sets people fine-tune on.
DEFAULT_MAX_BLOCK = 512
# Shortest block the default will shrink to, and how many training blocks it aims to keep, so that a
# small file still yields enough examples to learn from.
MIN_BLOCK, TARGET_BLOCKS = 32, 64


def load_tokenizer(model_name_or_path: str):
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if tokenizer.pad_token is None:
        # GPT-2 has no padding token; padded positions are masked anyway, so eos serves.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_max_length(model: PreTrainedModel, tokenizer) -> int:
    config_limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    limits = [n for n in (config_limit, tokenizer.model_max_length) if n and n < 1_000_000]
    return min(limits) if limits else DEFAULT_MAX_BLOCK


class CausalLMTask(Task):
    auto_model_class = AutoModelForCausalLM

    def load_processor(self, model_name_or_path: str) -> Any:
        return load_tokenizer(model_name_or_path)

    def encode(
        self, cfg: TrainConfig, data: DatasetDict, columns: Columns, processor: Any, model: PreTrainedModel
    ) -> tuple[DatasetDict, dict]:
        tokenizer = processor
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        _log_long_texts(data, columns.text)

        def tokenize(batch):
            rows = []
            for text in batch[columns.text]:
                text = str(text or "")  # evaluation data (evaluation/evaluate.py) may hold blanks
                # A long text is tokenized in pieces of MAX_TEXT_CHARS, one row each, to bound memory; eos
                # follows the document's last piece only, so the model learns where documents end.
                pieces = [
                    tokenizer(text[i : i + MAX_TEXT_CHARS])["input_ids"]
                    for i in range(0, max(len(text), 1), MAX_TEXT_CHARS)
                ]
                pieces[-1] = pieces[-1] + eos
                rows.extend(pieces)
            return {"input_ids": rows}

        tokenized = data.map(tokenize, batched=True, remove_columns=data["train"].column_names)
        block_size = cfg.block_size or self._default_block_size(tokenized, model_max_length(model, tokenizer))
        if cfg.block_size and cfg.block_size > model_max_length(model, tokenizer):
            raise UserError(
                f"block_size: {cfg.block_size} exceeds the model's context of "
                f"{model_max_length(model, tokenizer)} tokens"
            )
        grouped = tokenized.map(lambda b: _group_texts(b, block_size), batched=True)
        for split, table in grouped.items():
            if len(table) == 0:
                raise UserError(
                    f"{'train_file' if split == 'train' else 'validation data'}: has fewer than "
                    f"block_size={block_size} tokens; add text or lower block_size"
                )
        return grouped, {"block_size": block_size}

    @staticmethod
    def _default_block_size(tokenized: DatasetDict, context: int) -> int:
        total_tokens = sum(len(ids) for ids in tokenized["train"]["input_ids"])
        validation_tokens = sum(len(ids) for ids in tokenized["validation"]["input_ids"])
        block = min(context, DEFAULT_MAX_BLOCK)
        while block > MIN_BLOCK and (total_tokens // block < TARGET_BLOCKS or validation_tokens < block):
            block //= 2
        logger.info("block_size=%d chosen from %d training tokens (set block_size to override)", block, total_tokens)
        return block

    def collate_fn(self, processor: Any):
        return default_data_collator

    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        return NextTokenLoss.apply(logits, batch["labels"])

    def eval_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        # Position t predicts token t + 1.
        logits, targets = logits[:, :-1], batch["labels"][:, 1:]
        # One sequence at a time in fp32: fp32 logits of a whole batch over GPT-2's 50k-token vocabulary take
        # batch x block x 200 KB, the largest allocation of a run.
        losses = torch.stack(
            [
                F.cross_entropy(row.float(), target, reduction="none", ignore_index=-100)
                for row, target in zip(logits, targets)
            ]
        )
        return {"losses": losses, "predictions": logits.argmax(dim=-1), "references": targets}

    def compute_metrics(self, gathered: dict[str, np.ndarray], num_labels: Optional[int]) -> dict:
        from finetune.metrics import causal_lm_metrics

        mask = gathered["references"] != -100
        return causal_lm_metrics(gathered["losses"][mask], gathered["predictions"][mask], gathered["references"][mask])


class NextTokenLoss(torch.autograd.Function):
    """The mean cross-entropy of each position's logits against the next token (labels of -100 left out), as
    transformers' ForCausalLMLoss computes it, one sequence at a time in fp32. ForCausalLMLoss upcasts the whole
    batch's logits (GPT-2, batch 4 x 256: 103 MB in bf16 become 206 MB, plus 206 MB of log-probabilities kept for
    the backward pass); this keeps the logits as they are and recomputes each sequence's probabilities backwards:
    157 MiB less at the peak of that GPT-2 step, for 4% more step time."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels[:, 1:]
        counted = targets != -100
        tokens = counted.sum().clamp(min=1)
        total, log_normalizers = torch.zeros((), device=logits.device), []
        for scores, target, keep in zip(logits[:, :-1], targets, counted):
            scores = scores.float()
            log_normalizer = torch.logsumexp(scores, dim=-1)
            picked = scores.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += ((log_normalizer - picked) * keep).sum()
            log_normalizers.append(log_normalizer)
        ctx.save_for_backward(logits, targets, counted, torch.stack(log_normalizers), tokens)
        return total / tokens

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, targets, counted, log_normalizers, tokens = ctx.saved_tensors
        grads = torch.zeros_like(logits)
        weights = counted * (grad_output / tokens)
        positions = torch.arange(targets.shape[1], device=logits.device)
        for row in range(logits.shape[0]):
            # softmax - one-hot(target): the gradient of log-sum-exp minus the target's score
            probabilities = (logits[row, :-1].float() - log_normalizers[row].unsqueeze(-1)).exp_()
            probabilities[positions, targets[row].clamp(min=0)] -= 1
            grads[row, :-1] = probabilities.mul_(weights[row].unsqueeze(-1))
        return grads, None


def _log_long_texts(data: DatasetDict, column: str) -> None:
    lengths = [n for split in data.values() for n in long_text_lengths(split, column)]
    if lengths:
        pieces = sum(math.ceil(n / MAX_TEXT_CHARS) for n in lengths)
        logger.info(
            "Split %d text(s) longer than %d characters into %d consecutive pieces (no text dropped)",
            len(lengths),
            MAX_TEXT_CHARS,
            pieces,
        )


def _group_texts(batch: dict, block_size: int) -> dict:
    """Join token lists and cut them into full blocks (the remainder is dropped), as run_clm.py does."""
    ids = list(chain.from_iterable(batch["input_ids"]))
    usable = (len(ids) // block_size) * block_size
    blocks = [ids[i : i + block_size] for i in range(0, usable, block_size)]
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * block_size for _ in blocks],
        "labels": [list(b) for b in blocks],
    }
