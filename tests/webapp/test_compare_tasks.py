"""The Compare page over hand-written run folders (nothing trains): one table per task on that task's metrics,
a headline narrow enough for a 1280 px window, the hint on an empty page, and the scores on a test file."""

import time
from pathlib import Path

import yaml

from finetune.rundir import RunDirectory, write_json_atomic
from tests.webapp.apptest import assert_ok, open_app

LM, TEXT = "causal-lm", "text-classification"
LONG = "bert-sentiment-sweep-learning-rate-2e-3-with-a-very-long-name"


def write_run(home: Path, name: str, task: str, metrics: dict | None, **config) -> Path:
    """A run folder as the trainer leaves it, less the adapter and checkpoints; ``metrics`` None: not finished."""
    run = RunDirectory(home / "runs" / name)
    run.path.mkdir(parents=True)
    settings = {"task": task, "model_name_or_path": "tiny", "train_file": "d.csv", "output_dir": str(run.path)}
    run.config_path.write_text(yaml.safe_dump({**settings, "learning_rate": 1e-3, **config}))
    run.update_status(state="finished" if metrics else "running", started_at=time.time(), total_steps=10, step=10)
    if metrics:
        write_json_atomic(run.metrics_path, {"task": task, **metrics})
    return run.path


def classification(accuracy: float, test: float | None = None) -> dict:
    scores = {"base": {"accuracy": 0.5, "eval_loss": 0.7}, "finetuned": {"accuracy": accuracy, "eval_loss": 0.3}}
    if test is not None:
        scores["test"] = {
            "base": {"accuracy": 0.55, "eval_loss": 0.69},
            "finetuned": {"accuracy": test, "eval_loss": 0.4},
        }
    return scores


LANGUAGE_MODEL = {
    "base": {"perplexity": 80.0, "eval_loss": 4.38},
    "finetuned": {"perplexity": 20.25, "eval_loss": 3.01},
}


def tables(at) -> list[list[dict[str, str]]]:
    """Each markdown table on the page, as rows of {header: cell}."""
    found = []
    for markdown in (m.value for m in at.markdown if m.value.startswith("|")):
        header, _, *rows = [line for line in markdown.splitlines() if line.startswith("|")]
        columns = [c.strip() for c in header.strip("|").split("|")]
        found.append([dict(zip(columns, (c.strip() for c in row.strip("|").split("|")))) for row in rows])
    return found


def test_runs_of_two_tasks_get_a_table_each_on_their_own_metric(no_runner):
    write_run(no_runner, "gpt2-a", LM, LANGUAGE_MODEL)
    write_run(no_runner, "bert-a", TEXT, classification(0.875), learning_rate=2e-3)
    write_run(no_runner, "bert-b", TEXT, classification(0.75), learning_rate=5e-3)
    at = open_app("pages/compare.py")
    at.multiselect(key="compare_runs").set_value(["gpt2-a", "bert-a", "bert-b"]).run()
    assert_ok(at)
    assert [s.value for s in at.subheader] == [
        "Causal lm: ranked by perplexity (lower is better)",
        "Text classification: ranked by accuracy (higher is better)",
    ]
    assert any("train 2 tasks" in c.value for c in at.caption)
    lm, text = tables(at)
    assert [row["run"] for row in lm] == ["gpt2-a"] and lm[0]["ppl tuned"] == "**20.25**" and lm[0]["★"] == "★"
    assert not any(key.startswith("acc") for key in lm[0]), "no accuracy column for a language model"
    assert [(row["run"], row["acc tuned"], row["acc Δ"]) for row in text] == [
        ("bert-a", "**0.875**", "0.375"),
        ("bert-b", "0.75", "0.25"),
    ]
    assert [row["settings"] for row in text] == ["learning_rate: 0.002", "learning_rate: 0.005"]
    assert "settings" not in lm[0], "a lone run differs from nothing"
    assert len(at.download_button) == 2 and len(at.dataframe) == 2


