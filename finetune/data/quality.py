"""Checks of the data before a model sees it: duplicates across splits, class imbalance, empty or very short texts,
suspected label errors and images of very different sizes.

Each finding is a warning with counts and examples; the data is never changed here. prepare_splits runs the checks
at a run's start (logged to train.log) and the New run page's preview shows them. Large files are sampled so the
checks stay within seconds, and a finding says when it ran on a sample.
"""

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Image
from PIL import Image as PILImage

from finetune.data.columns import Columns
from finetune.data.images import DECODE_THREADS

logger = logging.getLogger(__name__)

# Texts hashed per file for duplicates: ~1 s per million tweet-length texts; a larger file is sampled.
TEXT_ROWS = 1_000_000
# Rows the label-error probe learns from: 5-fold TF-IDF (words) + logistic regression on 4,000-5,000 tweets took
# 4-18 s on 2 busy cores (word pairs as well: 57 s, no better at finding flipped labels).
PROBE_ROWS = 5_000
PROBE_FOLDS = 5
PROBE_MIN_ROWS = 50  # below this the probe's folds learn too little to doubt any label
PROBE_MIN_CLASS = PROBE_FOLDS  # a class with fewer rows stays out of the probe: every fold must hold it
# Images decoded per file (hash, size, pixels for the probe), and the seconds all files may take together: decoding
# a 1-megapixel JPEG takes ~10 ms, so 5,000 photos fit in ~25 s on 2 cores. Images left out are counted.
IMAGE_ROWS = 5_000
IMAGE_BUDGET_S = 30.0
NEAR_BITS = 4  # 64-bit difference hashes this close (bits that differ) are the same picture, resized or re-saved
PIXEL_SIDE = 16  # the image probe's features, and what confirms a duplicate: 16x16 grey pixels (0..1)
PIXEL_GAP = 0.02  # mean grey gap of a picture and its 5x resized JPEG: 0.001; two scans of one digit: 0.04+
CANDIDATES = 8  # nearest hashes per image compared pixel by pixel
SHORT_CHARS = 3  # a text with fewer non-space characters says too little to learn from ("ok", "?")
DOMINANT_SHARE = 0.8  # one class holding this share of the training rows or more
FEW_EXAMPLES = 10  # a class with fewer training examples than this
SIZE_RATIO = 4  # largest / smallest image width (or height) beyond this
SHOWN = 10  # examples listed per finding
SHOWN_CHARS = 200  # longest text shown in an example (characters)


@dataclass(frozen=True)
class Finding:
    """One warning about the data: a short title, what was found and what to do, example rows to look at, and the
    files (roles) it is about."""

    title: str
    message: str
    examples: list[dict] = field(default_factory=list)
    roles: tuple[str, ...] = ("train_file",)


@dataclass
class _Sample:
    """What one file's checks read: the rows (indices into its table), each row's key for duplicates (normalised
    text, or an image's difference hash) and what shows it (text or file name); for images, sizes and pixels."""

    role: str
    total: int
    rows: np.ndarray
    keys: list
    shown: list[str]
    sizes: Optional[np.ndarray] = None
    pixels: Optional[np.ndarray] = None

    @property
    def sampled(self) -> str:
        return f" (checked on {len(self.rows):,} of {self.total:,} rows)" if len(self.rows) < self.total else ""


def check_data(
    raw: dict[str, Dataset], tables: dict[str, Dataset], columns: Columns, labels: Optional[list[str]]
) -> list[Finding]:
    """Every check, keyed by role (train_file, validation_file, test_file): texts are read from ``raw`` (as loaded,
    so row numbers match the file), images and class ids from ``tables`` (as prepare_splits made them)."""
    found = [f for role, t in raw.items() if (f := short_texts(t, columns.text, role))] if columns.text else []
    samples = read_samples(raw if columns.text is not None else tables, columns)
    if columns.image is not None:
        found += [f for f in [image_sizes(list(samples.values()))] if f]
    found += repeats(samples, split_off="validation_file" not in samples) + leaks(samples)
    if columns.label is not None:
        found += [f for f in [imbalance(tables["train_file"], columns.label, labels)] if f]
        source = raw if columns.text is not None else tables
        found += [f for f in [label_errors(samples["train_file"], source["train_file"], columns.label, labels)] if f]
    return found


