"""Publishing a run: the generated model card, and the token kept out of every file and message."""

import pytest

from finetune.errors import UserError
from finetune.export import hub
from tests.conftest import run_cli, write_sentiment_csv

TOKEN = "hf_testtokenthatmustneverbewritten"


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    out = root / "reviews-lora"
    result = run_cli(
        "--model_name_or_path",
        str(tiny_checkpoints["bert"]),
        "--train_file",
        str(write_sentiment_csv(root / "reviews.csv", rows=60)),
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--learning_rate",
        "2e-3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def card(finished_run) -> str:
    return hub.model_card(finished_run)


@pytest.mark.parametrize(
    "expected",
    [
        'BASE = "<path to bert>"  # the base model was the local folder "bert"',
        "library_name: peft",
        "pipeline_tag: text-classification",
        "Trained on `reviews.csv` for 6 optimizer steps",
        "2 classes: negative, positive",
        "| accuracy |",
        "| eval_loss |",
        "learning_rate: 0.002",
        "lora_r: 16",
    ],
)
def test_model_card_states_base_data_metrics_and_config(card, expected):
    assert expected in card, expected


def test_model_card_holds_no_paths_of_the_training_machine(card, finished_run):
    assert "output_dir:" not in card and str(finished_run) not in card


def test_push_refuses_without_token_and_never_leaks_it(finished_run, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="set HF_TOKEN"):
        hub.push_to_hub(finished_run, "someone/adapter")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the upload fails
    with pytest.raises(UserError, match="could not upload to 'someone/adapter'") as err:
        hub.push_to_hub(finished_run, "someone/adapter")
    assert TOKEN not in str(err.value)
    files = [p for p in finished_run.rglob("*") if p.is_file()]
    assert files and not any(TOKEN.encode() in p.read_bytes() for p in files)
    # The card is staged beside a copy of the adapter: the run keeps the card PEFT saved with it.
    assert "trained with LoRA Lab" not in (finished_run / "adapter" / "README.md").read_text()


def test_unfinished_runs_cannot_be_pushed(tmp_path):
    with pytest.raises(UserError, match="not a finished run"):
        hub.model_card(tmp_path)


def test_the_card_names_uploaded_data_as_its_user_named_it(tmp_path):
    """The web app stores an upload as uploads/<hash>/upload.csv and records the user's file name beside it."""
    import json

    from finetune.export.model_card import DATA_NAME_FILE, data_name

    upload = tmp_path / "0123456789abcdef" / "upload.csv"
    upload.parent.mkdir()
    upload.write_text("text,label\n")
    assert data_name(str(upload)) == "upload.csv"
    (upload.parent / DATA_NAME_FILE).write_text(json.dumps({"name": "My reviews (2026).csv"}))
    assert data_name(str(upload)) == "My reviews (2026).csv"
    assert data_name(str(upload.parent / "unpacked")) == "My reviews (2026).csv", "an unpacked .zip too"
    assert data_name(None) == "data"
