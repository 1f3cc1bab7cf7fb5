"""Loading user data files through `datasets` builders, guessing columns and making the eval split.

Formats: .txt (one example per line), .csv, .json/.jsonl, an image folder or .zip with one
sub-folder per class, or a .csv/.jsonl whose image column holds file paths (relative to the file).
Every problem with the data raises UserError naming the file, the column and what was expected.
"""

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset
from PIL import Image as PILImage

from finetune.archive import Limits, content_digest, unpack_zip
from finetune.errors import UserError

logger = logging.getLogger(__name__)

TEXT_FORMATS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}
TEXT_COLUMN_NAMES = ("text", "sentence", "content", "review", "document", "body", "prompt")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "intent")
IMAGE_COLUMN_NAMES = ("image", "img", "image_path", "path", "file", "filename", "filepath")


@dataclass
class Columns:
    """The column roles resolved for a data set (None where the task has no such role)."""

    text: Optional[str] = None
    label: Optional[str] = None
    image: Optional[str] = None


@dataclass(frozen=True)
class Unpacking:
    """Where .zip archives are unpacked (one folder per archive content) and how large they may grow."""

    root: Path = field(default_factory=lambda: default_unpack_root())
    limits: Limits = Limits()

    @classmethod
    def from_config(cls, cfg) -> "Unpacking":
        root = Path(cfg.data_cache_dir).expanduser() if cfg.data_cache_dir else default_unpack_root()
        return cls(root, Limits(cfg.max_unpacked_mb * 2**20, cfg.max_compression_ratio))


def default_unpack_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "lora-lab" / "unpacked"


def load_table(path: str | Path, role: str, unpacking: Unpacking) -> Dataset:
    """Load one data file or folder as a Dataset; ``role`` (train_file/validation_file) names it in errors."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{role}: {path} does not exist; expected a .txt/.csv/.jsonl file, an image folder or a .zip")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{role}: {path} is empty; expected at least one example")
    if path.suffix.lower() == ".zip":
        path = unpack_zip(path, unpacking.root / content_digest(path), unpacking.limits, role)
    if path.is_dir():
        return _load_image_folder(path, role)
    builder = TEXT_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"{role}: {path.name} has an unsupported extension; expected one of .txt .csv .json .jsonl .zip or a folder")
    try:
        table = load_dataset(builder, data_files={"data": str(path)}, split="data")
    except Exception as err:  # datasets raises many types for malformed files
        raise UserError(f"{role}: could not read {path} as {builder} ({type(err).__name__}: {err})") from err
    if len(table) == 0:
        raise UserError(f"{role}: {path} holds no examples")
    return table


def _load_image_folder(path: Path, role: str) -> Dataset:
    class_dirs = [d for d in path.rglob("*") if d.is_dir()]
    if not class_dirs:
        raise UserError(f"{role}: folder {path} has no sub-folders; expected one sub-folder of images per class")
    try:
        table = load_dataset("imagefolder", data_dir=str(path), split="train")
    except Exception as err:
        raise UserError(f"{role}: could not read images under {path} ({type(err).__name__}: {err})") from err
    if len(table) == 0:
        raise UserError(f"{role}: folder {path} holds no images; expected .png/.jpg files in one sub-folder per class")
    return table


def guess_columns(table: Dataset, task: str, given: Columns, role: str) -> Columns:
    """Resolve the text/label/image columns, checking given names and guessing missing ones."""
    names = table.column_names
    for kind in ("text", "label", "image"):
        column = getattr(given, kind)
        if column is not None and column not in names:
            raise UserError(f"{kind}_column: {column!r} is not a column of {role}; its columns are {names}")
    text = given.text
    if task in ("causal-lm", "text-classification") and text is None:
        text = _guess(table, TEXT_COLUMN_NAMES, _longest_string_column, "text", role)
    image = given.image
    if task == "image-classification" and image is None:
        image = _guess(table, IMAGE_COLUMN_NAMES, _image_feature_column, "image", role)
    label = given.label
    if task != "causal-lm" and label is None:
        label = _guess(table, LABEL_COLUMN_NAMES, lambda t: _fewest_values_column(t, exclude={text, image}), "label", role)
    return Columns(text=text, label=label, image=image)


def _guess(table: Dataset, preferred: tuple, fallback, kind: str, role: str) -> str:
    lowered = {name.lower(): name for name in table.column_names}
    column = next((lowered[n] for n in preferred if n in lowered), None) or fallback(table)
    if column is None:
        raise UserError(f"{kind}_column: could not guess which column of {role} holds the {kind}; "
                        f"set {kind}_column to one of {table.column_names}")
    logger.info("Guessed %s_column=%r for %s (set %s_column to override)", kind, column, role, kind)
    return column


def _longest_string_column(table: Dataset) -> Optional[str]:
    sample = table.select(range(min(len(table), 200)))
    lengths = {name: sum(len(str(v)) for v in sample[name]) for name, feature in table.features.items()
               if getattr(feature, "dtype", None) in ("string", "large_string")}
    return max(lengths, key=lengths.get) if lengths else None


def _image_feature_column(table: Dataset) -> Optional[str]:
    return next((name for name, feature in table.features.items() if isinstance(feature, Image)), None)


def _fewest_values_column(table: Dataset, exclude: set) -> Optional[str]:
    counts = {name: len(set(table[name])) for name in table.column_names
              if name not in exclude and not isinstance(table.features[name], Image)}
    return min(counts, key=counts.get) if counts else None


def check_images(table: Dataset, column: str, source: str, role: str) -> Dataset:
    """Image column as decodable images: paths resolved against the data file's folder, every file opened once."""
    if not isinstance(table.features[column], Image):
        base = Path(source).parent

        def resolve(batch):
            return {column: [str(p) if Path(p).is_absolute() else str(base / p) for p in batch[column]]}

        table = table.map(resolve, batched=True)
    raw = table.cast_column(column, Image(decode=False))
    bad = []
    for index, item in enumerate(raw[column]):
        try:
            with PILImage.open(item["path"] if item.get("bytes") is None else io.BytesIO(item["bytes"])) as image:
                image.verify()
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
            bad.append(f"{item.get('path') or f'row {index}'} ({type(err).__name__})")
    if bad:
        raise UserError(f"{role}: {len(bad)} image(s) in column {column!r} cannot be read: {', '.join(bad[:5])}"
                        f"{' ...' if len(bad) > 5 else ''}; expected readable .png/.jpg/.bmp/.gif/.webp files")
    return table.cast_column(column, Image())