def read_samples(tables: dict[str, Dataset], columns: Columns) -> dict[str, "_Sample"]:
    """What the checks read of each file, by role: its texts, or its images (all files within IMAGE_BUDGET_S)."""
    if columns.text is not None:
        return {role: text_sample(t, columns.text, role) for role, t in tables.items()}
    deadline = time.monotonic() + IMAGE_BUDGET_S
    return {role: image_sample(t, columns.image, role, deadline) for role, t in tables.items()}


def log_findings(findings: list[Finding]) -> None:
    for finding in findings:
        shown = "; ".join(", ".join(f"{k}={v!r}" for k, v in row.items()) for row in finding.examples[:3])
        logger.warning("%s: %s%s", finding.title, finding.message, f" Examples: {shown}" if shown else "")


def _rows(total: int, cap: int) -> np.ndarray:
    """Every row, or ``cap`` of them drawn with a fixed seed (in order) when there are more."""
    if total <= cap:
        return np.arange(total)
    return np.sort(np.random.default_rng(0).choice(total, cap, replace=False))


def _texts(table: Dataset, column: str, rows: Optional[np.ndarray] = None) -> pa.Array:
    texts = table.with_format("arrow")[column]
    texts = pc.fill_null(pc.cast(texts, pa.large_string()), "")
    return texts.take(pa.array(rows)) if rows is not None else texts


def text_sample(table: Dataset, column: str, role: str) -> _Sample:
    """Texts keyed for duplicates as they read: case, punctuation and runs of spaces left out."""
    rows = _rows(len(table), TEXT_ROWS)
    texts = _texts(table, column, rows)
    keys = pc.replace_substring_regex(pc.utf8_lower(texts), r"[\pP\pS\s]+", " ")
    keys = pc.utf8_trim_whitespace(keys).to_pylist()
    return _Sample(role, len(table), rows, keys, texts.to_pylist())


def short_texts(table: Dataset, column: str, role: str) -> Optional[Finding]:
    """Texts that are empty (dropped before training) or have under SHORT_CHARS characters besides spaces."""
    lengths = pc.utf8_length(pc.replace_substring_regex(_texts(table, column), r"\s+", "")).to_numpy()
    empty, short = np.flatnonzero(lengths == 0), np.flatnonzero((lengths > 0) & (lengths < SHORT_CHARS))
    if not len(empty) and not len(short):
        return None
    texts = table.select(short[:SHOWN])[column] if len(short) else []
    return Finding(
        f"Short texts in {role}",
        f"{role}: {len(empty):,} of {len(table):,} texts in column {column!r} are empty (left out of training) and "
        f"{len(short):,} have under {SHORT_CHARS} characters. A label on (almost) no text teaches nothing: fill "
        "these texts in or remove the rows.",
        [{"row": int(i) + 1, "text": str(text)} for i, text in zip(short, texts)]
        + [{"row": int(i) + 1, "text": ""} for i in empty[: SHOWN - min(len(short), SHOWN)]],
    )


def image_sample(table: Dataset, column: str, role: str, deadline: float) -> _Sample:
    """Each image's difference hash, size and grey pixels, decoded in threads until ``deadline`` (then left out)."""
    rows = _rows(len(table), IMAGE_ROWS)
    items = table.cast_column(column, Image(decode=False)).select(rows)[column]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        facts = list(pool.map(lambda item: _image_facts(item, deadline), items))
    read = [i for i, fact in enumerate(facts) if fact is not None]
    names = [_file_name(items[i], int(rows[i])) for i in read]
    hashes = np.array([facts[i][0] for i in read], dtype=np.uint64)
    sizes = np.array([facts[i][1] for i in read], dtype=np.int64).reshape(-1, 2)
    pixels = np.array([facts[i][2] for i in read], dtype=np.float32).reshape(len(read), -1)
    return _Sample(role, len(table), rows[read], hashes, names, sizes, pixels)


