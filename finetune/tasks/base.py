"""What every task provides to the training recipe, and the parts classification tasks share."""

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from transformers import PreTrainedModel

from finetune.config import TrainConfig
from finetune.data.loading import Columns, Unpacking, load_splits
from finetune.data.quality import log_findings
from finetune.errors import UserError
from finetune.task_kinds import TASKS, TaskKind
from finetune.training.lora import four_bit_loading, new_head_modules


class Task:
    """A training task: how to load the model and processor, encode data, and score predictions.

    Only the torch-side work lives here; the task's facts (name, columns, throughput unit, ...) are its entry in
    finetune.task_kinds, found by the module and class name that entry gives.
    """

    kind: TaskKind
    auto_model_class: Any

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # Base classes shared by several tasks (ClassificationTask) have no entry and no kind.
        for kind in TASKS.values():
            if (f"finetune.tasks.{kind.module}", kind.task_class) == (cls.__module__, cls.__name__):
                cls.kind = kind

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def unit(self) -> str:
        """What throughput counts: non-padding tokens of text, or images."""
        return self.kind.unit

    def load_processor(self, model_name_or_path: str) -> Any:
        raise NotImplementedError

    def model_kwargs(self, labels: Optional[list[str]], processor: Any) -> dict:
        """Extra from_pretrained arguments (label maps for classification heads)."""
        return {}

    def load_model(
        self, model_name_or_path: str, labels: Optional[list[str]], processor: Any, load_in_4bit: bool = False
    ) -> tuple[PreTrainedModel, list[str]]:
        """The model (its frozen base in 4-bit NF4 for QLoRA) and the names of its freshly initialised modules (which
        must be trained in full)."""
        quantization = four_bit_loading() if load_in_4bit else {}
        model, info = self.auto_model_class.from_pretrained(
            model_name_or_path, output_loading_info=True, **self.model_kwargs(labels, processor), **quantization
        )
        if getattr(model, "_hf_peft_config_loaded", False):
            # An adapter repo makes from_pretrained load the base model its adapter_config.json names, which can
            # be any folder on this machine: a hub id must not lead a user of a shared app into another's run.
            raise UserError(
                f"model_name_or_path: {model_name_or_path!r} holds a PEFT adapter (adapter_config.json), "
                "not a base checkpoint; give the base model's hub id or folder"
            )
        missing = list(info.get("missing_keys", [])) + [
            m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])
        ]
        return model, new_head_modules(model, missing)

    def load_data(self, cfg: TrainConfig, checks: bool = True) -> tuple[DatasetDict, Columns, Optional[list[str]]]:
        """Raw train/validation (and test) splits, the resolved columns and the class names (None without labels);
        ``checks``: run the data checks (finetune/data/quality.py) and log their warnings."""
        given = Columns(text=cfg.text_column, label=cfg.label_column, image=cfg.image_column)
        return load_splits(
            cfg.train_file,
            cfg.validation_file,
            self.name,
            given,
            cfg.validation_split_percentage,
            cfg.seed,
            Unpacking.from_config(cfg),
            max_eval_samples=cfg.max_eval_samples,
            test_file=cfg.test_file,
            report=log_findings if checks else None,
        )

    def encode(
        self, cfg: TrainConfig, data: DatasetDict, columns: Columns, processor: Any, model: PreTrainedModel
    ) -> tuple[DatasetDict, dict]:
        """Model inputs for train/validation and the data-derived settings it chose (e.g. max_seq_length)."""
        raise NotImplementedError

    def collate_fn(self, processor: Any):
        raise NotImplementedError

    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The loss a training step minimises: the model's own, computed from the batch's labels."""
        return model(**batch).loss

    def eval_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Per-example (or per-token) tensors to gather across processes for the metrics."""
        raise NotImplementedError

    def compute_metrics(self, gathered: dict[str, np.ndarray], num_labels: Optional[int]) -> dict:
        raise NotImplementedError


class ClassificationTask(Task):
    """Shared by text and image classification: a head over ``labels``, accuracy/F1 metrics."""

    def model_kwargs(self, labels: Optional[list[str]], processor: Any) -> dict:
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
            # The checkpoint's own head (e.g. ImageNet's 1000 classes) is replaced by a new one.
            "ignore_mismatched_sizes": True,
        }

    def eval_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        probabilities = logits.softmax(dim=-1)
        return {
            "loss": F.cross_entropy(logits, labels, reduction="none"),
            "predictions": logits.argmax(dim=-1),
            "scores": probabilities.max(dim=-1).values,
            "references": labels,
        }

    def compute_metrics(self, gathered: dict[str, np.ndarray], num_labels: Optional[int]) -> dict:
        from finetune.metrics import classification_metrics

        metrics = classification_metrics(gathered["predictions"], gathered["references"], num_labels=num_labels)
        return {"eval_loss": float(np.mean(gathered["loss"])), **metrics}
