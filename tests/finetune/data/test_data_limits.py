"""Awkward user data through the loader: labels, broken images, empty or non-UTF-8 text, long texts, eval cap.

Every problem must come out as one UserError naming the role, the file, the column or value and what was
expected; what can be used (labels 1-5, whole floats, a few empty rows, very long texts) must train.
"""

import csv
import dataclasses
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from finetune.config import TrainConfig
from finetune.data.loading import MAX_TEXT_CHARS, Columns, Unpacking, load_splits, load_table
from finetune.errors import UserError
from tests.conftest import read_json, run_cli, write_image_folder


def _csv(path: Path, rows: list, header=("text", "label")) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _load(path: Path, task: str = "text-classification", validation: Path | None = None, **kwargs):
    unpacking = Unpacking(path.parent / "unpacked")
    return load_splits(str(path), validation and str(validation), task, Columns(), 10.0, 42, unpacking, **kwargs)


def _fails(path: Path, task: str = "text-classification", validation: Path | None = None) -> str:
    with pytest.raises(UserError) as err:
        _load(path, task, validation)
    return str(err.value)


def _truncated_jpeg(path: Path) -> Path:
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# file name: (the label of each row, the class names expected)
NUMERIC_LABELS = {
    "scores.csv": ([i % 5 + 1 for i in range(50)], ["1", "2", "3", "4", "5"]),
    "floats.csv": ([f"{i % 2 + 1}.0" for i in range(20)], ["1", "2"]),
    "tens.csv": ([[2, 10][i % 2] for i in range(20)], ["2", "10"]),
}


@pytest.mark.parametrize("name", NUMERIC_LABELS)
def test_numeric_labels_become_class_ids_named_by_their_values(tmp_path, name):
    values, names = NUMERIC_LABELS[name]
    path = _csv(tmp_path / name, [[f"text {i}", value] for i, value in enumerate(values)])
    splits, _, labels = _load(path)
    assert labels == names, name
    found = {text: labels[i] for split in splits.values() for text, i in zip(split["text"], split["label"])}
    assert found == {f"text {i}": str(int(float(value))) for i, value in enumerate(values)}, name


def test_a_validation_file_shares_the_train_classes(tmp_path):
    train = _csv(tmp_path / "train.csv", [[f"t {i}", i % 3 + 1] for i in range(30)])
    validation = _csv(tmp_path / "validation.csv", [[f"v {i}", 3 - i % 3] for i in range(9)])
    splits, _, labels = _load(train, validation=validation)
    assert labels == ["1", "2", "3"]
    assert [labels[i] for i in splits["validation"]["label"]][:3] == ["3", "2", "1"]


# name: (a part of the message expected, a function writing the train file into a folder)
NOT_CLASSES = {
    "halves": (
        "holds numbers like 0.5; classification needs class names or integer ids",
        lambda root: _csv(root / "halves.csv", [[f"t {i}", [0.5, 1.5][i % 2]] for i in range(20)]),
    ),
    "some halves": (
        "holds numbers like 2.5;",
        lambda root: _jsonl(root / "some.jsonl", [{"text": f"t {i}", "label": [1, 2.5][i % 2]} for i in range(20)]),
    ),
    "mixed kinds": (
        "holds int values like 1 and str values like 'a'; expected one kind of label in every row",
        lambda root: _jsonl(root / "mixed.jsonl", [{"text": f"t {i}", "label": [1, "a"][i % 2]} for i in range(20)]),
    ),
    "blank": (
        "has empty values; every example needs a label",
        lambda root: _csv(root / "blank.csv", [["a b", "x"], ["c d", ""]] * 5),
    ),
}


@pytest.mark.parametrize("case", NOT_CLASSES)
def test_labels_that_are_not_classes_get_one_message_each(tmp_path, case):
    expected, write = NOT_CLASSES[case]
    path = write(tmp_path)
    message = _fails(path)
    assert message.startswith(f"train_file: label column 'label' of {path} "), message
    assert expected in message, message


