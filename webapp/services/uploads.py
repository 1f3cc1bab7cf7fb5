"""Uploaded data: saved once under LORA_LAB_HOME/uploads, then read and checked by the engine's own loader.

Checking goes through finetune.data (the trainer's code path), so what passes here loads in the trainer,
and its messages (file, column, what was expected) reach the page unchanged.
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from finetune.errors import UserError
from webapp.services import workspace

ACCEPTED = {
    "causal-lm": ("txt", "csv", "jsonl", "json"),
    "text-classification": ("csv", "jsonl", "json"),
    "image-classification": ("zip",),
}
EXPECTED = {
    "causal-lm": "a .txt file (one document per line) or a .csv/.jsonl with a text column",
    "text-classification": "a .csv/.jsonl with a text column and a label column",
    "image-classification": "a .zip holding one sub-folder of images per class",
}


@dataclass
class DataReport:
    """What the engine made of a data file: its columns, the roles it guessed, classes and a preview."""

    path: Path
    num_examples: int
    column_names: list[str]
    text_column: Optional[str]
    label_column: Optional[str]
    image_column: Optional[str]
    labels: Optional[list[str]]
    label_counts: dict[str, int]
    preview: Any  # pandas DataFrame of the first rows (images left out)
    thumbnails: list[tuple[Any, str]] = field(default_factory=list)  # (PIL image, label) for image data


def save_upload(filename: str, data: bytes, task: str) -> Path:
    """Store an uploaded file (content-addressed, so re-uploads reuse it) after checking its kind."""
    suffix = Path(filename).suffix.lower().lstrip(".")
    if suffix not in ACCEPTED[task]:
        raise UserError(f"upload: {filename} is a .{suffix or '?'} file; expected {EXPECTED[task]}")
    if not data:
        raise UserError(f"upload: {filename} is empty; expected {EXPECTED[task]}")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name)
    path = workspace.uploads_dir() / hashlib.sha256(data).hexdigest()[:16] / safe
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def inspect_data(path: Path, task: str, text_column: Optional[str] = None, label_column: Optional[str] = None,
                 image_column: Optional[str] = None) -> DataReport:
    """Load ``path`` as the trainer will, resolving (or checking) the columns; UserError on any problem."""
    from finetune.data import Columns, load_splits, load_table

    given = Columns(text=text_column, label=label_column, image=image_column)
    workdir = Path(path).parent
    splits, columns, labels = load_splits(str(path), None, task, given, 10.0, 42, workdir)
    raw = load_table(path, "train_file", workdir)
    head = raw.select(range(min(10, len(raw))))
    report = DataReport(path=Path(path), num_examples=len(raw), column_names=raw.column_names,
                        text_column=columns.text, label_column=columns.label, image_column=columns.image,
                        labels=labels, label_counts=_label_counts(splits, columns.label, labels),
                        preview=head.remove_columns([c for c in [columns.image] if c]).to_pandas())
    names = getattr(raw.features.get(columns.label), "names", None)
    if names:  # imagefolder labels arrive as class ids
        report.preview[columns.label] = report.preview[columns.label].map(lambda i: names[i])
    if columns.image:
        train = splits["train"]
        report.thumbnails = [(train[i][columns.image], labels[train[i][columns.label]])
                             for i in range(min(8, len(train)))]
    return report


def _label_counts(splits, column: Optional[str], labels: Optional[list[str]]) -> dict[str, int]:
    if column is None:
        return {}
    counts = {name: 0 for name in labels}
    for split in splits.values():
        for value in split[column]:
            counts[labels[value]] += 1
    return counts
