"""Bad input through the real command line: a non-zero exit, status failed, one clear message, no traceback."""

import json

import pytest

from tests.conftest import read_json, run_cli, write_image_folder, write_sentiment_csv


def _fails_with(run_dir, message: str, *args: str) -> None:
    result = run_cli("--output_dir", str(run_dir), *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    status = read_json(run_dir / "status.json")
    assert status["state"] == "failed" and message in status["error"]


@pytest.fixture(scope="module")
def bad_inputs(tiny_checkpoints, tmp_path_factory) -> dict[str, str]:
    """The files the cases below point the command line at, by the names their templates use."""
    root = tmp_path_factory.mktemp("bad_input")
    empty = root / "empty.csv"
    empty.write_text("")
    images = write_image_folder(root / "images", per_class=4)
    (images / "red" / "broken.png").write_bytes(b"not really a png")
    unsupported = root / "t5"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    return {
        "bert": str(tiny_checkpoints["bert"]),
        "vit": str(tiny_checkpoints["vit"]),
        "good_csv": str(write_sentiment_csv(root / "good.csv")),
        "missing": str(root / "missing.csv"),
        "empty": str(empty),
        "one_class": str(write_sentiment_csv(root / "one.csv", labels=("positive",))),
        "images": str(images),
        "broken": str(images / "red" / "broken.png"),
        "unsupported": str(unsupported),
    }


# name: (the message expected, the command line's arguments), both with {placeholders} from bad_inputs.
BAD_INPUTS = {
    "missing train file": (
        "train_file: {missing} does not exist",
        ["--model_name_or_path", "{bert}", "--train_file", "{missing}"],
    ),
    "empty train file": (
        "is empty; expected at least one example",
        ["--model_name_or_path", "{bert}", "--train_file", "{empty}"],
    ),
    "unknown text column": (
        "text_column: 'comment' is not a column of train_file; its columns are ['review', 'sentiment']",
        ["--model_name_or_path", "{bert}", "--train_file", "{good_csv}", "--text_column", "comment"],
    ),
    "single class": (
        "has a single class ('positive')",
        ["--model_name_or_path", "{bert}", "--train_file", "{one_class}"],
    ),
    "broken image": (
        "cannot be read: {broken}",
        ["--model_name_or_path", "{vit}", "--train_file", "{images}"],
    ),
    "unknown model": (
        "model_name_or_path: cannot load 'no-such-org/no-such-model'",
        ["--model_name_or_path", "no-such-org/no-such-model", "--train_file", "{good_csv}"],
    ),
    "unsupported model kind": (
        "is a 't5' checkpoint; supported kinds are gpt2, bert, vit, resnet",
        ["--model_name_or_path", "{unsupported}", "--train_file", "{good_csv}"],
    ),
    "task not available": (
        "task: causal-lm is not available for bert",
        ["--model_name_or_path", "{bert}", "--train_file", "{good_csv}", "--task", "causal-lm"],
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_gets_its_message(bad_inputs, tmp_path, case):
    message, args = BAD_INPUTS[case]
    _fails_with(tmp_path / "run", message.format(**bad_inputs), *(arg.format(**bad_inputs) for arg in args))


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
