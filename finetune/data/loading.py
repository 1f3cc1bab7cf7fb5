"""Loading user data files through `datasets` builders and making the eval split (columns: finetune/data/columns.py).

Formats: .txt (one example per line), .csv, .json/.jsonl, an image folder or .zip with one
sub-folder per class, or a .csv/.jsonl whose image column holds file paths (relative to the file).
Every problem with the data raises UserError naming the role, the file, the column and what was expected.
"""

import codecs
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset
from datasets.table import InMemoryTable

from finetune.data.archive import Limits, content_digest, unpack_zip
from finetune.data.columns import (
    Columns,
    check_column_count,
    distinct,
    guess_columns,
    label_kind,
    mixed_label_note,
)
from finetune.data.images import check_images
from finetune.data.quality import Finding, check_data, log_findings
from finetune.errors import UserError

logger = logging.getLogger(__name__)

TEXT_FORMATS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}
# Longest text one example may have (characters). Tokenizing one 50 MB line took 8.4 GB of memory;
# 100k characters is about 25k tokens (a few MB while tokenized), far beyond the 512-1024 tokens
# these models read at once, so text classification truncates there and causal LM cuts longer
# texts into pieces of this size.
MAX_TEXT_CHARS = 100_000
# The UTF-8 check reads this many bytes at a time: bounded memory, ~1 GB/s.
UTF8_CHUNK_BYTES = 4 * 2**20
# Largest .json array accepted: pyarrow parses it whole, at about 50x its size in memory (20 MiB -> ~1 GiB).
MAX_JSON_ARRAY_BYTES = 20 * 2**20


@dataclass(frozen=True)
class Unpacking:
    """Where .zip archives are unpacked (one folder per archive content) and how large they may grow; where the
    tables read are cached (None: datasets' own cache, HF_DATASETS_CACHE)."""

    root: Path = field(default_factory=lambda: default_unpack_root())
    limits: Limits = Limits()
    tables: Optional[Path] = None

    @classmethod
    def from_config(cls, cfg) -> "Unpacking":
        """With data_cache_dir set (a shared app sets it to the run's owner's folder), the tables are cached there too,
        so every cache a user's data makes is theirs: in their folder and their disk quota."""
        root = Path(cfg.data_cache_dir).expanduser() if cfg.data_cache_dir else default_unpack_root()
        limits = Limits(cfg.max_unpacked_mb * 2**20, cfg.max_compression_ratio, cfg.max_archive_members)
        return cls(root, limits, root / TABLES_CACHE if cfg.data_cache_dir else None)


TABLES_CACHE = "tables"  # in data_cache_dir: datasets' Arrow copies of the data files


def default_unpack_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "lora-lab" / "unpacked"


def load_table(path: str | Path, role: str, unpacking: Unpacking, max_rows: Optional[int] = None) -> Dataset:
    """Load one data file or folder as a Dataset; ``role`` (train_file/validation_file) names it in errors.

    ``max_rows`` reads only the first rows of a text file, streamed (to preview a large file); folders are read whole.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{role}: {path} does not exist; expected a .txt/.csv/.jsonl file, an image folder or a .zip")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{role}: {path} is empty; expected at least one example")
    if path.suffix.lower() == ".zip":
        path = unpack_zip(path, unpacking.root / content_digest(path), unpacking.limits, role)
    cache = str(unpacking.tables) if unpacking.tables else None
    if path.is_dir():
        return _load_image_folder(path, role, cache)
    builder = TEXT_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise UserError(
            f"{role}: {path.name} has an unsupported extension; expected one of .txt .csv .json .jsonl .zip or a folder"
        )
    check_column_count(path, builder, role)
    _check_utf8(path, role)
    _check_json_size(path, role)
    try:
        table = _read_head(builder, path, max_rows) if max_rows else _read_all(builder, path, cache)
    except Exception as err:  # datasets raises many types for malformed files
        raise _read_error(builder, path, role, err) from err
    if len(table) == 0:
        raise _no_examples(path, role)
    return table


def _read_all(builder: str, path: Path, cache: Optional[str]) -> Dataset:
    return load_dataset(builder, data_files={"data": str(path)}, split="data", cache_dir=cache)


def _read_head(builder: str, path: Path, rows: int) -> Dataset:
    """The first ``rows`` rows, streamed: only the builder's first chunks of the file are read."""
    stream = load_dataset(builder, data_files={"data": str(path)}, split="data", streaming=True)
    first = next(stream.with_format("arrow").iter(batch_size=rows), None)
    return Dataset(InMemoryTable(first)) if first is not None else Dataset.from_dict({})


