"""The New run page: launch, uploads, form validation, custom checkpoints, a light page load.

Driven through streamlit.testing's AppTest from webapp/app.py (pages are reached through its
st.navigation), each test in a workspace of its own (fixtures in conftest.py).
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from finetune.errors import UserError
from finetune.rundir import RunDirectory
from tests.conftest import REPO, write_image_folder, write_sentiment_csv
from tests.webapp.apptest import CPU_PREFIX, assert_ok, button, errors, labels, open_app, state_of, upload_image_zip
from tests.webapp.conftest import APP, OFFLINE

# ---- New run ----------------------------------------------------------------------------------------


def test_new_run_launch_queues_the_run_and_the_runner_finishes_it(lab):
    at = open_app()
    assert at.radio(key="family").value == "gpt2"
    assert len(at.info) == 1 and "Demo checkpoint." in at.info[0].value, [i.value for i in at.info]
    assert len(at.code) == 2 and at.code[0].value.startswith(CPU_PREFIX), [c.value for c in at.code]
    shown = yaml.safe_load(at.code[1].value)  # the settings to save for a headless run of the same command
    assert at.code[0].value.endswith(f"--config {shown['output_dir']}/config.yaml") and shown["task"] == "causal-lm"
    assert at.metric[0].label == "Examples" and int(at.metric[0].value) > 0

    form = {"cfg_max_steps": 4, "cfg_lora_r": 4, "cfg_seed": 7}
    for key, value in form.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="cfg_num_train_epochs").set_value("1")  # blank would mean: epochs from the data
    at.text_input(key="cfg_learning_rate").set_value("0.003")
    at.text_input(key="run_name").set_value("ui-run").run()
    assert_ok(at)
    run = lab / "runs" / "ui-run"
    command = at.code[0].value
    assert command == (f"{CPU_PREFIX} --num_processes 1 finetune/train.py --config {run / 'config.yaml'}")
    assert not run.exists(), "nothing may be written before Launch"

    button(at, "Launch run").click().run()
    assert_ok(at)
    assert len(at.success) == 1 and "ui-run" in at.success[0].value and "queued" in at.success[0].value

    # config.yaml holds the form's values (and the demo checkpoint, sample data and guessed column).
    config = yaml.safe_load((run / "config.yaml").read_text())
    expected = {
        "model_name_or_path": str(lab / "demo" / "checkpoints" / "gpt2"),
        "task": "causal-lm",
        "train_file": str(lab / "demo" / "samples" / "stories.txt"),
        "output_dir": str(run),
        "text_column": "text",
        "num_train_epochs": 1.0,
        "max_steps": 4,
        "lora_r": 4,
        "seed": 7,
        "learning_rate": 0.003,
        "finetune_method": "lora",
        "per_device_train_batch_size": 8,
    }
    assert {k: config.get(k) for k in expected} == expected, f"{len(expected)} fields of config.yaml checked"
    job = json.loads((run / "job.json").read_text())
    assert job == {"preset": "cpu", "num_processes": 1, "gpus": 0, "resume": False}
    status = RunDirectory(run).read_status()
    assert "queued_at" in status and status["state"] in ("queued", "running", "finished"), status

    # The runner (started by app.py) launches it with accelerate; it trains 4 steps and finishes.
    deadline = time.time() + 150
    while state_of(run) not in ("finished", "failed", "cancelled") and time.time() < deadline:
        time.sleep(1)
    status = RunDirectory(run).read_status()
    log_file = run / "launch.log"
    log = log_file.read_text(errors="replace")[-2000:] if log_file.is_file() else "(no launch.log)"
    assert status["state"] == "finished", f"{status}\n{log}"
    assert status["total_steps"] == 4
    metrics = RunDirectory(run).read_metrics()
    assert "perplexity" in metrics["finetuned"] and "perplexity" in metrics["base"]
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert log_file.is_file(), "the runner launched it (its launcher's output goes to launch.log)"

    # The next rerun offers a fresh name; the Runs page opens on the launched run.
    at.run()
    assert at.text_input(key="run_name").value != "ui-run"
    at.switch_page("pages/runs.py").run()
    assert_ok(at)
    assert at.selectbox(key="runs_selected").value == "ui-run"
    assert "finished · step 4/4" in at.get("progress")[0].text


def test_new_run_upload_csv_preview_and_bad_files(no_runner, tmp_path):
    at = open_app()
    at.radio(key="family").set_value("bert").run()
    at.radio(key="data_source").set_value("Upload a file").run()
    assert_ok(at)
    assert "Launch run" not in labels(at), "no data yet: nothing to launch"
    uploader = at.file_uploader(key="upload")
    assert uploader.allowed_type == [".csv", ".jsonl", ".json"]
    assert "text column and a label column" in uploader.label

    data = write_sentiment_csv(tmp_path / "reviews.csv", rows=50).read_bytes()
    uploader.set_value(("my reviews.csv", data, "text/csv")).run()
    assert_ok(at)
    assert errors(at) == []
    # The preview (the data checks' example tables come with it: the sample data repeats its texts).
    assert [list(d.value.columns) for d in at.dataframe].count(["review", "sentiment"]) == 1
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Examples": "50", "Classes": "2"}
    text_box = at.selectbox(key=next(k for k in _keys(at) if k.startswith("text_column:")))
    label_box = at.selectbox(key=next(k for k in _keys(at) if k.startswith("label_column:")))
    assert (text_box.value, label_box.value) == ("review", "sentiment")
    assert text_box.options == label_box.options == ["review", "sentiment"]
    saved = list((no_runner / "uploads").rglob("upload.csv"))
    assert len(saved) == 1 and saved[0].read_bytes() == data, "the upload is stored under LORA_LAB_HOME/uploads"
    assert "Launch run" in labels(at)

    single = write_sentiment_csv(tmp_path / "single.csv", rows=20, labels=("positive",)).read_bytes()
    at.file_uploader(key="upload").set_value(("single.csv", single, "text/csv")).run()
    assert_ok(at)
    assert len(at.error) == 1 and "single class" in errors(at)[0], errors(at)
    assert "Launch run" not in labels(at) and len(at.dataframe) == 0

    at.file_uploader(key="upload").set_value(("empty.csv", b"", "text/csv")).run()
    assert_ok(at)
    assert errors(at) == ["upload: empty.csv is empty; expected a .csv/.jsonl with a text column and a label column"]
    assert "Launch run" not in labels(at)

    # A .pdf: the browser's file filter (type=) stops it before the app sees it; Streamlit's server-side
    # check refuses it too, so no run can be set up with it.
    at.file_uploader(key="upload").set_value(("paper.pdf", b"%PDF-1.4 ...", "application/pdf")).run()
    assert len(at.exception) == 1 and "Invalid file extension: `.pdf`" in at.exception[0].value
    assert "Launch run" not in labels(at)
    # The app's own check (reached when a file gets past the widget) names the kinds it expects.
    from webapp.services import uploads
    from webapp.services.identity import local_user

    with pytest.raises(UserError, match=r"paper\.pdf is a \.pdf file; expected a \.csv/\.jsonl with a text column"):
        uploads.save_upload(local_user(), "paper.pdf", b"%PDF-1.4 ...", "text-classification")
    with pytest.raises(UserError, match=r"notes\.txt is a \.txt file; expected a \.zip holding one sub-folder"):
        uploads.save_upload(local_user(), "notes.txt", b"hello", "image-classification")


def _keys(at: AppTest) -> list[str]:
    return [s.key for s in at.selectbox if s.key]


def test_new_run_upload_image_zip_for_vit(no_runner, tmp_path):
    root = write_image_folder(tmp_path / "images", per_class=4)
    at = upload_image_zip(open_app(), root)
    assert at.file_uploader(key="upload").allowed_type == [".zip"]
    assert_ok(at)
    assert errors(at) == []
    assert {m.label: m.value for m in at.metric} == {"Examples": "12", "Classes": "3"}
    assert "Images by class folder: 3 classes." in [c.value for c in at.caption]
    assert len(at.image) == 1, "a row of thumbnails"
    assert "Launch run" in labels(at)


def test_new_run_form_validation_blocks_launch(no_runner):
    taken = no_runner / "runs" / "taken"
    RunDirectory(taken).update_status(state="finished")
    at = open_app()
    at.text_input(key="run_name").set_value("good-name")
    at.text_input(key="cfg_learning_rate").set_value("abc")
    at.number_input(key="cfg_lora_r").set_value(0).run()
    assert_ok(at)
    problems = errors(at)
    assert len(problems) == 3, problems
    assert "'abc'" in problems[0] and "number" in problems[0]
    assert "positive integer" in problems[1] and "0" in problems[1]
    assert problems[2] == "Fix 2 setting(s) marked above before launching."
    assert "Launch run" not in labels(at) and len(at.code) == 0

    at.text_input(key="cfg_learning_rate").set_value("1e-3")
    at.number_input(key="cfg_lora_r").set_value(8)
    at.text_input(key="run_name").set_value("bad name!").run()
    assert len(at.error) == 2 and "letters, digits" in errors(at)[0], errors(at)
    assert "Launch run" not in labels(at)
    at.text_input(key="cfg_learning_rate").set_value("abc").run()
    assert len(at.error) == 3, "a bad name does not hide the bad settings: " + str(errors(at))
    at.text_input(key="cfg_learning_rate").set_value("1e-3").run()

    at.text_input(key="run_name").set_value("taken").run()
    assert len(at.error) == 2 and "'taken' exists already" in errors(at)[0], errors(at)
    assert "Launch run" not in labels(at)

    at.text_input(key="run_name").set_value("fresh").run()
    assert errors(at) == [] and "Launch run" in labels(at), "fixed values clear the errors"
    assert at.code[0].value.endswith(f"--config {no_runner / 'runs' / 'fresh' / 'config.yaml'}")


def open_custom_checkpoint() -> AppTest:
    at = open_app()
    at.radio(key="family").set_value("custom").run()
    assert_ok(at)
    assert "Launch run" not in labels(at), "nothing typed yet"
    return at


@pytest.mark.parametrize(("family", "task"), [("bert", "text-classification"), ("vit", "image-classification")])
def test_new_run_custom_checkpoint(no_runner, demo_dir, family, task):
    at = open_custom_checkpoint()
    path = demo_dir / "checkpoints" / family
    at.text_input(key="custom_model").set_value(str(path)).run()
    assert_ok(at)
    assert errors(at) == [] and len(at.info) == 0, "a custom checkpoint is not the demo preset"
    assert f"Checkpoint `{path}` · {family} · task {task}" in [c.value for c in at.caption]
    assert at.code[0].value.startswith(CPU_PREFIX) and "Launch run" in labels(at)


def test_new_run_custom_checkpoint_that_cannot_be_read_or_is_unsupported(no_runner, tmp_path):
    at = open_custom_checkpoint()
    at.text_input(key="custom_model").set_value(str(tmp_path / "no" / "such" / "model")).run()
    assert_ok(at)
    assert len(at.error) == 1 and errors(at)[0].startswith("model_name_or_path: cannot read"), errors(at)
    assert "Launch run" not in labels(at)

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    at.text_input(key="custom_model").set_value(str(llama)).run()
    assert len(at.error) == 1 and "model_name_or_path" in errors(at)[0] and "'llama'" in errors(at)[0]
    assert "Launch run" not in labels(at)


# ---- page load --------------------------------------------------------------------------------------


def test_page_load_imports_neither_torch_nor_transformers(lab):
    script = textwrap.dedent(f"""
        import sys, time
        start = time.perf_counter()
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({APP!r}, default_timeout=120).run()
        took = time.perf_counter() - start
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value == "New run" and at.button[0].label == "Launch run"
        heavy = [m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules]
        print(f"LOAD {{took:.2f}} s; heavy modules: {{heavy}}")
        assert "torch" not in sys.modules and "transformers" not in sys.modules, heavy
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("LOAD"))
    print(line)
    assert float(line.split()[1]) < 30


