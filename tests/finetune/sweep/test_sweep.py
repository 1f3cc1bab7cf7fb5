"""Hyperparameter sweeps through the real command line on tiny checkpoints, and the pure parts with numbers."""

import itertools
import math
import sys
from pathlib import Path

import pytest
import yaml

from finetune.errors import ConfigError
from finetune.sweep.driver import eval_losses, should_prune
from finetune.sweep.experiment import best_run
from finetune.sweep.grid import grid_points, parse_grid, parse_grid_text
from tests.conftest import read_json, run_cli, write_lm_text, write_sentiment_csv

SWEEP = (sys.executable, "-m", "finetune.sweep")


def _yaml(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def lm_config(tiny_checkpoints, tmp_path_factory) -> Path:
    """Tiny GPT-2 runs of 4 steps (a few seconds each): perplexity, the primary metric, differs between points."""
    root = tmp_path_factory.mktemp("sweep")
    return _yaml(
        root / "run.yaml",
        model_name_or_path=str(tiny_checkpoints["gpt2"]),
        output_dir=str(root / "out"),
        train_file=str(write_lm_text(root / "lm.txt")),
        max_steps=4,
        eval_steps=2,
        logging_steps=2,
        max_eval_samples=40,
        mixed_precision="no",
        save_steps=100,
    )


def test_a_2x2_grid_runs_4_runs_as_one_experiment_and_picks_the_best(lm_config):
    result = run_cli(
        "--config",
        str(lm_config),
        "--grid",
        "learning_rate=1e-4,3e-3",
        "lora_r=4,8",
        "--experiment",
        "lr-rank",
        launcher=SWEEP,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = lm_config.parent / "out" / "lr-rank"
    names = [f"lr-rank-0{i}" for i in range(1, 5)]
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == names
    record = read_json(experiment / "experiment.json")
    assert record["grid"] == {"learning_rate": ["1e-4", "3e-3"], "lora_r": ["4", "8"]}
    assert record["primary_metric"] == "perplexity" and record["lower_is_better"] is True
    expected = [{"learning_rate": lr, "lora_r": r} for lr, r in itertools.product((1e-4, 3e-3), (4, 8))]
    assert record["points"] == dict(zip(names, expected))
    perplexities = {}
    for name, point in record["points"].items():
        config = yaml.safe_load((experiment / name / "config.yaml").read_text())
        assert config["experiment_name"] == "lr-rank" and config["output_dir"] == str(experiment / name)
        assert {key: config[key] for key in point} == point
        assert read_json(experiment / name / "status.json")["state"] == "finished"
        perplexities[name] = read_json(experiment / name / "metrics.json")["finetuned"]["perplexity"]
    assert len(perplexities) == 4 and len(set(perplexities.values())) == 4, perplexities
    best = min(perplexities, key=perplexities.get)
    assert record["best"] == best and record["best_value"] == pytest.approx(perplexities[best])
    assert record["finished_at"] and record["pruned"] == []
    rows = [line for line in result.stdout.splitlines() if line.lstrip("★ ").startswith("lr-rank-0")]  # the table
    assert len(rows) == 4 and [r for r in rows if r.startswith("★")] == [r for r in rows if best in r]
    assert all(line.split()[-1] == "finished" for line in rows)


BAD_INPUT = [  # (extra arguments, what the error must name)
    (["--grid", "bogus=1"], "bogus: 'bogus' is not a setting"),
    (["--grid", "learning_rate=abc,1e-4"], "learning_rate=abc: expected a number, got 'abc'"),
    (["--grid", "lora_r=8,0"], "lora_r=0: must be a positive integer"),
    (["--grid", "learning_rate=5"], "learning_rate=5: 5 is beyond any useful value"),
    (["--grid", "lr_scheduler_type=linear,wavy"], "lr_scheduler_type=wavy: expected one of linear"),
    (["--grid", "output_dir=/tmp/elsewhere"], "output_dir: set by the sweep for each run"),
    (["--grid", "lora_r"], "'lora_r' is not key=value"),
    (["--grid", "lora_r=8,8"], "has an empty or repeated value"),
    (["--grid", "lora_r=4,8", "seed=1,2", "--random", "5"], "random: expected 1 to 4 (the grid has 4 points), got 5"),
    (["--grid", "lora_r=4,8", "--experiment", "../up"], "'../up' is not a valid experiment name"),
]


@pytest.fixture
def small_config(tiny_checkpoints, tmp_path) -> Path:
    return _yaml(
        tmp_path / "run.yaml",
        model_name_or_path=str(tiny_checkpoints["gpt2"]),
        output_dir=str(tmp_path / "out"),
        train_file=str(write_lm_text(tmp_path / "lm.txt")),
    )


@pytest.mark.parametrize(("arguments", "expected"), BAD_INPUT, ids=[" ".join(arguments) for arguments, _ in BAD_INPUT])
def test_bad_grid_keys_and_values_are_refused_before_anything_is_written(small_config, arguments, expected):
    out = small_config.parent / "out"
    result = run_cli("--config", str(small_config), *arguments, launcher=SWEEP, timeout=120)
    assert result.returncode == 2, (arguments, result.stderr)
    assert result.stderr.startswith("error: ") and expected in result.stderr, (arguments, result.stderr)
    assert not out.exists(), f"nothing may be written for {arguments}"


def test_an_experiment_folder_that_exists_is_refused_and_left_alone(small_config):
    out = small_config.parent / "out"
    (out / "taken").mkdir(parents=True)
    (out / "taken" / "notes.txt").write_text("mine")
    result = run_cli("--config", str(small_config), "--grid", "lora_r=4,8", "--experiment", "taken", launcher=SWEEP)
    assert result.returncode == 2 and "exists already" in result.stderr, result.stderr
    assert [p.name for p in (out / "taken").iterdir()] == ["notes.txt"]


def test_random_draws_n_distinct_points_of_the_grid_reproducibly():
    grid = parse_grid(["learning_rate=1e-4,3e-4,1e-3", "lora_r=4,8,16", "lora_dropout=0,0.1"])
    every = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    assert grid_points(grid) == every and len(every) == 18
    draws = {seed: grid_points(grid, random_count=5, seed=seed) for seed in range(6)}
    for seed, drawn in draws.items():
        assert len(drawn) == 5 and len({tuple(p.items()) for p in drawn}) == 5, "distinct points"
        assert all(point in every for point in drawn)
        assert grid_points(grid, random_count=5, seed=seed) == drawn, "the same seed draws the same points"
    assert len({tuple(tuple(p.items()) for p in drawn) for drawn in draws.values()}) > 1, "seeds draw differently"
    assert len(grid_points(grid, random_count=18, seed=1)) == 18
    with pytest.raises(ConfigError, match="at most 99 per experiment"):
        grid_points(parse_grid(["lora_r=" + ",".join(map(str, range(1, 11))), "seed=" + ",".join(map(str, range(10)))]))


def test_the_web_forms_grid_text_is_the_same_grid():
    text = "# rates\nlearning_rate = 1e-4, 3e-4\n\n  lora_r=8,16  \n"
    assert parse_grid_text(text) == {"learning_rate": ["1e-4", "3e-4"], "lora_r": ["8", "16"]}
    with pytest.raises(ConfigError) as err:
        parse_grid_text("learning_rate=1e-4\nlearning_rate=3e-4\n")
    assert err.value.problems == [("learning_rate", "given twice; expected one key=v1,v2 per setting")]
    with pytest.raises(ConfigError, match="nothing to vary"):
        parse_grid_text("# nothing\n")


BEST = [(0, 2.0), (10, 1.0), (20, 0.8), (30, 0.7)]
PRUNE_CASES = {  # name: (the run's evaluations, pruned?) against BEST with the default 25% margin
    "30% above": ([(0, 2.0), (10, 1.3)], True),  # 30% above the best run's 1.0 at step 10
    "20% above": ([(0, 2.0), (10, 1.2)], False),  # 20% above: within the margin
    "exactly 25% above": ([(10, 1.25)], False),  # exactly 25% above is not more than 25%
    "nearest step before": ([(12, 1.2)], False),  # nearest step 10 (1.0)
    "nearest step after": ([(16, 1.05)], True),  # nearest step 20 (0.8): 31% above
    "equally near": ([(15, 1.3)], True),  # steps 10 and 20 equally near: the earlier one (1.0) counts
    "first two decide": ([(10, 1.1), (20, 0.9), (30, 5.0)], False),  # only the first two evaluations decide
    "second above": ([(10, 1.1), (20, 1.01)], True),  # the second evaluation is 26% above 0.8
    "step 0 only": ([(0, 100.0)], False),  # step 0 scores the untuned base model: no evidence
    "nan": ([(10, math.nan)], True),  # diverged
    "inf": ([(10, math.inf)], True),
    "no evaluations": ([], False),
}


@pytest.mark.parametrize("case", PRUNE_CASES)
def test_the_pruning_rule_with_numbers(case):
    evals, expected = PRUNE_CASES[case]
    assert should_prune(evals, BEST) is expected, evals


def test_the_pruning_rule_with_another_margin_first_or_no_reference():
    assert should_prune([(10, 1.3)], BEST, margin=0.5) is False and should_prune([(10, 1.6)], BEST, margin=0.5)
    assert should_prune([(10, 1.1), (20, 1.01)], BEST, first=1) is False
    assert should_prune([(10, 9.0)], []) is False and should_prune([(10, 9.0)], [(0, 1.0)]) is False, "no reference"


def test_eval_losses_and_best_run():
    events = [
        {"event": "eval", "step": 0, "eval_loss": 2.0},
        {"event": "train", "step": 5, "loss": 1.0},
        {"event": "eval", "step": 10, "eval_loss": 1.5},
        {"event": "eval", "step": 10, "eval_loss": 1.4},
        {"event": "eval", "step": 20},
    ]
    assert eval_losses(events) == [(0, 2.0), (10, 1.4)], "the last record of a step counts; no loss, no point"
    scores = {"a": 0.8, "b": None, "c": 0.9, "d": 0.9}
    assert best_run(scores, "accuracy") == "c", "higher is better; the first of a tie"
    assert best_run(scores, "perplexity") == "a" and best_run({"b": None}, "accuracy") is None


def test_prune_stops_a_clearly_worse_run_and_records_it(tiny_checkpoints, tmp_path):
    # A classification head trained at learning rate 1.0 scores an eval loss of about 9 at its first evaluation,
    # against 0.69 for the first run: far past the margin. 300 steps: still training when pruned.
    config = _yaml(
        tmp_path / "run.yaml",
        model_name_or_path=str(tiny_checkpoints["bert"]),
        output_dir=str(tmp_path),
        train_file=str(write_sentiment_csv(tmp_path / "reviews.csv")),
        max_steps=300,
        eval_steps=4,
        logging_steps=4,
        learning_rate=2e-3,
        mixed_precision="no",
        save_steps=1000,
    )
    result = run_cli(
        "--config",
        str(config),
        "--grid",
        "head_learning_rate=1e-2,1.0",
        "--experiment",
        "heads",
        "--prune",
        launcher=SWEEP,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_json(tmp_path / "heads" / "experiment.json")
    assert record["pruned"] == ["heads-02"] and record["best"] == "heads-01"
    assert record["prune"] == {"margin": 0.25, "evaluations": 2}
    status = read_json(tmp_path / "heads" / "heads-02" / "status.json")
    assert status["state"] == "cancelled" and status["pruned"] is True and status["step"] < 300
    assert not (tmp_path / "heads" / "heads-02" / "metrics.json").exists()
    rows = [line.split() for line in result.stdout.splitlines() if line.lstrip("★ ").startswith("heads-0")]
    assert [row[-1] for row in rows] == ["finished", "pruned"] and rows[0][0] == "★"


def test_the_grid_takes_the_forms_labels_suggests_names_and_lists_every_problem():
    assert parse_grid_text("Learning rate = 1e-4, 3e-4\nLoRA r=8,16\n") == {
        "learning_rate": ["1e-4", "3e-4"],
        "lora_r": ["8", "16"],
    }
    with pytest.raises(ConfigError) as err:
        parse_grid_text("learnin_rate=1e-4,3e-4\nlora_rr=8,16\nbogus=1\n")
    assert [str(p) for p in err.value.problems] == [
        "learnin_rate: 'learnin_rate' is not a setting; did you mean learning_rate?",
        "lora_rr: 'lora_rr' is not a setting; did you mean lora_r?",
        "bogus: 'bogus' is not a setting; expected a setting's name (learning_rate) or its label",
    ]
