"""Bad input through the real command line: a non-zero exit, status failed, one clear message, no traceback."""

import json

from tests.conftest import read_json, run_cli, write_image_folder, write_sentiment_csv


def _fails_with(run_dir, message: str, *args: str) -> None:
    result = run_cli("--output_dir", str(run_dir), *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and message in status["error"]


def test_each_bad_input_gets_its_message(tiny_checkpoints, tmp_path):
    bert, vit = str(tiny_checkpoints["bert"]), str(tiny_checkpoints["vit"])
    good_csv = write_sentiment_csv(tmp_path / "good.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    one_class = write_sentiment_csv(tmp_path / "one.csv", labels=("positive",))
    images = write_image_folder(tmp_path / "images", per_class=4)
    (images / "red" / "broken.png").write_bytes(b"not really a png")
    unsupported = tmp_path / "t5"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    cases = [
        (
            "train_file: " + str(tmp_path / "missing.csv") + " does not exist",
            "--model_name_or_path",
            bert,
            "--train_file",
            str(tmp_path / "missing.csv"),
        ),
        ("is empty; expected at least one example", "--model_name_or_path", bert, "--train_file", str(empty)),
        (
            "text_column: 'comment' is not a column of train_file; its columns are ['review', 'sentiment']",
            "--model_name_or_path",
            bert,
            "--train_file",
            str(good_csv),
            "--text_column",
            "comment",
        ),
        ("has a single class ('positive')", "--model_name_or_path", bert, "--train_file", str(one_class)),
        (
            "cannot be read: " + str(images / "red" / "broken.png"),
            "--model_name_or_path",
            vit,
            "--train_file",
            str(images),
        ),
        (
            "model_name_or_path: cannot load 'no-such-org/no-such-model'",
            "--model_name_or_path",
            "no-such-org/no-such-model",
            "--train_file",
            str(good_csv),
        ),
        (
            "is a 't5' checkpoint; supported kinds are gpt2, bert, vit, resnet",
            "--model_name_or_path",
            str(unsupported),
            "--train_file",
            str(good_csv),
        ),
        (
            "task: causal-lm is not available for bert",
            "--model_name_or_path",
            bert,
            "--train_file",
            str(good_csv),
            "--task",
            "causal-lm",
        ),
    ]
    for number, (message, *args) in enumerate(cases):
        _fails_with(tmp_path / f"run{number}", message, *args)
    assert len(cases) == 8


def test_a_finished_run_is_never_overwritten(tmp_path, tiny_checkpoints):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "finished", "error": None}))
    (run / "metrics.json").write_text("{}")
    result = run_cli(
        "--output_dir",
        str(run),
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(tmp_path / "whatever.csv"),
    )
    assert result.returncode == 2 and "already holds a finished run" in result.stderr
    assert read_json(run / "status.json")["state"] == "finished"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "status.json"]