def test_new_run_form_keeps_its_values_across_page_switches(no_runner):
    at = open_app()
    at.radio(key="family").set_value("bert").run()
    at.number_input(key="cfg_lora_r").set_value(8).run()
    expected = {
        key: at.session_state[key]
        for key in (
            "cfg_per_device_train_batch_size",
            "cfg_num_train_epochs",
            "cfg_seed",
            "cfg_max_grad_norm",
            "run_name",
        )
    }
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/new_run.py").run()
    assert_ok(at)
    assert at.radio(key="family").value == "bert" and at.number_input(key="cfg_lora_r").value == 8
    kept = {key: at.session_state[key] for key in expected}
    assert kept == expected and min(kept["cfg_per_device_train_batch_size"], float(kept["cfg_num_train_epochs"])) > 0
    assert errors(at) == [] and "Launch run" in labels(at)


def test_lora_variants_and_tracking_reach_the_runs_settings(no_runner):
    """DoRA, rsLoRA, an initialisation, LoRA+, all-linear targets and TensorBoard, set in the form, are what the
    run's config.yaml holds; a bad LoRA+ ratio is reported at its field."""
    at = open_app()
    at.text_input(key="run_name").set_value("variants")
    at.checkbox(key="cfg_use_dora").check()
    at.checkbox(key="cfg_use_rslora").check()
    at.selectbox(key="cfg_init_lora_weights").select("gaussian")
    at.text_input(key="cfg_lora_target_modules").set_value("all-linear")
    at.selectbox(key="cfg_report_to").select("tensorboard")
    at.text_input(key="cfg_loraplus_lr_ratio").set_value("0.5").run()
    assert_ok(at)
    assert errors(at)[0] == "must be between 1 and 1000 (usually 16), got 0.5", "shown at the loraplus_lr_ratio field"
    at.text_input(key="cfg_loraplus_lr_ratio").set_value("16").run()
    assert errors(at) == [], errors(at)
    shown = yaml.safe_load(at.code[1].value)
    expected = {
        "use_dora": True,
        "use_rslora": True,
        "init_lora_weights": "gaussian",
        "loraplus_lr_ratio": 16.0,
        "lora_target_modules": ["all-linear"],
        "report_to": "tensorboard",
        "load_in_4bit": False,
    }
    assert {k: shown[k] for k in expected} == expected, f"{len(expected)} settings checked"


def test_the_command_the_page_shows_runs_as_shown_from_the_project_folder(lab):
    """Headless, as the page says: save the settings it shows where its command reads them, then run the command
    from the project folder, in a shell that never activated the environment."""
    import shlex
    import subprocess

    from tests.conftest import OFFLINE_ENV, REPO

    at = open_app()
    at.number_input(key="cfg_max_steps").set_value(3)
    at.text_input(key="run_name").set_value("headless").run()
    assert_ok(at)
    command, settings = shlex.split(at.code[0].value), yaml.safe_load(at.code[1].value)
    config = Path(command[command.index("--config") + 1])
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump(settings))
    path = ":".join(p for p in OFFLINE_ENV["PATH"].split(":") if not p.startswith(str(REPO)))  # no .venv/bin
    done = subprocess.run(command, cwd=REPO, env={**OFFLINE_ENV, "PATH": path}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert state_of(config.parent) == "finished" and (config.parent / "adapter" / "adapter_config.json").is_file()
