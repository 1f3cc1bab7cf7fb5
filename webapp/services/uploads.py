"""Uploaded data: saved once under LORA_LAB_HOME/uploads, then read and checked by the engine's own loader.

Checking goes through finetune.data.loading (the trainer's code path), so what passes here loads in the trainer,
and its messages (file, column, what was expected) reach the page unchanged.
"""

import hashlib
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from finetune.data.archive import unpack_zip
from finetune.errors import UserError
from finetune.export.model_card import DATA_NAME_FILE
from finetune.rundir import read_json, write_bytes_atomic, write_json_atomic
from finetune.task_kinds import task_kind
from webapp.services import quotas, settings, workspace
from webapp.services.identity import User

if TYPE_CHECKING:  # the data layer imports `datasets` (~0.6 s): only where data is read, never on a page load
    from finetune.data.quality import Finding


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
    sampled: bool = False  # True when only the first SAMPLE_ROWS rows of a large file were read and checked
    file_bytes: Optional[int] = None  # size of a data file (None for a folder of images)
    # Warnings on data that loads but may not be what was meant: the data checks (finetune/data/quality.py) and more.
    findings: list["Finding"] = field(default_factory=list)


def save_upload(user: User, filename: str, data: bytes, task: str) -> Path:
    """Store an upload in ``user``'s folder; returns the path the trainer reads (a .zip comes back unpacked).

    Everything lives in uploads/<content hash>/ under names chosen here (``upload.<ext>``, ``unpacked/``);
    the user's file name picks the extension and is kept in NAME_FILE for messages (``shown``). The same content
    is stored and unpacked once.
    """
    suffix, kind = Path(filename).suffix.lower().lstrip("."), task_kind(task)
    if suffix not in kind.uploads:
        raise UserError(f"upload: {filename} is a .{suffix or '?'} file; expected {kind.expected_upload}")
    if not data:
        raise UserError(f"upload: {filename} is empty; expected {kind.expected_upload}")
    limits = settings.load()
    folder = workspace.uploads_dir(user.key) / hashlib.sha256(data).hexdigest()[:16]
    path = folder / f"upload.{suffix}"
    if not path.is_file():
        quotas.check_upload(user, limits, len(data))
        workspace.register(user.key, user.name)
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
    write_json_atomic(folder / NAME_FILE, {"name": Path(filename).name})
    if suffix == "zip":
        try:
            return unpack_zip(path, folder / "unpacked", limits.archive_limits, "upload", Path(filename).name)
        except UserError:
            shutil.rmtree(folder, ignore_errors=True)  # a refused archive leaves nothing behind
            raise
    return path


def earlier_uploads(user: User, task: str) -> list[tuple[str, Path]]:
    """``user``'s stored uploads that ``task`` can read, newest first, as (the name the user gave, the path the
    trainer reads): the file itself, or an archive's unpacked folder."""
    kind, found = task_kind(task), []
    root = workspace.uploads_dir(user.key)
    for folder in root.iterdir() if root.is_dir() else []:
        unpacked = folder / "unpacked"
        stored = [unpacked] if unpacked.is_dir() else sorted(folder.glob("upload.*"))
        if stored and ("zip" if stored[0].is_dir() else stored[0].suffix.lstrip(".")) in kind.uploads:
            name = (read_json(folder / NAME_FILE) or {}).get("name") or folder.name
            found.append((folder.stat().st_mtime, str(name), stored[0]))
    return [(name, path) for _, name, path in sorted(found, key=lambda item: -item[0])]


NAME_FILE = DATA_NAME_FILE  # {"name": the file name the user gave}, in each upload's folder (model cards read it)
# An upload's stored file or unpacked folder, and what follows it (a member's path), in a message.
UPLOAD_PATH = re.compile(r"(?P<folder>/\S*?/uploads/[0-9a-f]{16})/(upload\.[a-z]+|unpacked)(?P<rest>[^\s'\",;:)]*)")


def shown(text: str, shared: bool) -> str:
    """``text`` (a message) as its reader should see it: each upload named by the name its user gave, and on a shared
    app no path of this server (LORA_LAB_HOME's folders are named from inside it)."""

    def named(match: re.Match) -> str:
        record = read_json(Path(match["folder"]) / NAME_FILE) or {}
        return str(record.get("name") or "your upload") + match["rest"]

    text = UPLOAD_PATH.sub(named, text)
    if shared:
        text = text.replace(str(workspace.home()) + "/", "").replace(str(workspace.REPO) + "/", "")
    return text


