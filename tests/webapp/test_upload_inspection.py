"""inspect_data, the New run page's check of an upload: the trainer's loader, large files sampled, same messages."""

import csv
from pathlib import Path

import pytest
from PIL import Image

from finetune.data import loading as data
from finetune.errors import UserError
from tests.conftest import write_image_folder, write_sentiment_csv
from webapp.services import uploads


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _csv(path: Path, rows: list, header=("text", "label")) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _sample_above(monkeypatch, size: int, rows: int = 100) -> None:
    monkeypatch.setattr(uploads, "SAMPLE_ABOVE_BYTES", size)
    monkeypatch.setattr(uploads, "SAMPLE_ROWS", rows)


def test_a_large_file_is_judged_by_its_first_rows(tmp_path, monkeypatch):
    reviews = write_sentiment_csv(tmp_path / "reviews.csv", rows=2000)
    size = reviews.stat().st_size
    full = uploads.inspect_data(reviews, "text-classification")
    assert (full.sampled, full.num_examples, full.file_bytes) == (False, 2000, size)
    _sample_above(monkeypatch, size // 2)
    sampled = uploads.inspect_data(reviews, "text-classification")
    assert (sampled.sampled, sampled.num_examples, sampled.file_bytes) == (True, 100, size)
    assert sampled.label_counts == {"negative": 50, "positive": 50}
    assert (sampled.text_column, sampled.label_column, len(sampled.preview)) == ("review", "sentiment", 10)
    assert sampled.preview.equals(full.preview)  # the file's first rows either way


def _latin(path: Path) -> Path:
    path.write_bytes(b"text,label\n" + b"fine words,a\n" * 300 + b"caf\xe9,b\n")  # past the first rows
    return path


def _header_only(path: Path) -> Path:
    path.write_text("text,label\n")
    return path


# name: (a part of the message expected, a function writing the file into a folder)
SAMPLED_MESSAGES = {
    "halves": (
        "holds numbers like 0.5",
        lambda root: _csv(root / "halves.csv", [[f"t {i}", [0.5, 1.5][i % 2]] for i in range(300)]),
    ),
    "latin": ("is not UTF-8 text: line 302 (byte offset 3914)", lambda root: _latin(root / "latin.csv")),
    "header only": ("holds no examples", lambda root: _header_only(root / "header.csv")),
    "blank texts": ("text column 'text' of", lambda root: _csv(root / "blank.csv", [["", "a"], ["", "b"]] * 150)),
}


@pytest.mark.parametrize("case", SAMPLED_MESSAGES)
def test_sampled_and_whole_reads_give_the_same_messages(tmp_path, monkeypatch, case):
    expected, write = SAMPLED_MESSAGES[case]
    path = write(tmp_path)
    messages = []
    for threshold in (2**40, 1):  # read whole, then sampled
        _sample_above(monkeypatch, threshold)
        with pytest.raises(UserError) as err:
            uploads.inspect_data(path, "text-classification")
        messages.append(str(err.value))
    assert messages[0] == messages[1] and expected in messages[0], messages


def test_scores_and_whole_floats_are_counted_per_class(tmp_path):
    scores = _csv(tmp_path / "scores.csv", [[f"review {i}", i % 5 + 1] for i in range(50)])
    report = uploads.inspect_data(scores, "text-classification")  # was IndexError in the class counts
    assert report.labels == ["1", "2", "3", "4", "5"]
    assert report.label_counts == {"1": 10, "2": 10, "3": 10, "4": 10, "5": 10}
    floats = _csv(tmp_path / "floats.csv", [[f"text {i}", ["1.0", "2.0", "2.0"][i % 3]] for i in range(30)])
    assert uploads.inspect_data(floats, "text-classification").label_counts == {"1": 10, "2": 20}


def test_a_truncated_jpeg_is_named_and_good_images_get_thumbnails(tmp_path):
    images = write_image_folder(tmp_path / "images", per_class=3)
    report = uploads.inspect_data(images, "image-classification")
    assert len(report.thumbnails) == 8 and report.file_bytes is None and not report.sampled
    assert all(image.size == (40, 40) for image, _ in report.thumbnails)
    cut = images / "green" / "cut.jpg"
    Image.new("RGB", (64, 64), (30, 200, 30)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(UserError, match=f"cannot be read: {cut} \\("):
        uploads.inspect_data(images, "image-classification")


def test_the_file_is_read_once(tmp_path, monkeypatch):
    reviews = write_sentiment_csv(tmp_path / "reviews.csv", rows=40)
    reads = []
    original = data.load_table
    monkeypatch.setattr(data, "load_table", lambda *args, **kwargs: reads.append(args[0]) or original(*args, **kwargs))
    report = uploads.inspect_data(reviews, "text-classification")
    assert reads == [reviews] and report.num_examples == 40