def _read_error(builder: str, path: Path, role: str, err: Exception) -> UserError:
    # A CSV header without rows makes the builder fail ("corresponds to no data"); streaming reads it as empty.
    try:
        empty = len(_read_head(builder, path, 1)) == 0
    except Exception:  # broken beyond being empty: the original error tells more
        empty = False
    if empty:
        return _no_examples(path, role)
    cause = err
    while cause.__cause__ is not None:  # datasets wraps the parser's own, more telling error
        cause = cause.__cause__
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(cause))
    if builder == "csv" and fields:  # pandas' tokenizer: a row with more fields than the header
        expected, line, saw = fields.groups()
        return UserError(
            f"{role}: {path} line {line} has {saw} fields where its header has {expected}; expected every row to have "
            'the header\'s columns (put a text that holds commas in double quotes: "great, really")'
        )
    return UserError(f"{role}: could not read {path} as {builder} ({type(cause).__name__}: {str(cause).strip()})")


def _no_examples(path: Path, role: str) -> UserError:
    return UserError(f"{role}: {path} holds no examples (a header line at most); expected at least one row of data")


def _check_utf8(path: Path, role: str) -> None:
    """Refuse a file that is not UTF-8, naming the line and byte offset of the first bad byte.

    Fixed-size chunks through an incremental decoder: memory stays bounded even for a file with no line break.
    """
    decoder, offset, line = codecs.getincrementaldecoder("utf-8")(), 0, 1
    hint = " (Excel: Save As 'CSV UTF-8')" if path.suffix.lower() == ".csv" else ""
    with path.open("rb") as f:
        while True:
            chunk = f.read(UTF8_CHUNK_BYTES)
            pending = decoder.getstate()[0]  # the start of a character cut by the last chunk's end
            data = pending + chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                line += data.count(b"\n", 0, err.start)
                near = data[max(data.rfind(b"\n", 0, err.start) + 1, err.start - 30) : err.start + 10].split(b"\n")[0]
                raise UserError(
                    f"{role}: {path} is not UTF-8 text: line {line} (byte offset "
                    f"{offset - len(pending) + err.start}) holds byte 0x{data[err.start]:02x}, near "
                    f"{near.decode('utf-8', 'replace')!r}; save it as UTF-8{hint}"
                ) from None
            if not chunk:
                return
            offset += len(chunk)
            line += chunk.count(b"\n")


def _check_json_size(path: Path, role: str) -> None:
    """A .json array is parsed whole (about 50 times its size in memory): only small ones are accepted."""
    if path.suffix.lower() != ".json" or path.stat().st_size <= MAX_JSON_ARRAY_BYTES:
        return
    with path.open("rb") as f:
        start = f.read(4096).lstrip()[:1]
    if start == b"[":
        raise UserError(
            f"{role}: {path} is a JSON array of {path.stat().st_size / 2**20:.0f} MiB; arrays over "
            f"{MAX_JSON_ARRAY_BYTES // 2**20} MiB are read whole into memory, so save it as JSON lines "
            "(.jsonl: one object per line)"
        )


def _load_image_folder(path: Path, role: str, cache: Optional[str]) -> Dataset:
    class_dirs = [d for d in path.rglob("*") if d.is_dir()]
    if not class_dirs:
        raise UserError(f"{role}: folder {path} has no sub-folders; expected one sub-folder of images per class")
    try:
        table = load_dataset("imagefolder", data_dir=str(path), split="train", cache_dir=cache)
    except Exception as err:
        raise UserError(f"{role}: could not read images under {path} ({type(err).__name__}: {err})") from err
    if len(table) == 0:
        raise UserError(f"{role}: folder {path} holds no images; expected .png/.jpg files in one sub-folder per class")
    if "label" not in table.column_names:  # datasets names classes by folder, and drops a lone one
        raise UserError(
            f"{role}: {path} holds images of one class only; image classification needs one sub-folder of images "
            "per class, at least 2 (e.g. cats/ and dogs/)"
        )
    return table


