"""Image classification (ViT, ResNet): one label per image, pixels prepared by the checkpoint's processor."""

from typing import Any

import torch
from datasets import DatasetDict
from transformers import AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from finetune.config import TrainConfig
from finetune.data.loading import Columns
from finetune.tasks.base import ClassificationTask


class ImageClassificationTask(ClassificationTask):
    auto_model_class = AutoModelForImageClassification

    def load_processor(self, model_name_or_path: str) -> Any:
        return AutoImageProcessor.from_pretrained(model_name_or_path)

    def encode(
        self, cfg: TrainConfig, data: DatasetDict, columns: Columns, processor: Any, model: PreTrainedModel
    ) -> tuple[DatasetDict, dict]:
        image_column, label_column = columns.image, columns.label

        def transform(batch):
            # Decoding and resizing on the fly keeps memory flat however many images there are.
            images = [image.convert("RGB") for image in batch[image_column]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixels, "labels": batch[label_column]}

        encoded = data.select_columns([image_column, label_column])
        encoded.set_transform(transform)
        return encoded, {}

    def collate_fn(self, processor: Any):
        return collate_images


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples]),
    }