# A text file larger than this (bytes) is previewed from its first SAMPLE_ROWS rows: reading a 300 MB
# CSV whole blocked the page for 90-150 s, while its first rows show the columns, classes and problems.
SAMPLE_ABOVE_BYTES = 20 * 2**20
SAMPLE_ROWS = 5_000
THUMBNAIL_PIXELS = 144  # longest side of a preview thumbnail (shown at 72 px, sharp on high-DPI screens)


def inspect_data(
    path: Path,
    task: str,
    text_column: Optional[str] = None,
    label_column: Optional[str] = None,
    image_column: Optional[str] = None,
) -> DataReport:
    """Load ``path`` as the trainer will, resolving (or checking) the columns; UserError on any problem.

    A text file over SAMPLE_ABOVE_BYTES is judged by its first SAMPLE_ROWS rows (``sampled``); folders are read whole.
    """
    from finetune.data.columns import Columns, mixed_label_note
    from finetune.data.loading import prepare_splits
    from finetune.data.quality import Finding

    path = Path(path)
    given = Columns(text=text_column, label=label_column, image=image_column)
    raw, head = _read(path, "train_file")
    findings: list["Finding"] = []
    splits, columns, labels = prepare_splits(
        {"train_file": raw}, {"train_file": str(path)}, task, given, 10.0, 42, report=findings.extend
    )
    first = raw.select(range(min(10, len(raw))))
    report = DataReport(
        path=path,
        num_examples=len(raw),
        column_names=raw.column_names,
        text_column=columns.text,
        label_column=columns.label,
        image_column=columns.image,
        labels=labels,
        label_counts=_label_counts(splits, columns.label, labels),
        preview=first.remove_columns([c for c in [columns.image] if c]).to_pandas(),
        sampled=head and len(raw) == SAMPLE_ROWS,
        file_bytes=path.stat().st_size if path.is_file() else None,
        findings=[
            Finding("Mixed labels", note) for note in [labels and mixed_label_note(labels, columns.label)] if note
        ]
        + findings,
    )
    _add_pictures(report, raw, splits, columns, labels)
    return report


def _read(path: Path, role: str):
    """``path`` loaded as the trainer reads it, and whether only its first SAMPLE_ROWS rows were (a large text file)."""
    from finetune.data.loading import TEXT_FORMATS, Unpacking, load_table

    # Zips reach here unpacked (save_upload); a zip path itself unpacks beside it, in its owner's folder, where the
    # tables read are cached too: counted in their quota, removed with the upload.
    folder = path.parent
    unpacking = Unpacking(folder / "unpacked-archives", settings.load().archive_limits, folder / "tables")
    size = path.stat().st_size if path.is_file() else None
    head = size is not None and size > SAMPLE_ABOVE_BYTES and path.suffix.lower() in TEXT_FORMATS
    return load_table(path, role, unpacking, max_rows=SAMPLE_ROWS if head else None), head


def held_out_leaks(train: Path, held_out: Path, role: str, columns: dict[str, Optional[str]]) -> list["Finding"]:
    """Examples of the ``role`` file (validation_file, test_file) that are also in the training file: the data check's
    duplicates across files, on both files as the trainer reads them (``columns``: their resolved column roles)."""
    from finetune.data.columns import Columns
    from finetune.data.images import check_images
    from finetune.data.quality import leaks, read_samples

    given = Columns(**{key.removesuffix("_column"): value for key, value in columns.items()})
    tables = {"train_file": _read(Path(train), "train_file")[0], role: _read(Path(held_out), role)[0]}
    if given.text is None:  # image paths resolved and every image checked, as prepare_splits does
        sources = {"train_file": train, role: held_out}
        tables = {key: check_images(t, given.image, str(sources[key]), key) for key, t in tables.items()}
    return leaks(read_samples(tables, given))


def _add_pictures(report: DataReport, raw, splits, columns, labels: Optional[list[str]]) -> None:
    """Class names in the preview where the loader gave class ids, and thumbnails of the first training images."""
    names = getattr(raw.features.get(columns.label), "names", None)
    if names:  # imagefolder labels arrive as class ids
        report.preview[columns.label] = report.preview[columns.label].map(lambda i: names[i])
    if columns.image:
        train = splits["train"]
        report.thumbnails = [
            (_thumbnail(train[i][columns.image]), labels[train[i][columns.label]]) for i in range(min(8, len(train)))
        ]


def _thumbnail(image: Any) -> Any:
    """A small copy: reports are cached per session, full-size photos would pin megabytes each."""
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    return small


def _label_counts(splits, column: Optional[str], labels: Optional[list[str]]) -> dict[str, int]:
    """Examples per class over both splits (class ids index ``labels``)."""
    if column is None:
        return {}
    counts = Counter(i for split in splits.values() for i in split[column])
    return {name: counts[i] for i, name in enumerate(labels)}
