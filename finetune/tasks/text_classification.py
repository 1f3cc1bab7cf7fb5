"""Text classification (BERT, or GPT-2 with a classification head): one label per text."""

import logging
import math
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, PreTrainedModel

from finetune.config import TrainConfig
from finetune.data.loading import MAX_TEXT_CHARS, Columns, long_text_lengths
from finetune.errors import UserError
from finetune.tasks.base import ClassificationTask
from finetune.tasks.causal_lm import load_tokenizer, model_max_length

logger = logging.getLogger(__name__)

# Default max_seq_length covers this percentile of training texts: the longest few are truncated
# rather than padding every batch to the one outlier.
LENGTH_PERCENTILE = 95
# Texts whose token lengths choose the default max_seq_length (the first ones of the training split).
LENGTH_SAMPLE = 2000


class TextClassificationTask(ClassificationTask):
    auto_model_class = AutoModelForSequenceClassification

    def load_processor(self, model_name_or_path: str) -> Any:
        return load_tokenizer(model_name_or_path)

    def model_kwargs(self, labels, processor) -> dict:
        # GPT-2 style models find the last real token through pad_token_id.
        return {**super().model_kwargs(labels, processor), "pad_token_id": processor.pad_token_id}

    def encode(
        self, cfg: TrainConfig, data: DatasetDict, columns: Columns, processor: Any, model: PreTrainedModel
    ) -> tuple[DatasetDict, dict]:
        tokenizer, limit = processor, model_max_length(model, processor)
        if cfg.max_seq_length and cfg.max_seq_length > limit:
            raise UserError(f"max_seq_length: {cfg.max_seq_length} exceeds the model's limit of {limit} tokens")
        data = _truncate_long_texts(data, columns.text)
        max_length = cfg.max_seq_length or self._default_max_length(data["train"], columns.text, tokenizer, limit)

        def tokenize(batch):
            texts = [str(t) if t is not None else "" for t in batch[columns.text]]
            # "length" (tokens per text) lets the recipe batch similar lengths together; the collator drops it.
            return tokenizer(texts, truncation=True, max_length=max_length, return_length=True)

        encoded = data.map(tokenize, batched=True)
        encoded = encoded.rename_column(columns.label, "labels") if columns.label != "labels" else encoded
        keep = set(tokenizer.model_input_names) | {"labels", "length"}
        encoded = encoded.remove_columns([c for c in encoded["train"].column_names if c not in keep])
        return encoded, {"max_seq_length": max_length}

    @staticmethod
    def _default_max_length(train: Dataset, column: str, tokenizer, limit: int) -> int:
        texts = train.select(range(min(LENGTH_SAMPLE, len(train))))[column]
        sample = [str(t) for t in texts if t is not None]
        lengths = [len(ids) for ids in tokenizer(sample, truncation=True, max_length=limit)["input_ids"]]
        # Round up to a multiple of 8 (tensor-core friendly), within the model's limit.
        length = min(limit, max(8, 8 * math.ceil(np.percentile(lengths, LENGTH_PERCENTILE) / 8)))
        logger.info(
            "max_seq_length=%d covers %d%% of training texts (set max_seq_length to override)",
            length,
            LENGTH_PERCENTILE,
        )
        return int(length)

    def collate_fn(self, processor: Any):
        pad = DataCollatorWithPadding(processor, pad_to_multiple_of=8)

        def collate(examples: list[dict]) -> dict:
            return pad([{k: v for k, v in e.items() if k != "length"} for e in examples])

        return collate


def _truncate_long_texts(data: DatasetDict, column: str) -> DatasetDict:
    """Texts cut to MAX_TEXT_CHARS before tokenizing: the model reads far fewer tokens, and tokenizing a
    multi-megabyte text whole takes gigabytes."""
    cut = sum(len(long_text_lengths(split, column)) for split in data.values())
    if not cut:
        return data
    logger.warning(
        "Truncated %d text(s) longer than %d characters to their first %d (the model reads at most "
        "max_seq_length tokens of each)",
        cut,
        MAX_TEXT_CHARS,
        MAX_TEXT_CHARS,
    )
    return data.map(
        lambda b: {column: [t[:MAX_TEXT_CHARS] if isinstance(t, str) else t for t in b[column]]}, batched=True
    )