def load_splits(train_file: str, validation_file: Optional[str], task: str, given: Columns, percentage: float,
                seed: int, unpacking: Unpacking) -> tuple[DatasetDict, Columns, Optional[list[str]]]:
    """Train/validation splits, resolved columns and (for classification) the class names."""
    train = load_table(train_file, "train_file", unpacking)
    validation = load_table(validation_file, "validation_file", unpacking) if validation_file else None
    columns = guess_columns(train, task, given, "train_file")
    if validation is not None:
        guess_columns(validation, task, columns, "validation_file")
    if columns.image is not None:
        train = check_images(train, columns.image, train_file, "train_file")
        validation = validation and check_images(validation, columns.image, validation_file, "validation_file")
    labels = None
    if columns.label is not None:
        train, validation, labels = _to_class_labels(train, validation, columns.label)
    return split_train_eval(train, validation, percentage, seed, columns.label), columns, labels


def split_train_eval(train: Dataset, validation: Optional[Dataset], percentage: float, seed: int,
                     stratify: Optional[str] = None) -> DatasetDict:
    """Use the given validation set or hold out ``percentage`` % of train, reproducibly from ``seed``."""
    if validation is not None:
        return DatasetDict(train=train, validation=validation)
    if len(train) < 2:
        raise UserError(f"train_file: has {len(train)} example; need at least 2 to hold out a validation split")
    test_size = max(1, round(len(train) * percentage / 100))
    can_stratify = stratify is not None and test_size >= train.features[stratify].num_classes
    parts = train.train_test_split(test_size=test_size, seed=seed, stratify_by_column=stratify if can_stratify else None)
    return DatasetDict(train=parts["train"], validation=parts["test"])


def _to_class_labels(train: Dataset, validation: Optional[Dataset], column: str):
    """Cast string or integer labels to a ClassLabel shared by both splits; returns (train, validation, names)."""
    tables = [t for t in (train, validation) if t is not None]
    if isinstance(train.features[column], ClassLabel):
        names = list(train.features[column].names)
    else:
        values = set().union(*(set(t[column]) for t in tables))
        if None in values or "" in values:
            raise UserError(f"label_column: {column!r} has empty values; every example needs a label")
        # Integers sort numerically (2 before 10), anything else as text.
        names = [str(v) for v in sorted(values, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))]
        feature = ClassLabel(names=names)
        tables = [t.map(lambda b: {column: [str(v) for v in b[column]]}, batched=True).cast_column(column, feature)
                  for t in tables]
    present = set(tables[0][column])
    if len(present) < 2:
        only = names[next(iter(present))] if present else None
        raise UserError(f"label_column: {column!r} has a single class ({only!r}) in train_file; "
                        "classification needs at least 2 classes")
    return tables[0], tables[1] if len(tables) > 1 else None, names
