"""The Compare and Playground pages over finished runs trained by the real CLI.

Driven through streamlit.testing's AppTest from webapp/app.py (pages are reached through its
st.navigation), each test in a workspace of its own (fixtures in conftest.py).
"""

import io
import json

from PIL import Image

from finetune.task_kinds import TASKS
from tests.webapp.apptest import assert_ok, button, errors, open_app
from tests.webapp.conftest import copy_run

# ---- Compare ----------------------------------------------------------------------------------------


def test_compare_two_bert_runs(no_runner, trained_runs):
    names = ["bert-lr2e-3", "bert-lr5e-3"]
    for name in [*names, "gpt2-tiny"]:
        copy_run(trained_runs[name], no_runner, name)
    at = open_app("pages/compare.py")
    default = at.multiselect(key="compare_runs").value
    assert sorted(default) in (sorted(names), ["gpt2-tiny"]), f"one task by default, got {default}"

    at.multiselect(key="compare_runs").set_value(names).run()
    assert_ok(at)
    table = next(m.value for m in at.markdown if m.value.startswith("|"))
    header, rule, *rows = [line for line in table.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert {"run", "settings", "acc base", "acc tuned", "acc Δ"} <= set(columns), columns
    assert len(rows) == 2
    for row, name, lr in zip(rows, names, ("0.002", "0.005")):
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        assert cells["run"] == name and cells["settings"] == f"learning_rate: {lr}", cells
    assert at.selectbox[0].value == "accuracy", "the primary metric of text classification is preselected"

    matrices = at.table
    assert len(matrices) == 2, "one confusion matrix per classification run"
    for matrix in matrices:
        frame = matrix.value
        assert list(frame.index) == list(frame.columns) == ["negative", "positive"]
        assert int(frame.to_numpy().sum()) == 36, "the evaluation split of 360 reviews"
    assert [d.label for d in at.download_button] == ["Download table (.csv)"]


def test_compare_gpt2_and_bert_runs_one_table_per_task(no_runner, trained_runs):
    for name in ("gpt2-tiny", "bert-lr2e-3"):
        copy_run(trained_runs[name], no_runner, name)
    at = open_app("pages/compare.py")
    at.multiselect(key="compare_runs").set_value(["gpt2-tiny", "bert-lr2e-3"]).run()
    assert_ok(at)
    titles = [s.value for s in at.subheader]
    assert titles == [
        f"{TASKS[task].title.capitalize()}: ranked by {metric} ({better} is better)"
        for task, metric, better in (
            ("causal-lm", "perplexity", "lower"),
            ("text-classification", "accuracy", "higher"),
        )
    ]
    tables = [m.value for m in at.markdown if m.value.startswith("|")]
    assert len(tables) == 2, "one table per task"
    lm, bert = ([c.strip() for c in t.splitlines()[0].strip("|").split("|")] for t in tables)
    assert {"ppl base", "ppl tuned", "ppl Δ"} <= set(lm) and not any(c.startswith("acc") for c in lm), lm
    assert {"acc base", "acc tuned", "acc Δ"} <= set(bert) and not any(c.startswith("ppl") for c in bert), bert
    cells = dict(zip(bert, (c.strip("* ") for c in tables[1].splitlines()[2].strip("|").split("|"))))
    accuracy = json.loads((trained_runs["bert-lr2e-3"] / "metrics.json").read_text())["finetuned"]["accuracy"]
    assert cells["run"] == "bert-lr2e-3" and cells["acc tuned"] == f"{accuracy:.4g}", cells
    assert [s.value for s in at.selectbox] == ["perplexity", "accuracy"], "each task's curves open on its metric"
    assert len(at.table) == 1, "a confusion matrix for the classification run only"


# ---- Playground -------------------------------------------------------------------------------------


def test_playground_generate_classify_text_and_image(no_runner, trained_runs):
    for name in ("gpt2-tiny", "bert-lr2e-3", "vit-tiny"):
        copy_run(trained_runs[name], no_runner, name)
    at = open_app("pages/playground.py")
    options = at.selectbox(key="play_run").options  # as shown: "name · task · model"
    assert sorted(option.split(" · ")[0] for option in options) == ["bert-lr2e-3", "gpt2-tiny", "vit-tiny"]

    at.selectbox(key="play_run").set_value("gpt2-tiny").run()
    assert_ok(at)
    prompt = at.text_area(key="prompt").value
    button(at, "Generate").click().run()
    assert_ok(at)
    shown = [m.value for m in at.markdown]
    assert shown[0] == "**Base model**" and shown[2] == "**Fine-tuned**", shown
    texts = [shown[1], shown[3]]
    assert len(texts) == 2 and all(t.startswith(prompt) and len(t) > len(prompt) for t in texts), texts

    at.selectbox(key="play_run").set_value("bert-lr2e-3").run()
    at.text_area(key="text").set_value("the acting was wonderful")
    button(at, "Classify").click().run()
    assert_ok(at)
    run_labels = json.loads((trained_runs["bert-lr2e-3"] / "adapter" / "lora_lab.json").read_text())["labels"]
    assert len(at.metric) == 1 and at.metric[0].label == "Prediction"
    assert run_labels == ["negative", "positive"] and at.metric[0].value in run_labels

    at.selectbox(key="play_run").set_value("vit-tiny").run()
    assert at.file_uploader(key="image").allowed_type == [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"]
    image = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 40, 40)).save(image, "PNG")
    at.file_uploader(key="image").set_value(("red.png", image.getvalue(), "image/png")).run()
    assert_ok(at)
    assert len(at.image) == 1
    assert len(at.metric) == 1 and at.metric[0].value in [str(d) for d in range(10)], [m.value for m in at.metric]

    at.file_uploader(key="image").set_value(("fake.png", b"not an image", "image/png")).run()
    assert len(at.error) == 1 and "fake.png cannot be read as an image" in errors(at)[0]
    assert len(at.metric) == 0