def long_text_lengths(table: Dataset, column: str) -> list[int]:
    """Lengths (characters) of the texts in ``column`` longer than MAX_TEXT_CHARS, measured in arrow batches."""
    found = []
    for batch in table.select_columns([column]).with_format("arrow").iter(batch_size=10_000):
        lengths = pc.utf8_length(batch[column].cast(pa.large_string()))
        found += pc.filter(lengths, pc.greater(lengths, MAX_TEXT_CHARS)).to_pylist()
    return found


def load_splits(
    train_file: str,
    validation_file: Optional[str],
    task: str,
    given: Columns,
    percentage: float,
    seed: int,
    unpacking: Unpacking,
    max_eval_samples: Optional[int] = None,
    test_file: Optional[str] = None,
    report: Optional[Callable[[list[Finding]], None]] = log_findings,
) -> tuple[DatasetDict, Columns, Optional[list[str]]]:
    """Train/validation splits (and a test split with ``test_file``), resolved columns and (for classification) the
    class names.

    Without validation_file, ``percentage`` % of train is held out with ``seed``; a validation split larger
    than ``max_eval_samples`` is then cut to that many examples, drawn with ``seed``. The test split is scored whole.
    """
    files = {"train_file": train_file, "validation_file": validation_file, "test_file": test_file}
    tables = {role: load_table(path, role, unpacking) for role, path in files.items() if path}
    return prepare_splits(tables, files, task, given, percentage, seed, max_eval_samples, report)


def prepare_splits(
    tables: dict[str, Dataset],
    files: dict[str, Optional[str]],
    task: str,
    given: Columns,
    percentage: float,
    seed: int,
    max_eval_samples: Optional[int] = None,
    report: Optional[Callable[[list[Finding]], None]] = log_findings,
) -> tuple[DatasetDict, Columns, Optional[list[str]]]:
    """load_splits on tables already read, keyed by role (``files`` names their sources): every check and cast.
    The data checks' warnings (finetune/data/quality.py) go to ``report``: by default logged, into train.log; None
    skips them (a run's other processes: the main one reports)."""
    raw, columns = tables, guess_columns(tables["train_file"], task, given, "train_file")
    for role in ("validation_file", "test_file"):
        if role in tables:
            guess_columns(tables[role], task, columns, role)
    if columns.text is not None:
        tables = {role: _drop_empty_texts(t, columns.text, files[role], role) for role, t in tables.items()}
    if columns.image is not None:
        tables = {role: check_images(t, columns.image, files[role], role) for role, t in tables.items()}
    labels = None
    if columns.label is not None:
        tables, labels = _to_class_labels(tables, columns.label, files)
        note = mixed_label_note(labels, columns.label)
        if note:
            logger.warning(note)
    if report is not None:
        report(check_data(raw, tables, columns, labels))
    splits = split_train_eval(tables["train_file"], tables.get("validation_file"), percentage, seed, columns.label)
    splits["validation"] = _cap_eval(splits["validation"], max_eval_samples, seed, columns.label)
    if "test_file" in tables:
        splits["test"] = tables["test_file"]
    return splits, columns, labels


def _drop_empty_texts(table: Dataset, column: str, source: str, role: str) -> Dataset:
    """The text column as strings, without rows whose text is missing or blank; UserError when none is left."""
    if table.features[column] not in (Value("string"), Value("large_string")):
        table = table.cast_column(column, Value("string"))
    filled = pc.match_substring_regex(table.with_format("arrow")[column], r"\S")
    keep = np.flatnonzero(pc.fill_null(filled, False).to_numpy())
    if len(keep) == 0:
        raise UserError(
            f"{role}: text column {column!r} of {source} is empty in every row; expected a text in each example"
        )
    if len(keep) < len(table):
        logger.warning(
            "%s: dropped %d of %d examples whose text column %r is empty",
            role,
            len(table) - len(keep),
            len(table),
            column,
        )
        table = table.select(keep)
    return table


def split_train_eval(
    train: Dataset, validation: Optional[Dataset], percentage: float, seed: int, stratify: Optional[str] = None
) -> DatasetDict:
    """Use the given validation set or hold out ``percentage`` % of train, reproducibly from ``seed``."""
    if validation is not None:
        return DatasetDict(train=train, validation=validation)
    if len(train) < 2:
        raise UserError(f"train_file: has {len(train)} example; need at least 2 to hold out a validation split")
    test_size = max(1, round(len(train) * percentage / 100))
    parts = train.train_test_split(
        test_size=test_size, seed=seed, stratify_by_column=_stratify(train, stratify, test_size)
    )
    return DatasetDict(train=parts["train"], validation=parts["test"])


