"""The config schema: coercion from strings, every problem listed at once, YAMLs under configs/ load."""

import pytest
import yaml

from finetune.config import DEFAULT_HEAD_LR, DEFAULT_LORA_LR, TrainConfig, field_help, parse_args
from finetune.errors import ConfigError
from tests.conftest import REPO, run_cli

REQUIRED = {"model_name_or_path": "gpt2", "train_file": "a.txt", "output_dir": "out"}


def test_strings_are_coerced_to_field_types():
    cfg = TrainConfig.from_dict(
        {
            **REQUIRED,
            "learning_rate": "2e-4",
            "max_steps": "10",
            "lora_target_modules": "query, value",
            "resume_from_checkpoint": "true",
            "eval_steps": "none",
            "lora_alpha": 8,
        }
    )
    assert cfg.learning_rate == 2e-4 and cfg.max_steps == 10 and cfg.eval_steps is None
    assert cfg.lora_target_modules == ["query", "value"] and cfg.resume_from_checkpoint is True
    assert (
        TrainConfig.from_dict(
            {**REQUIRED, "resume_from_checkpoint": "runs/x/checkpoints/step_4"}
        ).resume_from_checkpoint
        == "runs/x/checkpoints/step_4"
    )


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(
            {
                "model_name_or_path": "gpt2",
                "bogus": 1,
                "learning_rate": "fast",
                "lora_r": 0,
                "mixed_precision": "fp8",
                "warmup_ratio": 2,
            }
        )
    problems = caught.value.problems
    expected = ["bogus", "learning_rate", "lora_r", "mixed_precision", "warmup_ratio", "train_file", "output_dir"]
    assert sorted(p.field for p in problems) == sorted(expected), problems


def test_defaults_suit_lora_and_new_heads():
    cfg = TrainConfig.from_dict(REQUIRED)
    assert cfg.learning_rate_or_default == DEFAULT_LORA_LR and cfg.head_learning_rate_or_default == DEFAULT_HEAD_LR
    full = TrainConfig.from_dict({**REQUIRED, "finetune_method": "full"})
    assert (
        full.learning_rate_or_default < DEFAULT_LORA_LR
        and full.head_learning_rate_or_default == full.learning_rate_or_default
    )
    assert cfg.warmup_ratio > 0 and cfg.num_train_epochs is None
    # Epochs from the data: about 1,000 optimizer steps, 1 to 10 epochs; an explicit value always wins.
    planned = {steps: cfg.epochs_for(steps) for steps in (30, 100, 338, 1000, 5000)}
    assert planned == {30: 10, 100: 10, 338: 3, 1000: 1, 5000: 1}
    assert TrainConfig.from_dict({**REQUIRED, "num_train_epochs": "2.5"}).epochs_for(30) == 2.5


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**REQUIRED, "learning_rate": 1e-3, "seed": 1}))
    cfg = parse_args(["--config", str(path), "--learning_rate", "5e-5", "--lora_r", "4"])
    assert (cfg.learning_rate, cfg.lora_r, cfg.seed) == (5e-5, 4, 1)


def test_every_config_under_configs_loads():
    paths = sorted((REPO / "configs").glob("*.yaml"))
    families = set()
    for path in paths:
        cfg = TrainConfig.from_yaml(path)
        families.add(cfg.model_name_or_path)
    assert len(paths) == 4
    assert families == {"gpt2", "bert-base-uncased", "google/vit-base-patch16-224-in21k", "microsoft/resnet-50"}


def test_command_line_reports_bad_config_before_loading_anything(tmp_path):
    result = run_cli(
        "--config",
        str(REPO / "configs" / "bert.yaml"),
        "--output_dir",
        str(tmp_path / "run"),
        "--lora_r",
        "-3",
        "--colour",
        "blue",
        "--learning_rate",
        "quick",
    )
    assert result.returncode == 2
    for expected in (
        "lora_r: must be a positive integer, got -3",
        "--colour: unknown",
        "learning_rate: expected a number",
    ):
        assert expected in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_absurd_sizes_are_refused_before_any_model_loads():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(
            {
                **REQUIRED,
                "lora_r": "1e9",
                "learning_rate": 50,
                "per_device_train_batch_size": 10**9,
                "block_size": 10**9,
                "max_eval_samples": 0,
                "max_compression_ratio": -1,
            }
        )
    problems = caught.value.problems
    expected = [
        "lora_r",
        "learning_rate",
        "per_device_train_batch_size",
        "block_size",
        "max_eval_samples",
        "max_compression_ratio",
    ]
    assert {p.field for p in problems} == set(expected)
    assert len(problems) == len(expected) and "learning_rate: 50 is beyond any useful value" in " ".join(
        map(str, problems)
    )


def test_help_lists_every_setting_with_its_text(capsys):
    """`python -m finetune.train --help` (the README's promise): argparse formats help with %, which help texts
    hold ("~30% more compute")."""
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"], description="the recipe")
    assert done.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    for name in field_help():
        assert f"--{name}" in printed
    assert "~30% more compute" in printed