def test_validation_labels_of_another_kind_than_the_train_labels_are_refused(tmp_path):
    train = _csv(tmp_path / "ints.csv", [[f"t {i}", i % 2] for i in range(20)])
    words = _csv(tmp_path / "words.csv", [[f"v {i}", ["no", "yes"][i % 2]] for i in range(4)])
    assert _fails(train, validation=words) == (
        f"validation_file: label column 'label' of {words} holds text but train_file holds numbers; "
        "expected the same class names in both"
    )


def test_a_truncated_jpeg_is_found_before_training(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=3)
    broken = _truncated_jpeg(folder / "red" / "cut.jpg")
    message = _fails(folder, "image-classification")
    assert message.startswith(f"train_file: 1 image(s) in column 'image' of {folder} cannot be read: {broken} (")
    assert "truncated" in message
    listed = _csv(
        tmp_path / "listed.csv",
        [["images/green/0.png", "g"], ["images/red/cut.jpg", "r"]] * 2,
        header=("image", "label"),
    )
    assert f"cannot be read: {broken} (" in _fails(listed, "image-classification")


def test_empty_texts_are_dropped_or_refused(tmp_path, caplog):
    blank = _csv(tmp_path / "blank.csv", [["", "a"], ["  ", "b"]] * 5)
    nulls = _jsonl(tmp_path / "nulls.jsonl", [{"text": None, "label": "a"}, {"text": None, "label": "b"}] * 5)
    for path in (blank, nulls):
        assert _fails(path) == (
            f"train_file: text column 'text' of {path} is empty in every row; expected a text in each example"
        )
    some = _csv(tmp_path / "some.csv", [["good text", "a"], ["", "b"], ["more text", "b"], [" ", "a"]] * 10)
    with caplog.at_level(logging.WARNING, logger="finetune.data.loading"):
        splits, _, _ = _load(some)
    assert sum(len(s) for s in splits.values()) == 20
    assert "train_file: dropped 20 of 40 examples whose text column 'text' is empty" in caplog.text


NOT_UTF8_LINES = [b"text,label", b"hello there,a", b"more words,b", b"caf\xe9 au lait,a", b"last one,b"]
# file name: (its lines, the line, the byte offset and the text near the bad byte the message names)
NOT_UTF8 = {
    "latin.csv": (NOT_UTF8_LINES, 4, 41, "caf\ufffd au lait,"),
    "latin.txt": ([line.split(b",")[0] for line in NOT_UTF8_LINES[1:]], 3, 26, "caf\ufffd au lait"),
    "latin.jsonl": (
        [b'{"text": "ok", "label": "a"}', b'{"text": "caf\xe9", "label": "b"}'],
        2,
        42,
        '{"text": "caf\ufffd", "label',
    ),
}


@pytest.mark.parametrize("name", NOT_UTF8)
def test_files_that_are_not_utf8_name_the_line_and_byte(tmp_path, name):
    content, line, offset, near = NOT_UTF8[name]
    path = tmp_path / name
    path.write_bytes(b"\n".join(content) + b"\n")
    message = _fails(path, "causal-lm" if path.suffix == ".txt" else "text-classification")
    assert message.startswith(
        f"train_file: {path} is not UTF-8 text: line {line} (byte offset {offset}) "
        f"holds byte 0xe9, near {near!r}; save it as UTF-8"
    ), message


