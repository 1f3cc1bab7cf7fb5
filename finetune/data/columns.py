"""Which columns of a data set hold the texts, the images and the labels: given names checked, missing ones guessed.

The roles a task needs come from its TaskKind.columns; every guess is logged, and a column that cannot be guessed
raises a UserError naming the columns to pick from.
"""

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, Image, Value

from finetune.errors import UserError
from finetune.task_kinds import task_kind

logger = logging.getLogger(__name__)

TEXT_COLUMN_NAMES = ("text", "sentence", "content", "review", "document", "body", "prompt")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "intent")
IMAGE_COLUMN_NAMES = ("image", "img", "image_path", "path", "file", "filename", "filepath")
# Real tables have tens of columns; a 10,000-column CSV kept the loader busy for minutes.
MAX_COLUMNS = 1000
HEADER_BYTES = 4 * 2**20  # how much of a file's first line is read to count its columns
# What each role's column must hold, for messages that say what to pick.
EXPECTED_COLUMN = {
    "text": "a column of texts",
    "image": "a column of image file paths",
    "label": "a column of class names or integer ids (e.g. negative/positive or 0, 1, 2) that several rows share",
}
# Each role's column as a task's needs are listed ("text classification needs a text column and a label column").
ROLE_COLUMN = {
    "text": "a text column",
    "image": "an image column",
    "label": "a label column (class names or integer ids)",
}
# The label is guessed last: its guess skips the columns already taken by the text or the image.
GUESS_ORDER = ("text", "image", "label")
# Below this many rows a file may hold each class once; above it, a column whose every value differs is
# ids or free text rather than classes, so it is not guessed as the label (it can still be chosen).
DISTINCT_LABELS_MIN_ROWS = 20


@dataclass
class Columns:
    """The column roles resolved for a data set (None where the task has no such role)."""

    text: Optional[str] = None
    label: Optional[str] = None
    image: Optional[str] = None


def guess_columns(table: Dataset, task: str, given: Columns, role: str) -> Columns:
    """Resolve the column roles ``task`` needs (TaskKind.columns), checking given names and guessing missing ones."""
    kind, names = task_kind(task), table.column_names
    for column_role in ("text", "label", "image"):
        column = getattr(given, column_role)
        if column is not None and column not in names:
            raise UserError(
                f"{column!r} is not a column of {role}; its columns are {names}", field=f"{column_role}_column"
            )
    if len(kind.columns) > 1 and len(names) < 2:
        needs = " and ".join(ROLE_COLUMN[column_role] for column_role in kind.columns)
        raise UserError(f"{role}: this file has only one column, {names[0]}; {kind.title} needs {needs}")
    found = Columns(text=given.text, label=given.label, image=given.image)
    for column_role in GUESS_ORDER:
        if column_role in kind.columns and getattr(found, column_role) is None:
            setattr(found, column_role, guess_column(table, column_role, role, taken=found))
    return found


def guess_column(table: Dataset, column_role: str, role: str, taken: Optional[Columns] = None) -> str:
    """The column of ``table`` holding ``column_role`` ("text", "image" or "label"); a label is never a column
    ``taken`` holds for the text or the image. UserError naming the columns to pick from when none fits."""
    taken = taken or Columns()
    if column_role == "text":
        return _guess(table, TEXT_COLUMN_NAMES, _longest_string_column, "text", role, _string_columns(table))
    if column_role == "image":
        candidates = [n for n in table.column_names if isinstance(table.features[n], Image)] or _string_columns(table)
        return _guess(table, IMAGE_COLUMN_NAMES, _image_feature_column, "image", role, candidates)
    candidates = _label_candidates(table, exclude={taken.text, taken.image})
    return _guess(
        table,
        LABEL_COLUMN_NAMES,
        lambda t: _fewest_values_column(t, candidates),
        "label",
        role,
        candidates,
        taken=taken.text or taken.image,
    )