def _cap_eval(validation: Dataset, max_examples: Optional[int], seed: int, label: Optional[str]) -> Dataset:
    """At most ``max_examples`` of the validation split, drawn with ``seed``: evaluation must not dominate a run."""
    if max_examples is None or len(validation) <= max_examples:
        return validation
    kept = validation.train_test_split(
        test_size=max_examples, seed=seed, stratify_by_column=_stratify(validation, label, max_examples)
    )["test"]
    logger.info("Evaluating on %d of %d held-out examples (max_eval_samples)", len(kept), len(validation))
    return kept


def _stratify(table: Dataset, column: Optional[str], test_size: int) -> Optional[str]:
    """``column`` where datasets can stratify a split of ``test_size`` rows: 2+ examples and room for every class."""
    if column is None:
        return None
    counts = np.bincount(np.asarray(table.with_format("numpy")[column]))
    counts = counts[counts > 0]
    fits = min(test_size, len(table) - test_size) >= len(counts)
    return column if fits and counts.min() >= 2 else None


def _to_class_labels(tables: dict[str, Dataset], column: str, files: dict) -> tuple[dict[str, Dataset], list[str]]:
    """Labels as class ids 0..n-1 shared by every split; the names are the original values as text, numbers in
    numeric order (labels 1-5 become ids 0-4 named '1'..'5'; whole floats like 2.0 are named '2')."""
    feature = tables["train_file"].features[column]
    if isinstance(feature, ClassLabel):  # image folders: one class per sub-folder
        names = list(feature.names)
    else:
        values = {role: _label_values(table, column, files[role], role) for role, table in tables.items()}
        kinds = {role: label_kind(table.features[column]) for role, table in tables.items()}
        other = next((role for role, kind in kinds.items() if kind != kinds["train_file"]), None)
        if other:
            raise UserError(
                f"{other}: label column {column!r} of {files[other]} holds {kinds[other]} but train_file holds "
                f"{kinds['train_file']}; expected the same class names in both"
            )
        keys = sorted({_label_key(v) for found in values.values() for v in found})
        names, ids = [str(key) for key in keys], {key: i for i, key in enumerate(keys)}
        features = {role: Features({**t.features, column: ClassLabel(names=names)}) for role, t in tables.items()}
        tables = {
            role: t.map(
                lambda b: {column: [ids[_label_key(v)] for v in b[column]]}, batched=True, features=features[role]
            )
            for role, t in tables.items()
        }
    present = distinct(tables["train_file"], column)
    if len(present) < 2:
        only = names[present[0]] if present else None
        raise UserError(
            f"train_file: label column {column!r} of {files['train_file']} has a single class ({only!r}); "
            "classification needs at least 2 classes"
        )
    return tables, names


def _label_values(table: Dataset, column: str, source: str, role: str) -> list:
    """The distinct labels of one file, after checking each is a class name or a whole number."""
    where = f"{role}: label column {column!r} of {source}"
    feature = table.features[column]
    if not isinstance(feature, Value):  # JSON lines mixing kinds (1 and "a") or holding lists
        first_of_kind = {}
        for value in table.select(range(min(len(table), 1000)))[column]:
            first_of_kind.setdefault(type(value).__name__, value)
        found = " and ".join(f"{kind} values like {v!r}" for kind, v in list(first_of_kind.items())[:3])
        raise UserError(f"{where} holds {found}; expected one kind of label in every row: class names or integer ids")
    values = distinct(table, column)
    if None in values or any(isinstance(v, str) and not v.strip() for v in values):
        raise UserError(f"{where} has empty values; every example needs a label")
    if label_kind(feature) not in ("text", "numbers", "true/false"):
        raise UserError(f"{where} holds {feature.dtype} values; expected class names or integer ids")
    fractional = [v for v in values if isinstance(v, float) and not v.is_integer()]
    if fractional:
        raise UserError(
            f"{where} holds numbers like {fractional[0]}; classification needs class names or integer "
            "ids (whole numbers such as 0, 1, 2)"
        )
    return values


def label_name(value) -> str:
    """The class name training gave a raw label value (evaluation maps new data's labels the same way)."""
    return str(_label_key(value))


def _label_key(value):
    """The class a label value stands for: whole floats (a column of 1.0, 2.0) are the integer ids 1, 2."""
    return int(value) if isinstance(value, float) else value