def test_the_headline_stays_narrow_and_the_details_keep_full_names(no_runner):
    write_run(no_runner, LONG, TEXT, classification(0.875), train_file="/data/reviews/" + "x" * 40 + ".csv")
    write_run(no_runner, "bert-b", TEXT, classification(0.75))
    at = open_app("pages/compare.py")
    at.multiselect(key="compare_runs").set_value([LONG, "bert-b"]).run()
    assert_ok(at)
    (headline,) = tables(at)
    long_row = headline[0]
    assert long_row["run"] == "bert-sentim…y-long-name" and len(long_row["run"]) == 23, long_row
    assert long_row["settings"] == "train_file: xxxxxxxxxxx…xxxxxxx.csv", "paths cut to their file names, then cut"
    assert set(long_row) == {
        "★",
        "run",
        "acc base",
        "acc tuned",
        "acc Δ",
        "loss base",
        "loss tuned",
        "loss Δ",
        "settings",
    }
    details = at.dataframe[0].value
    assert LONG in details.index and details.loc[LONG, "train_file"] == "x" * 40 + ".csv"
    assert details.loc[LONG, "finetuned_accuracy"] == 0.875


def test_scores_on_a_test_file_get_their_own_labelled_table(no_runner):
    write_run(no_runner, "with-test", TEXT, classification(0.875, test=0.8125), learning_rate=2e-3)
    write_run(no_runner, "without", TEXT, classification(0.75))
    at = open_app("pages/compare.py")
    at.multiselect(key="compare_runs").set_value(["with-test", "without"]).run()
    assert_ok(at)
    validation, test = tables(at)
    assert "test acc tuned" not in validation[0], "the validation table keeps to the validation split"
    assert [(row["run"], row["test acc base"], row["test acc tuned"]) for row in test] == [
        ("with-test", "0.55", "0.8125"),
        ("without", "—", "—"),
    ]
    assert any(c.value.startswith("On the test file") for c in at.caption)
    assert any(c.value.startswith("On the validation split") for c in at.caption)


def test_without_a_test_file_there_is_no_test_table(no_runner):
    write_run(no_runner, "a", TEXT, classification(0.875))
    at = open_app("pages/compare.py")
    assert_ok(at)
    assert len(tables(at)) == 1 and not any(c.value.startswith("On the test file") for c in at.caption)


def test_an_empty_page_says_to_launch_a_run(no_runner):
    at = open_app("pages/compare.py")
    assert [i.value for i in at.info] == [
        "No runs yet. Launch one on the New run page: once it has finished, compare it with others here."
    ]
    links = [e for e in at.main if e.type == "page_link"]
    assert [(link.proto.page, link.proto.label) for link in links] == [("new_run", "Launch a run on the New run page")]
    assert len(at.multiselect) == 0


def test_runs_that_have_not_finished_are_said_to_be_unfinished(no_runner):
    write_run(no_runner, "training", TEXT, None)
    at = open_app("pages/compare.py")
    assert_ok(at)
    assert len(at.info) == 1 and "None of the 1 runs has finished yet" in at.info[0].value
    assert at.multiselect(key="compare_runs").value == [], "nothing finished to open on"
    at.multiselect(key="compare_runs").set_value(["training"]).run()
    assert_ok(at)
    (headline,) = tables(at)
    assert headline == [{"★": "", "run": "training", "state": "running"}], "no scores before the run has finished"


def test_long_names_that_would_be_cut_alike_are_cut_apart(no_runner):
    names = [LONG, LONG.replace("2e-3", "5e-3")]  # a sweep's runs: the same start and end
    for name, lr in zip(names, (2e-3, 5e-3)):
        write_run(no_runner, name, TEXT, classification(0.875, test=0.75), learning_rate=lr)
    at = open_app("pages/compare.py")
    at.multiselect(key="compare_runs").set_value(names).run()
    assert_ok(at)
    shown = [row["run"] for row in tables(at)[0]]
    assert len(set(shown)) == 2 and all("…" in name and len(name) < len(LONG) for name in shown), shown
    assert [row["run"] for row in tables(at)[1]] == shown, "the test table names the runs as the headline does"