def _guess(
    table: Dataset, preferred: tuple, fallback, kind: str, role: str, candidates: list[str], taken: Optional[str] = None
) -> str:
    """The column named like ``preferred``, else ``fallback``'s pick; the error names only ``candidates``."""
    lowered = {name.lower(): name for name in table.column_names}
    column = next((lowered[n] for n in preferred if n in lowered), None) or fallback(table)
    if column is not None:
        logger.info("Guessed %s_column=%r for %s (set %s_column to override)", kind, column, role, kind)
        return column
    if not candidates:  # nothing to pick from: a whole-file problem, not a column choice
        besides = f" besides {taken!r}" if taken else ""
        raise UserError(
            f"{role}: no column{besides} can hold the {kind}s (its columns are {table.column_names}); "
            f"expected {EXPECTED_COLUMN[kind]}"
        )
    raise UserError(
        f"could not guess which column of {role} holds the {kind}s; expected {EXPECTED_COLUMN[kind]}; set "
        f"{kind}_column to one of {candidates}",
        field=f"{kind}_column",
    )


def _string_columns(table: Dataset) -> list[str]:
    return [
        name
        for name, feature in table.features.items()
        if getattr(feature, "dtype", None) in ("string", "large_string")
    ]


def _longest_string_column(table: Dataset) -> Optional[str]:
    sample = table.select(range(min(len(table), 200)))
    lengths = {name: sum(len(str(v)) for v in sample[name]) for name in _string_columns(table)}
    return max(lengths, key=lengths.get) if lengths else None


def _image_feature_column(table: Dataset) -> Optional[str]:
    return next((name for name, feature in table.features.items() if isinstance(feature, Image)), None)


def _label_candidates(table: Dataset, exclude: set) -> list[str]:
    """Columns that could hold class labels: names, integers, booleans or whole floats (not lists, images, 3.5)."""
    found = []
    for name, feature in table.features.items():
        if name in exclude or not isinstance(feature, (Value, ClassLabel)):
            continue
        fractional = feature.dtype.startswith("float") and not all(
            v is None or float(v).is_integer() for v in distinct(table, name)
        )
        if label_kind(feature) in ("text", "numbers", "true/false") and not fractional:
            found.append(name)
    return found


def _fewest_values_column(table: Dataset, candidates: list[str]) -> Optional[str]:
    counts = {name: len(distinct(table, name)) for name in candidates}
    if not counts:
        return None
    column = min(counts, key=counts.get)
    return None if counts[column] == len(table) >= DISTINCT_LABELS_MIN_ROWS else column


def label_kind(feature: Value) -> str:
    if feature.dtype.startswith(("int", "uint", "float")):
        return "numbers"
    return {"string": "text", "large_string": "text", "bool": "true/false"}.get(feature.dtype, feature.dtype)


def distinct(table: Dataset, column: str) -> list:
    # pyarrow's unique on the (index-mapped) column: Dataset.unique would rewrite a filtered table first.
    return pc.unique(table.with_format("arrow")[column]).to_pylist()


def check_column_count(path: Path, builder: str, role: str) -> None:
    """Refuse a .csv or .jsonl file whose first row has more than MAX_COLUMNS columns, before any loader reads it."""
    if builder not in ("csv", "json"):
        return
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline(HEADER_BYTES)
    if builder == "csv":
        count = len(next(csv.reader([first]), []))
    else:
        try:
            row = json.loads(first)
        except ValueError:
            return  # a .json array, or a broken line: the loader says what is wrong
        count = len(row) if isinstance(row, dict) else 0
    if count > MAX_COLUMNS:
        raise UserError(
            f"{role}: {path} has {count:,} columns; at most {MAX_COLUMNS:,} are read. Keep the text, label or "
            "image columns the run needs"
        )


def mixed_label_note(names: list[str], column: str) -> Optional[str]:
    """A warning when class names mix numbers and words (1, pos, 2.5): each distinct value becomes its own class,
    which is seldom meant (a column of scores with stray words, or two label schemes in one file)."""
    numbers = [name for name in names if _is_number(name)]
    words = [name for name in names if not _is_number(name)]
    if not numbers or not words:
        return None
    return (
        f"label column {column!r} mixes numbers ({', '.join(numbers[:3])}) and words ({', '.join(words[:3])}): "
        f"each distinct value is its own class, {len(names)} in all; if that is not meant, give every row the same "
        "kind of label"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
