"""An independent re-scoring of a finished run's validation (or test) split with the reloaded adapter."""

from pathlib import Path

import torch
import torch.nn.functional as F

from finetune.config import TrainConfig
from finetune.inference import load_trained
from finetune.tasks import get_task


def eval_loss_of_reloaded(run: Path, split: str = "validation") -> float:
    """Mean per-example (classification) or per-token (causal LM) loss, as the trainer reports it."""
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    model, processor, info = load_trained(run)
    task = get_task(info["task"])
    raw, columns, _ = task.load_data(cfg)
    fixed = TrainConfig.from_dict(
        {**cfg.to_dict(), "block_size": info.get("block_size"), "max_seq_length": info.get("max_seq_length")}
    )
    data, _ = task.encode(fixed, raw, columns, processor, model)
    batch = task.collate_fn(processor)([data[split][i] for i in range(len(data[split]))])
    with torch.no_grad():
        if info["task"] == "causal-lm":
            logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
            return F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:]).item()
        labels = batch.pop("labels")
        return F.cross_entropy(model(**batch).logits, labels).item()