def test_a_header_without_rows_holds_no_examples(tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    assert _fails(header).startswith(f"train_file: {header} holds no examples")


def test_the_validation_split_is_capped_at_max_eval_samples(tmp_path, caplog):
    data = _csv(tmp_path / "big.csv", [[f"text {i}", "ab"[i % 2]] for i in range(1000)])
    with caplog.at_level(logging.INFO, logger="finetune.data.loading"):
        first, _, _ = _load(data, max_eval_samples=40)
    assert (len(first["train"]), len(first["validation"])) == (900, 40)
    assert "Evaluating on 40 of 100 held-out examples (max_eval_samples)" in caplog.text
    assert sorted(first["validation"]["label"]).count(0) == 20  # stratified by class
    again, _, _ = _load(data, max_eval_samples=40)
    assert again["validation"]["text"] == first["validation"]["text"]  # drawn with the seed
    assert len(_load(data, max_eval_samples=None)[0]["validation"]) == 100
    given = _csv(tmp_path / "given.csv", [[f"held {i}", "ab"[i % 2]] for i in range(300)])
    capped, _, _ = _load(data, validation=given, max_eval_samples=50)
    assert (len(capped["train"]), len(capped["validation"])) == (1000, 50)


def _config(checkpoint: Path, tmp_path: Path, task: str) -> TrainConfig:
    return TrainConfig(
        model_name_or_path=str(checkpoint), train_file="unused", output_dir=str(tmp_path / "out"), task=task
    )


def test_long_texts_are_truncated_for_classification(tiny_checkpoints, tmp_path, caplog):
    from finetune.tasks import get_task

    task = get_task("text-classification")
    tokenizer = task.load_processor(str(tiny_checkpoints["bert"]))
    model, _ = task.load_model(str(tiny_checkpoints["bert"]), ["a", "b"], tokenizer)
    long = "good " * (MAX_TEXT_CHARS // 5 + 10)
    train = Dataset.from_dict({"text": [long, "bad", long + "x", "fine"], "label": [0, 1, 0, 1]})
    data = DatasetDict(train=train, validation=train.select([1, 3]))
    with caplog.at_level(logging.WARNING, logger="finetune.tasks.text_classification"):
        encoded, derived = task.encode(
            _config(tiny_checkpoints["bert"], tmp_path, "text-classification"),
            data,
            Columns(text="text", label="label"),
            tokenizer,
            model,
        )
    assert f"Truncated 2 text(s) longer than {MAX_TEXT_CHARS} characters" in caplog.text
    assert (len(encoded["train"]), len(encoded["validation"])) == (4, 2)
    assert max(len(ids) for ids in encoded["train"]["input_ids"]) == derived["max_seq_length"]


def test_long_texts_are_split_for_causal_lm_without_losing_text(tiny_checkpoints, tmp_path, caplog):
    from finetune.tasks import get_task

    task = get_task("causal-lm")
    tokenizer = task.load_processor(str(tiny_checkpoints["gpt2"]))
    model, _ = task.load_model(str(tiny_checkpoints["gpt2"]), None, tokenizer)
    phrase = "the cat sees the ball and "
    long = phrase * (MAX_TEXT_CHARS * 2 // len(phrase) + 100)  # two pieces and a bit
    second = "a dog likes a tree " * 20  # longer than a block: the remainder dropped by grouping is cut from it
    data = DatasetDict(
        train=Dataset.from_dict({"text": [long, second]}),
        validation=Dataset.from_dict({"text": ["my friend finds the house . " * 20]}),
    )
    cfg = dataclasses.replace(_config(tiny_checkpoints["gpt2"], tmp_path, "causal-lm"), block_size=32)
    with caplog.at_level(logging.INFO, logger="finetune.tasks.causal_lm"):
        encoded, _ = task.encode(cfg, data, Columns(text="text"), tokenizer, model)
    assert f"Split 1 text(s) longer than {MAX_TEXT_CHARS} characters into 3 consecutive pieces" in caplog.text
    ids = [token for block in encoded["train"]["input_ids"] for token in block]
    decoded, eos = tokenizer.decode(ids, clean_up_tokenization_spaces=False), tokenizer.eos_token
    # Every character of the long text, in order, with eos after the document only (not after each piece).
    assert (long + eos + second + eos).startswith(decoded) and len(decoded) > len(long + eos)


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_the_trainer_reports_bad_data_in_one_message(tiny_checkpoints, tmp_path, family):
    # Both were raw tracebacks (ArrowInvalid; OSError mid-training).
    if family == "bert":
        data = _csv(tmp_path / "halves.csv", [[f"t {i}", [0.5, 1.5][i % 2]] for i in range(20)])
        message = "holds numbers like 0.5; classification needs class names"
    else:
        data = write_image_folder(tmp_path / "images", per_class=3)
        broken = _truncated_jpeg(data / "blue" / "cut.jpg")
        message = f"1 image(s) in column 'image' of {data} cannot be read: {broken} ("
    run = tmp_path / "run"
    result = run_cli(
        "--model_name_or_path", str(tiny_checkpoints[family]), "--train_file", str(data), "--output_dir", str(run)
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr and message in read_json(run / "status.json")["error"]


def test_the_trainer_learns_scores_1_to_5_as_five_classes(tiny_checkpoints, tmp_path):
    scores = _csv(
        tmp_path / "scores.csv",
        [[f"review {i} {'awful bad ok good great'.split()[i % 5]}", i % 5 + 1] for i in range(60)],
        header=("review", "stars"),
    )
    run = tmp_path / "run"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(scores),
        "--output_dir",
        str(run),
        "--max_steps",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = read_json(run / "adapter" / "lora_lab.json")
    assert info["id2label"] == {"0": "1", "1": "2", "2": "3", "3": "4", "4": "5"}


def test_a_table_with_more_columns_than_any_real_one_is_refused_before_loading(tmp_path):
    from finetune.data.columns import MAX_COLUMNS

    header = ("text", "label", *(f"c{i}" for i in range(MAX_COLUMNS - 1)))
    wide = _csv(tmp_path / "wide.csv", [("a", "x", *["0"] * (MAX_COLUMNS - 1))] * 20, header=header)
    message = _fails(wide)
    assert f"wide.csv has {MAX_COLUMNS + 1:,} columns; at most {MAX_COLUMNS:,} are read" in message
    wide_lines = _jsonl(tmp_path / "wide.jsonl", [dict(zip(header, ("a", "x", *[0] * (MAX_COLUMNS - 1))))] * 20)
    assert f"has {MAX_COLUMNS + 1:,} columns" in _fails(wide_lines)
    narrow = _csv(tmp_path / "narrow.csv", [(f"text {i}", "ab"[i % 2]) for i in range(40)])
    assert len(_load(narrow)[0]["train"]) == 36  # the cap leaves ordinary tables alone


def test_with_a_data_cache_dir_every_cache_of_the_data_lands_there(tmp_path, monkeypatch):
    """A shared app sets data_cache_dir to the run's owner's folder: archives and datasets' Arrow tables both go there
    (their quota counts them), none to the machine-wide cache."""
    import datasets.config

    machine_wide = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", machine_wide)
    data = _csv(tmp_path / "reviews.csv", [(f"text {i}", "ab"[i % 2]) for i in range(40)])
    images = write_image_folder(tmp_path / "images", per_class=4)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in images.rglob("*.png"):
            z.write(file, file.relative_to(images))
    owner = tmp_path / "users" / "u-0123456789abcdef" / "cache"
    cfg = TrainConfig(model_name_or_path="m", train_file=str(data), output_dir="o", data_cache_dir=str(owner))
    unpacking = Unpacking.from_config(cfg)
    assert len(load_table(data, "train_file", unpacking)) == 40
    assert len(load_table(archive, "train_file", unpacking)) == 12
    assert list((owner / "tables").rglob("*.arrow")), "the tables' Arrow copies are in the owner's folder"
    assert [p.name for p in owner.iterdir() if p.name != "tables"], "and the unpacked archive"
    assert not machine_wide.exists() or not list(machine_wide.rglob("*.arrow"))


def test_an_image_folder_of_one_class_says_so(tmp_path):
    images = write_image_folder(tmp_path / "images", per_class=6)
    for extra in ("green", "blue"):
        shutil.rmtree(images / extra)
    message = _fails(images, task="image-classification")
    assert "holds images of one class only" in message and "at least 2 (e.g. cats/ and dogs/)" in message, message
    assert "only one column" not in message


def test_a_csv_row_with_more_fields_than_its_header_is_named_with_the_fix(tmp_path):
    broken = tmp_path / "reviews.csv"
    broken.write_text("text,label\ngood film,positive\ngreat, really great,positive\nbad film,negative\n")
    message = _fails(broken)
    assert "reviews.csv line 3 has 3 fields where its header has 2" in message, message
    assert 'in double quotes: "great, really"' in message and "ParserError" not in message