def _image_facts(item: dict, deadline: float) -> Optional[tuple[int, tuple[int, int], np.ndarray]]:
    """A difference hash (64 bits: is each pixel of a 9x8 grey thumbnail brighter than its right neighbour),
    the size, and 16x16 grey pixels; None once ``deadline`` has passed."""
    if time.monotonic() > deadline:
        return None
    with PILImage.open(item["path"] if item.get("bytes") is None else io.BytesIO(item["bytes"])) as image:
        size = image.size
        image.draft("L", (PIXEL_SIDE * 2, PIXEL_SIDE * 2))  # JPEGs decode at a fraction of their size: far quicker
        grey = image.convert("L")
    small = np.asarray(grey.resize((9, 8), PILImage.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    pixels = np.asarray(grey.resize((PIXEL_SIDE, PIXEL_SIDE), PILImage.Resampling.BILINEAR)) / 255.0
    return int(np.packbits(bits).view(">u8")[0]), size, pixels.flatten()


def _file_name(item: dict, row: int) -> str:
    """The image's class folder and file name (no server path), or its row."""
    path = item.get("path")
    return f"{Path(path).parent.name}/{Path(path).name}" if path else f"row {row + 1}"


def image_sizes(samples: list[_Sample]) -> Optional[Finding]:
    """Warn when the widest image is SIZE_RATIO times the narrowest (or the tallest the shortest)."""
    sizes = np.concatenate([s.sizes for s in samples])
    names = [name for s in samples for name in s.shown]
    if not len(sizes) or (sizes.max(0) <= SIZE_RATIO * sizes.min(0)).all():
        return None
    examples = [
        {"which": f"{how} {side}", "file": names[i], "width": int(sizes[i, 0]), "height": int(sizes[i, 1])}
        for side, axis in (("width", 0), ("height", 1))
        for how, i in (("smallest", sizes[:, axis].argmin()), ("largest", sizes[:, axis].argmax()))
    ]
    (w0, h0), (w1, h1) = sizes.min(0), sizes.max(0)
    sampled = "".join(s.sampled for s in samples)
    return Finding(
        "Images of very different sizes",
        f"Image widths run from {w0} to {w1} pixels and heights from {h0} to {h1}{sampled}. Every image is resized "
        "to the model's input, so tiny ones are blown up to a blur and huge ones lose detail: check the extremes "
        "below belong in the data set, or resize them alike.",
        examples,
    )


def _matches(sample: _Sample, other: _Sample, earlier: bool) -> list[tuple[int, int]]:
    """(i, j) pairs where row i of ``sample`` is the same as row j of ``other`` (texts equal; images by hash and
    pixels), one j per i; with ``earlier`` only j < i (a file against itself: a repeat pairs with a row before it)."""
    if isinstance(sample.keys, list):
        first: dict = {}
        for j, key in enumerate(other.keys):
            if key:  # a text of only punctuation or spaces is a short text, not a duplicate
                first.setdefault(key, j)
        found = ((i, first.get(key, -1)) for i, key in enumerate(sample.keys) if key)
        return [(i, j) for i, j in found if j >= 0 and (j < i or not earlier)]
    pairs = []
    for start in range(0, len(sample.keys), 512):  # 512 x 5,000 distances at a time: ~20 MB
        distance = np.bitwise_count(sample.keys[start : start + 512, None] ^ other.keys[None, :])
        if earlier:  # only a row before this one counts: the first copy is not a duplicate
            rows, cols = np.indices(distance.shape)
            distance = np.where(cols < rows + start, distance, 64)
        pairs += _same_pictures(distance, sample.pixels[start : start + 512], other.pixels, start)
    return pairs


def _same_pictures(distance: np.ndarray, pixels: np.ndarray, against: np.ndarray, start: int) -> list[tuple[int, int]]:
    """(row, match) for each row of a block whose hash is within NEAR_BITS of a row whose grey pixels are within
    PIXEL_GAP too: hashes alone confuse pictures with large flat areas (scans of the same digit). Only each row's
    CANDIDATES nearest hashes are compared pixel by pixel, to bound the work."""
    if not distance.size:
        return []
    count = min(CANDIDATES, distance.shape[1])
    nearest = np.argpartition(distance, count - 1, axis=1)[:, :count]
    gaps = np.abs(pixels[:, None, :] - against[nearest]).mean(2)
    same = (np.take_along_axis(distance, nearest, 1) <= NEAR_BITS) & (gaps <= PIXEL_GAP)
    return [(start + int(i), int(nearest[i, same[i].argmax()])) for i in np.flatnonzero(same.any(1))]


def repeats(samples: dict[str, _Sample], split_off: bool) -> list[Finding]:
    """Rows that repeat an earlier row of the same file; ``split_off``: the validation split comes from train_file."""
    found = []
    for role, sample in samples.items():
        pairs = _matches(sample, sample, earlier=True)
        if pairs:
            both = " The validation split is drawn from this file, so copies land on both sides and inflate its "
            found.append(Finding(
                f"Repeated examples in {role}",
                f"{role}: {len(pairs):,} of {len(sample.rows):,} rows repeat an earlier row ({_same(sample)})"
                f"{sample.sampled}.{both + 'metrics.' if split_off and role == 'train_file' else ''} "
                "Remove the repeats, keeping one of each.",
                [_pair(sample, i, sample, j) for i, j in pairs[:SHOWN]],
                (role,),
            ))  # fmt: skip
    return found


def leaks(samples: dict[str, _Sample]) -> list[Finding]:
    """Rows of the validation and test files that are also training rows."""
    found, train = [], samples["train_file"]
    for role in ("validation_file", "test_file"):
        pairs = _matches(samples[role], train, earlier=False) if role in samples else []
        if pairs:
            found.append(Finding(
                f"Duplicates between train_file and {role}",
                f"{role}: {len(pairs):,} of {len(samples[role].rows):,} examples also appear in train_file "
                f"({_same(train)}){samples[role].sampled or train.sampled}. The model trains on them, so every "
                f"metric on {role} comes out too good: remove them from one of the two files.",
                [_pair(samples[role], i, train, j) for i, j in pairs[:SHOWN]],
                ("train_file", role),
            ))  # fmt: skip
    return found


def _same(sample: _Sample) -> str:
    if isinstance(sample.keys, list):
        return "the same text up to case, spaces and punctuation"
    return "the same picture up to size and small edits, by its difference hash"


def _pair(sample: _Sample, i: int, other: _Sample, j: int) -> dict:
    """One example of a duplicate: the row and what it holds, and the row it repeats."""
    what = "text" if isinstance(sample.keys, list) else "file"
    return {
        f"{sample.role} row": int(sample.rows[i]) + 1,
        what: sample.shown[i][:SHOWN_CHARS],
        f"same as {other.role} row": int(other.rows[j]) + 1,
        f"{other.role} {what}": other.shown[j][:SHOWN_CHARS],
    }


def imbalance(table: Dataset, column: str, labels: list[str]) -> Optional[Finding]:
    """One class holding DOMINANT_SHARE of the training rows or more, or classes with under FEW_EXAMPLES rows."""
    counts = np.bincount(table.with_format("arrow")[column].to_numpy(), minlength=len(labels))
    top, few = int(counts.argmax()), [i for i in np.argsort(counts) if counts[i] < FEW_EXAMPLES]
    share = counts[top] / counts.sum()
    if share < DOMINANT_SHARE and not few:
        return None
    parts = []
    if share >= DOMINANT_SHARE:
        parts.append(
            f"class {labels[top]!r} holds {counts[top]:,} of {counts.sum():,} training rows ({share:.0%}): a model "
            f"that always answers {labels[top]!r} scores {share:.0%} accuracy, so judge runs by macro F1 against that, "
            "or gather more rows of the other classes."
        )
    if few:
        listed = ", ".join(f"{labels[i]!r} ({counts[i]})" for i in few[:SHOWN])
        parts.append(
            f"{len(few)} class(es) have under {FEW_EXAMPLES} training rows: {listed}; too few to learn or to "
            "score. Gather more, or merge them into a neighbouring class."
        )
    order = np.argsort(-counts)
    return Finding(
        "Class imbalance",
        "train_file: " + " ".join(parts),
        [{"class": labels[i], "rows": int(counts[i]), "share": f"{counts[i] / counts.sum():.1%}"} for i in order],
    )


def label_errors(sample: _Sample, table: Dataset, column: str, labels: Optional[list[str]]) -> Optional[Finding]:
    """The training rows whose label a quick cross-validated probe finds least likely (confident learning)."""
    probe = _probe_rows(sample, table, column, labels)
    if probe is None:
        return None
    picked, names, classes, y = probe
    features = [sample.shown[i] for i in picked] if isinstance(sample.keys, list) else sample.pixels[picked]
    try:
        probs = probe_probabilities(features, y)
    except ValueError as err:  # e.g. texts with no word found in two rows: nothing for the probe to learn from
        logger.info("Label check skipped: the probe could not learn from train_file (%s)", err)
        return None
    ranked = rank_label_issues(probs, y)
    if not len(ranked):
        return None
    what = "text" if isinstance(sample.keys, list) else "file"
    model = "TF-IDF + logistic regression" if what == "text" else f"logistic regression on {PIXEL_SIDE}px grey pixels"
    read = f" (the probe read {len(y):,} of {sample.total:,} rows: a sample, or rows with no words)"
    sampled = read if len(y) < sample.total else ""
    return Finding(
        "Suspected label errors in train_file",
        f"train_file: a quick probe ({model}, {PROBE_FOLDS}-fold cross-validated) confidently disagrees with "
        f"{len(ranked):,} of {len(y):,} labels{sampled}; the {min(len(ranked), SHOWN)} it finds least likely are "
        "listed. Look them over and fix any wrong label: a wrong label teaches the wrong class, and on held-out "
        "data it marks right answers wrong. Ambiguous rows are expected among them.",
        [
            {"row": int(sample.rows[picked[k]]) + 1, what: sample.shown[picked[k]][:SHOWN_CHARS],
             "label": names[k], "probe says": classes[probs[k].argmax()], "probe's chance of the label":
             f"{probs[k, y[k]]:.0%}"}
            for k in ranked[:SHOWN]
        ],
    )  # fmt: skip


def _probe_rows(sample: _Sample, table: Dataset, column: str, labels: Optional[list[str]]):
    """Positions (into ``sample``) the probe reads, their label names, the classes and the class index of each;
    None when too few rows or classes are left for the folds."""
    picked = _rows(len(sample.rows), PROBE_ROWS)
    picked = picked[[bool(sample.keys[i]) if isinstance(sample.keys, list) else True for i in picked]]
    values = table.select(sample.rows[picked]).with_format("arrow")[column].to_pylist()
    names = [labels[v] if hasattr(table.features[column], "names") else _label(v) for v in values]
    classes, y, counts = np.unique(np.array(names, dtype=object), return_inverse=True, return_counts=True)
    kept = counts[y] >= PROBE_MIN_CLASS
    if kept.sum() < PROBE_MIN_ROWS or (counts >= PROBE_MIN_CLASS).sum() < 2:
        return None
    classes, y = np.unique(np.asarray(names, dtype=object)[kept], return_inverse=True)
    return picked[kept], [n for n, k in zip(names, kept) if k], list(classes), y


def _label(value) -> str:
    """A raw label as its class is named (whole floats like 2.0 are class '2', as loading names them)."""
    return str(int(value)) if isinstance(value, float) else str(value)


def probe_probabilities(features, y: np.ndarray) -> np.ndarray:
    """Each row's class probabilities from a model that never saw it (PROBE_FOLDS-fold cross_val_predict)."""
    # scikit-learn is imported here: loading it costs ~1 s that pages reading data without a probe need not pay.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    first = TfidfVectorizer(sublinear_tf=True, min_df=2) if isinstance(features, list) else None
    model = make_pipeline(first or StandardScaler(), LogisticRegression(max_iter=200, C=1.0 if first else 0.1))
    folds = StratifiedKFold(PROBE_FOLDS, shuffle=True, random_state=0)
    return cross_val_predict(model, features, y, cv=folds, method="predict_proba")


def rank_label_issues(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows whose label is doubted, least likely label first: as confident learning counts, a row is doubted when the
    probe picks another class at least as surely as it picks that class for rows truly labelled so."""
    rows = np.arange(len(y))
    thresholds = np.array([probs[y == c, c].mean() for c in range(probs.shape[1])])
    predicted = probs.argmax(1)
    doubted = (predicted != y) & (probs[rows, predicted] >= thresholds[predicted])
    order = np.argsort(probs[rows, y], kind="stable")
    return order[doubted[order]]
