"""New run guidance: column pickers when a guess fails, the offline hub check, settings warnings, the image
preview and setup.sh's progress lines. Pages are driven through webapp/app.py with AppTest (conftest.py)."""

import csv
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from datasets import Dataset

from finetune.config import TrainConfig
from finetune.data.columns import Columns, guess_columns
from finetune.errors import UserError
from finetune.training.advice import warnings_for
from tests.conftest import REPO, write_image_folder
from tests.webapp.apptest import assert_ok, errors, labels, open_app, upload_image_zip, warnings


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _upload(at, name: str, data: bytes, family: str = "bert"):
    at.radio(key="family").set_value(family).run()
    at.radio(key="data_source").set_value("Upload a file").run()
    at.file_uploader(key="upload").set_value((name, data, "text/csv")).run()
    assert_ok(at)
    return at


def _column_box(at, role: str):
    return at.selectbox(key=next(s.key for s in at.selectbox if s.key and s.key.startswith(f"{role}:")))


# ---- 5. columns that cannot be guessed ----------------------------------------------------------------


def test_unguessable_label_offers_column_pickers_and_continues(no_runner):
    # An id column differs in every row: no class label, so it is not guessed (before: silently used as 30 classes).
    data = _csv([{"review": f"the film was fine number {i}", "id": i} for i in range(30)])
    at = _upload(open_app(), "ids.csv", data)
    assert errors(at) == [] and "Launch run" not in labels(at)
    [warning] = warnings(at)
    assert warning.startswith("label_column: could not guess") and "class names or integer ids" in warning
    assert "['id']" in warning and "'review'" not in warning, "only columns that could be labels are offered"
    text_box, label_box = _column_box(at, "text_column"), _column_box(at, "label_column")
    assert (text_box.value, label_box.value) == ("review", None) and label_box.options == ["review", "id"]

    label_box.set_value("id").run()  # the user's pick is used as it is
    assert_ok(at)
    # 30 one-row classes: the data checks warn about them; the column warning is gone.
    assert errors(at) == [] and not [w for w in warnings(at) if w.startswith("label_column")]
    assert "Launch run" in labels(at)
    assert "label_column: id" in at.code[1].value


def test_single_column_file_says_plainly_that_no_label_exists(no_runner):
    at = _upload(open_app(), "only-reviews.csv", _csv([{"review": f"nice film {i}"} for i in range(30)]))
    assert errors(at) == [
        (
            "train_file: this file has only one column, review; text classification needs a text "
            "column and a label column (class names or integer ids)"
        )
    ]
    assert not [s for s in at.selectbox if s.key and s.key.startswith(("text_column:", "label_column:"))]
    assert "Launch run" not in labels(at)


def test_guess_messages_name_only_possible_label_columns():
    texts = [f"text number {i}" for i in range(30)]

    def guess(**columns) -> Columns:
        return guess_columns(Dataset.from_dict(columns), "text-classification", Columns(), "train_file")

    assert guess(review=texts, stars=[i % 5 + 1.0 for i in range(30)]).label == "stars", "whole floats are classes"
    assert guess(review=texts[:6], tag=list("abcdef")).label == "tag", "a small file may hold each class once"
    with pytest.raises(UserError) as found:
        guess(review=texts, score=[i + 0.5 for i in range(30)])
    assert str(found.value).startswith("train_file: no column besides 'review' can hold the labels")
    with pytest.raises(UserError, match=r"^train_file: no column can hold the texts"):
        guess(a=list(range(30)), b=list(range(30)))


# ---- 7. a hub id typed while the Hub is unreachable --------------------------------------------------


def test_offline_hub_id_fails_at_once_with_what_to_do(no_runner, monkeypatch, tmp_path):
    import huggingface_hub

    from webapp.services import catalog

    downloads = []
    monkeypatch.setattr(catalog, "hub_online", lambda timeout=1.5: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: downloads.append(a) or time.sleep(25))
    at = open_app()
    at.radio(key="family").set_value("custom").run()
    started = time.perf_counter()
    at.text_input(key="custom_model").set_value("distilgpt2").run()
    took = time.perf_counter() - started
    assert_ok(at)
    [error] = errors(at)
    assert error.startswith("model_name_or_path: the Hugging Face Hub can't be reached from this machine")
    assert "local folder holding config.json" in error and "presets" in error
    assert downloads == [] and took < 10, f"no download tried ({took:.1f} s)"

    # A hub id already in the local cache still works offline.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.setattr(catalog, "hub_cached", lambda hub_id: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(config))
    at.text_input(key="custom_model").set_value("someone/cached-bert").run()
    assert errors(at) == [] and "Checkpoint `someone/cached-bert` · bert · task text-classification" in [
        c.value for c in at.caption
    ]


# ---- 12. settings far outside what works -------------------------------------------------------------


def _cfg(**values) -> TrainConfig:
    return TrainConfig.from_dict(
        {"model_name_or_path": "m", "train_file": "t", "output_dir": "o", "task": "text-classification", **values}
    )


