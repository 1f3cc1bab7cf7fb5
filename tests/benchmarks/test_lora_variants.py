"""benchmarks.lora_variants without training: every variant is a valid run setting, and the table reads right."""

import pytest

from benchmarks.lora_variants import VARIANTS, main, table
from finetune.config import TrainConfig

REQUIRED = {"model_name_or_path": "m", "train_file": "t.csv", "output_dir": "out"}


NAMES = ["lora", "rslora", "dora", "pissa", "olora", "loraplus", "all-linear"]


def test_the_benchmark_runs_the_listed_variants():
    assert sorted(VARIANTS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_is_a_valid_run_setting(name):
    flags = VARIANTS[name]
    settings = {flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2])}
    TrainConfig.from_dict({**REQUIRED, **settings})  # raises ConfigError on a stale flag or value


def test_table_shows_figures_and_failures():
    rows = [
        {
            "variant": "lora",
            "accuracy": 0.6167,
            "eval_loss": 0.8762,
            "trainable_parameters": 222339,
            "seconds_per_step": 0.2001,
            "peak_memory_mb": 920.4,
        },
        {"variant": "dora", "error": "error: boom"},
    ]
    lines = table(rows).splitlines()
    assert lines[2] == "| lora | 0.617 | 0.876 | 222,339 | 0.200 | 920 |"
    assert lines[3] == "| dora | failed: error: boom | | | | |"
    assert len(lines) == 4


def test_an_unknown_variant_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--variants", "lora,qdora"])
    assert "unknown ['qdora']" in capsys.readouterr().err
