"""A test file: scored once by the base and the fine-tuned model, never trained or selected on (metrics.json's test
section), read with the training data's columns and class names."""

import logging

import pytest

from finetune.data.loading import Columns, Unpacking, load_splits
from finetune.errors import UserError
from tests.conftest import read_json, run_cli, write_sentiment_csv
from tests.finetune.reference_eval import eval_loss_of_reloaded


def test_a_run_with_a_test_file_scores_base_and_fine_tuned_on_it(tiny_checkpoints, tmp_path):
    train = write_sentiment_csv(tmp_path / "train.csv", rows=160, seed=0)
    test = write_sentiment_csv(tmp_path / "test.csv", rows=48, seed=7)
    out = tmp_path / "run"
    result = run_cli(
        "--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(train), "--test_file", str(test),
        "--output_dir", str(out), "--max_steps", "12", "--learning_rate", "5e-3", "--eval_steps", "6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert set(metrics["test"]) == {"base", "finetuned", "intervals"}
    for side in ("base", "finetuned"):
        assert {"accuracy", "eval_loss"} <= set(metrics["test"][side]), metrics["test"]
    # Scored on the 48 test rows, not the validation split: the figures differ from validation's.
    assert metrics["test"]["finetuned"] != metrics["finetuned"]
    # The fine-tuned figures are the saved adapter's on the test rows, as an independent re-scoring finds them.
    assert metrics["test"]["finetuned"]["eval_loss"] == pytest.approx(eval_loss_of_reloaded(out, "test"), rel=1e-4)


def test_without_a_test_file_metrics_have_no_test_section(tiny_checkpoints, tmp_path):
    out = tmp_path / "run"
    train = write_sentiment_csv(tmp_path / "train.csv", rows=80)
    assert run_cli("--model_name_or_path", str(tiny_checkpoints["bert"]), "--train_file", str(train),
                   "--output_dir", str(out), "--max_steps", "2").returncode == 0  # fmt: skip
    assert "test" not in read_json(out / "metrics.json")


def _splits(tmp_path, train, test):
    unpacking = Unpacking(root=tmp_path / "unpacked")
    return load_splits(str(train), None, "text-classification", Columns(), 10.0, 0, unpacking, test_file=str(test))


def test_the_test_split_keeps_every_row_and_the_training_class_names(tmp_path):
    train = write_sentiment_csv(tmp_path / "train.csv", rows=60)
    test = write_sentiment_csv(tmp_path / "test.csv", rows=30, seed=3)
    splits, columns, labels = _splits(tmp_path, train, test)
    assert len(splits["test"]) == 30 and labels == ["negative", "positive"]
    assert splits["test"].features[columns.label].names == labels


def test_a_test_file_with_another_kind_of_label_is_named_in_the_message(tmp_path):
    train = write_sentiment_csv(tmp_path / "train.csv", rows=60)
    test = tmp_path / "test.csv"
    test.write_text("review,sentiment\n" + "a fine film,1\nan awful film,0\n" * 5)
    with pytest.raises(UserError) as caught:
        _splits(tmp_path, train, test)
    assert str(caught.value).startswith("test_file: label column 'sentiment' of"), str(caught.value)
    assert "holds numbers but train_file holds text" in str(caught.value)


def test_labels_mixing_numbers_and_words_are_warned_about(tmp_path, caplog):
    train = tmp_path / "train.csv"
    train.write_text("review,sentiment\n" + "a fine film,pos\nan awful film,1\na middling film,2.5\n" * 10)
    test = write_sentiment_csv(tmp_path / "test.csv", rows=10)
    with caplog.at_level(logging.WARNING, logger="finetune.data.loading"):
        _, _, labels = _splits(tmp_path, train, test)
    assert set(labels) >= {"1", "2.5", "pos"}
    [note] = [r.getMessage() for r in caplog.records if "mixes numbers" in r.getMessage()]
    assert note.startswith("label column 'sentiment' mixes numbers (1, 2.5) and words (") and "pos" in note, note