def test_warnings_for_learning_rates_and_lora_scale():
    assert warnings_for(_cfg(), 1000, "bert", gpus=1) == {}, "the defaults are fine"
    assert set(warnings_for(_cfg(learning_rate=0.05), 1000)) == {"learning_rate"}
    assert warnings_for(_cfg(learning_rate=5e-3), 1000) == {}
    assert set(warnings_for(_cfg(learning_rate=5e-3, finetune_method="full"), 1000)) == {"learning_rate"}
    assert set(warnings_for(_cfg(head_learning_rate=0.5), 1000)) == {"head_learning_rate"}
    assert warnings_for(_cfg(head_learning_rate=0.5, task="causal-lm"), 1000) == {}, "causal LM has no new head"
    assert "1024" in warnings_for(_cfg(lora_alpha=4096, lora_r=4), 1000)["lora_alpha"]
    assert set(warnings_for(_cfg(lora_alpha=1, lora_r=64), 1000)) == {"lora_alpha"}
    assert warnings_for(_cfg(lora_alpha=1, lora_r=64, finetune_method="full"), 1000) == {}


def test_warnings_for_long_runs_estimate_from_examples_epochs_and_device():
    long = warnings_for(_cfg(num_train_epochs=5), 20_000, "bert", gpus=0, cpu_cores=4)["num_train_epochs"]
    assert "about 9 h 22 min on 4 CPU cores" in long and "estimate" in long  # 90,000 examples x 1.5 CPU-s / 4 cores
    assert warnings_for(_cfg(num_train_epochs=5), 20_000, "bert", gpus=1) == {}, "minutes on a GPU"
    assert warnings_for(_cfg(num_train_epochs=5), 20_000, None) == {}, "no estimate without a known family"
    steps = warnings_for(_cfg(max_steps=100_000, per_device_train_batch_size=32), 10, "vit", gpus=2)
    assert set(steps) == {"max_steps"} and "2 GPUs" in steps["max_steps"]


def test_family_and_demo_defaults_raise_no_warnings():
    from webapp.services import catalog

    for key, family in catalog.FAMILIES.items():
        for demo in (False, True):
            values = {**family.defaults(), **(catalog.DEMO_OVERRIDES.get(key, {}) if demo else {})}
            cfg = _cfg(**{**values, "task": family.task})
            assert warnings_for(cfg, 200, None if demo else key, gpus=1) == {}, (key, demo)


def test_page_shows_warnings_under_fields_and_keeps_launch(no_runner, demo_dir):
    at = open_app()
    at.radio(key="family").set_value("custom").run()
    at.text_input(key="custom_model").set_value(str(demo_dir / "checkpoints" / "bert")).run()  # not a demo preset
    at.text_input(key="cfg_learning_rate").set_value("0.5")
    at.text_input(key="cfg_num_train_epochs").set_value("5000").run()
    assert_ok(at)
    assert errors(at) == [] and "Launch run" in labels(at)
    notes = warnings(at)
    assert len(notes) == 3 and notes[0].startswith("training may take about"), notes
    assert notes[1].startswith("0.5 is far above what works for LoRA"), notes
    # Above Launch: the run's time, and what makes it shorter.
    assert notes[2].startswith("Estimated training time: about 337 h") and "That is over 30 min" in notes[2], notes
    assert any("2 setting(s) look far off" in c.value for c in at.caption)


# ---- 13. image preview, setup.sh progress -----------------------------------------------------------


def test_image_preview_shows_thumbnails_and_class_counts(no_runner, tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=4)
    at = upload_image_zip(open_app(), root)
    assert_ok(at)
    [table] = [d.value for d in at.dataframe if list(d.value.columns) == ["class", "examples"]]
    assert table.to_dict("records") == [{"class": c, "examples": 4} for c in ("blue", "green", "red")]
    assert len(at.image) == 1


def test_setup_sh_prints_progress_and_keeps_pip_quiet(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    fake = tmp_path / ".venv" / "bin" / "python"  # records its arguments instead of installing
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TORCH_SPEC": "torch==9.9"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0::2][:3] == [
        "Upgrading pip ...",
        "Installing torch (torch==9.9) ...",
        "Installing LoRA Lab and dependencies, the tested versions in constraints.txt ...",
    ], lines
    assert all(line.startswith("  done in ") and line.endswith(" s") for line in lines[1:6:2]), lines
    assert lines[-1].startswith("LoRA Lab installed in .venv in ")
    calls = Path(tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 3 and all("--quiet" in call for call in calls), calls
    assert "--constraint constraints.txt -e ." in calls[2], "the project installs at the locked versions"
    latest = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh"), "--latest"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TORCH_SPEC": "torch==9.9"},
        check=False,
    )
    assert "the newest releases ..." in latest.stdout, latest.stdout + latest.stderr
    assert "--constraint" not in Path(tmp_path / "calls.txt").read_text().splitlines()[-1]
