"""The accelerate launch presets in configs/accelerate/: each is a valid accelerate config, and the CPU ones
really run; two DDP processes on the CPU train exactly like one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO, read_events, read_json, run_cli, write_sentiment_csv

PRESETS = REPO / "configs" / "accelerate"
EXPECTED = {"cpu", "cpu_ddp", "single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "two_machines"}


# What each started process sees of the launch: written by every rank to OUT.<rank>.json.
DUMP_ENV = """
import json, os, sys
keys = ("ACCELERATE_", "FSDP_", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK")
seen = {k: v for k, v in os.environ.items() if k.startswith(keys)}
with open(f"{sys.argv[1]}.{os.environ.get('RANK', '0')}.json", "w") as f:
    json.dump(seen, f)
"""
# Presets this machine can start: the DeepSpeed one needs deepspeed (not installed here), and the two-machine one
# would wait for a second machine at 10.0.0.1.
LAUNCHABLE = ("cpu", "cpu_ddp", "single_gpu", "multi_gpu", "fsdp")


def launch_processes(tmp_path: Path, preset: str, *extra: str, env: dict | None = None) -> list[dict]:
    """Start `accelerate launch --config_file PRESET [extra] script` for real, as a user would, with a script that
    records its environment; the environment of every process it started, by rank."""
    script, out = tmp_path / "dump_env.py", tmp_path / preset
    script.write_text(DUMP_ENV)
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file"]
    command += [str(PRESETS / f"{preset}.yaml"), *extra, str(script), str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{preset}: {result.stderr[-3000:]}"
    files = sorted(tmp_path.glob(f"{preset}.*.json"), key=lambda f: int(f.name.split(".")[-2]))
    return [json.loads(f.read_text()) for f in files]


def test_every_preset_is_a_valid_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted(PRESETS.glob("*.yaml"))
    assert {f.stem for f in files} == EXPECTED
    for path in files:
        config = load_config_from_file(str(path))  # rejects unknown top-level keys and bad distributed_type
        # The run's own mixed_precision (TrainConfig) is passed to Accelerator() and decides; presets stay neutral.
        assert config.mixed_precision == "no", path.name
    two = load_config_from_file(str(PRESETS / "two_machines.yaml"))
    assert (two.num_machines, two.num_processes, two.rdzv_backend) == (2, 16, "static")
    deepspeed = load_config_from_file(str(PRESETS / "deepspeed_zero2.yaml"))
    assert deepspeed.deepspeed_config["zero_stage"] == 2
    # A preset's gradient_accumulation_steps would be exported and override the run's own setting.
    assert "gradient_accumulation_steps" not in deepspeed.deepspeed_config


@pytest.mark.parametrize("preset", LAUNCHABLE)
def test_launched_presets_leave_precision_to_the_run(preset, tmp_path):
    for env in launch_processes(tmp_path, preset):
        assert env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_presets_start_the_intended_processes(tmp_path):
    (cpu,) = launch_processes(tmp_path, "cpu")
    assert cpu["ACCELERATE_USE_CPU"].lower() == "true" and "WORLD_SIZE" not in cpu
    # Several local processes: only the multi-process (torchrun) launcher starts them.
    ddp = launch_processes(tmp_path, "cpu_ddp")
    assert [(e["RANK"], e["WORLD_SIZE"]) for e in ddp] == [("0", "2"), ("1", "2")]
    # --num_processes on the command line wins over the preset (the web app passes its GPU count).
    assert [e["WORLD_SIZE"] for e in launch_processes(tmp_path, "multi_gpu", "--num_processes", "3")] == ["3"] * 3
    # gpu_ids "all": the web app's job runner assigns GPUs through CUDA_VISIBLE_DEVICES; presets must not overwrite it.
    assigned = {**os.environ, "CUDA_VISIBLE_DEVICES": "5"}
    for name in ("single_gpu", "fsdp"):
        envs = launch_processes(tmp_path, name, "--num_processes", "1" if name == "single_gpu" else "2", env=assigned)
        assert {e.get("CUDA_VISIBLE_DEVICES") for e in envs} == {"5"}, name


def test_fsdp_preset_suits_lora(tmp_path):
    """The FSDP plugin accelerate builds in each process from the preset: original parameters kept (frozen and
    trainable LoRA weights share units), whole tensors on save, one unit per transformer block."""
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    env = launch_processes(tmp_path, "fsdp")[0]
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    # sync_module_states asks the current GPU for its index, and this machine may have none: the plugin is built
    # here without that one key (checked above).
    chosen = {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_")) and k != "FSDP_SYNC_MODULE_STATES"}
    with patch_environment(**chosen):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1 and plugin.use_orig_params is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_several_processes_without_gpu_pick_the_cpu(monkeypatch):
    """accelerate forms a CPU (gloo) group only with ACCELERATE_USE_CPU=true, which its multi-process launcher never
    exports; the trainer asks for the CPU itself when it is one of several processes and sees no GPU."""
    import torch

    from finetune.training.processes import several_processes_without_accelerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert several_processes_without_accelerator() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    has_gpu = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    assert several_processes_without_accelerator() is (not has_gpu)


def test_processes_that_did_not_form_a_group_are_refused(monkeypatch):
    """Where they still run alone (an accelerator accelerate cannot group), they would all write one run directory."""
    from finetune.errors import UserError
    from finetune.training.processes import check_process_group

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="2 processes were launched but each runs alone"):
        check_process_group(SimpleNamespace(num_processes=1, device="mps"))
    check_process_group(SimpleNamespace(num_processes=2, device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_process_group(SimpleNamespace(num_processes=1, device="cpu"))


@pytest.mark.parametrize("grouped", [False, True])
def test_each_process_gets_half_of_the_single_process_batch(grouped):
    """The engine's DataLoader sharded by accelerate (seedable sampler, 2 processes x 4) splits exactly the
    batches one process draws with batch size 8: rank 0 the first half, rank 1 the second, every epoch; also
    with length-grouped batches (texts of similar length together)."""
    from accelerate.data_loader import prepare_data_loader
    from datasets import Dataset

    from finetune.data.batches import dataloaders

    columns = {"x": list(range(216))}
    if grouped:
        columns["length"] = [(i * 37) % 101 for i in range(216)]
    data = {"train": Dataset.from_dict(columns), "validation": Dataset.from_dict({"x": []})}

    def batches(num_processes: int, rank: int, batch_size: int, epoch: int) -> list[list[int]]:
        cfg = SimpleNamespace(
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            seed=42,
            group_by_length=True,
            dataloader_num_workers=None,
        )
        accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=num_processes)
        train_dl, _, _ = dataloaders(cfg, data, None, accelerator, images=False)
        sharded = prepare_data_loader(
            train_dl, num_processes=num_processes, process_index=rank, put_on_device=False, use_seedable_sampler=True
        )
        sharded.set_epoch(epoch)
        return [batch["x"].tolist() for batch in sharded]

    for epoch in (0, 1):
        one = batches(1, 0, 8, epoch)
        first, second = batches(2, 0, 4, epoch), batches(2, 1, 4, epoch)
        assert len(one) == len(first) == len(second) == 27
        assert [a + b for a, b in zip(first, second)] == one
        if grouped:  # similar lengths share a batch: the spread inside batches is far below the data's (0-100)
            spreads = [max(columns["length"][i] for i in b) - min(columns["length"][i] for i in b) for b in one]
            assert sum(spreads) / len(spreads) < 20
    assert batches(1, 0, 8, 0) != batches(1, 0, 8, 1)  # and epochs are shuffled differently


@pytest.fixture(scope="module")
def one_and_two_process_runs(tiny_checkpoints, tmp_path_factory) -> dict[int, Path]:
    """The same run through the real CLI: cpu.yaml with 1 process x 8 examples, cpu_ddp.yaml with 2 x 4."""
    root = tmp_path_factory.mktemp("presets")
    # Dropout draws different masks for one batch of 8 than for two batches of 4 (each process seeds its RNG
    # alike), so the runs could not match with it. lora_dropout is a run setting; the model's own dropout lives
    # in its config.json, so a copy of the tiny BERT without it stands in.
    checkpoint = shutil.copytree(tiny_checkpoints["bert"], root / "bert-no-dropout")
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (checkpoint / "config.json").write_text(json.dumps(config))
    data = write_sentiment_csv(root / "reviews.csv")  # 216 training rows: 27 global batches of 8, none partial
    common = [
        "--model_name_or_path",
        str(checkpoint),
        "--train_file",
        str(data),
        "--seed",
        "42",
        "--learning_rate",
        "1e-2",
        "--head_learning_rate",
        "1e-2",
        "--lora_dropout",
        "0",
        "--max_steps",
        "36",
        "--logging_steps",
        "1",
        "--eval_steps",
        "18",
        "--save_steps",
        "1000",
        # fp32: bf16 rounds a batch of 8 and two of 4 differently, and this compares them to 1e-5.
        "--mixed_precision",
        "no",
    ]
    runs = {}
    for processes, preset, batch in ((1, "cpu", "8"), (2, "cpu_ddp", "4")):
        launcher = (
            sys.executable,
            "-m",
            "accelerate.commands.accelerate_cli",
            "launch",
            "--config_file",
            str(PRESETS / f"{preset}.yaml"),
            "finetune/train.py",
        )
        out = root / preset
        result = run_cli(*common, "--per_device_train_batch_size", batch, "--output_dir", str(out), launcher=launcher)
        assert result.returncode == 0, f"{preset} failed:\n{result.stderr[-3000:]}"
        runs[processes] = out
    return runs


def test_two_cpu_processes_train_like_one_on_the_same_global_batch(one_and_two_process_runs):
    one, two = (read_json(one_and_two_process_runs[n] / "metrics.json") for n in (1, 2))
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["device"] == "cpu" and two["device"].startswith("cpu")
    # A real learning curve (36 steps crossing an epoch boundary), not a flat line that would match trivially.
    assert one["finetuned"]["eval_loss"] < 0.7 * one["base"]["eval_loss"]  # measured: 0.343 vs 0.693
    # Not bit-identical: DDP averages the two halves' gradients with an all-reduce and the logged loss is the
    # mean of two per-process means, summed in a different order than one batch of 8. Measured differences
    # are around 1e-7 relative; 1e-4 leaves room for platform differences and still catches any change of
    # data, order or step (which moves the losses by whole percent).
    tolerance = dict(rel=1e-4, abs=1e-6)
    losses = [[e["loss"] for e in read_events(one_and_two_process_runs[n]) if e["event"] == "train"] for n in (1, 2)]
    assert len(losses[0]) == len(losses[1]) == 36
    assert losses[1] == pytest.approx(losses[0], **tolerance)  # every step, so the final train loss too
    assert two["finetuned"]["eval_loss"] == pytest.approx(one["finetuned"]["eval_loss"], **tolerance)
    assert two["base"]["eval_loss"] == pytest.approx(one["base"]["eval_loss"], **tolerance)
    assert two["finetuned"]["accuracy"] == one["finetuned"]["accuracy"]
    # Every eval example counted once on 2 processes too (gather_for_metrics drops the padding duplicates).
    counted = [sum(map(sum, run["finetuned"]["confusion_matrix"])) for run in (one, two)]
    assert counted == [24, 24]
