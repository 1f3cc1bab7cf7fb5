"""The accelerate launch presets in configs/accelerate/: each is a valid accelerate config, and the CPU ones
really run; two DDP processes on the CPU train exactly like one process on the same global batch."""

import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO, read_events, read_json, run_cli, write_sentiment_csv

PRESETS = REPO / "configs" / "accelerate"
EXPECTED = {"cpu", "cpu_ddp", "single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "two_machines"}


def _launch_args(preset: Path, *extra: str):
    """What `accelerate launch --config_file PRESET [extra] finetune/train.py --config x.yaml` resolves to."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    command = ["--config_file", str(preset), *extra, "finetune/train.py", "--config", "x.yaml"]
    args = launch_command_parser().parse_args(command)
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args


def _launch_env(args) -> dict:
    """The environment accelerate's launcher would give the processes (built without starting any)."""
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    if args.use_deepspeed:
        return prepare_deepspeed_cmd_env(args)[1]
    if args.use_fsdp or args.multi_gpu:
        return prepare_multi_gpu_env(args)
    return prepare_simple_launcher_cmd_env(args)[1]


def test_every_preset_is_a_valid_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    launch_options = {action.dest for action in launch_command_parser()._actions}
    files = sorted(PRESETS.glob("*.yaml"))
    assert {f.stem for f in files} == EXPECTED
    checked = 0
    for path in files:
        config = load_config_from_file(str(path))  # rejects unknown top-level keys and bad distributed_type
        # Nested keys are copied to `accelerate launch` options of the same name; an unknown one would be ignored.
        nested = {**config.fsdp_config, **config.deepspeed_config}
        assert not [key for key in nested if key not in launch_options], path.name
        # The run's own mixed_precision (TrainConfig) is passed to Accelerator() and decides; presets stay neutral.
        assert config.mixed_precision == "no", path.name
        # The launcher accepts it and can build its processes' environment. The two-machine preset's fixed port
        # is swapped for a free one so a busy 29500 on the test machine cannot fail the check.
        extra = ("--main_process_port", "0") if config.num_machines > 1 else ()
        env = _launch_env(_launch_args(path, *extra))
        assert env["ACCELERATE_MIXED_PRECISION"] == "no", path.name
        checked += 1
    assert checked == 7


def test_presets_start_the_intended_processes():
    cpu, cpu_ddp = _launch_args(PRESETS / "cpu.yaml"), _launch_args(PRESETS / "cpu_ddp.yaml")
    assert not cpu.multi_gpu and cpu.num_processes == 1 and _launch_env(cpu)["ACCELERATE_USE_CPU"] == "True"
    # Several local processes: only the multi-process (torchrun) launcher starts them; GPUs are hidden from them.
    assert cpu_ddp.multi_gpu and cpu_ddp.num_processes == 2 and _launch_env(cpu_ddp)["CUDA_VISIBLE_DEVICES"] == "-1,-1"
    # --num_processes on the command line wins over the preset (the web app passes its GPU count).
    assert _launch_args(PRESETS / "multi_gpu.yaml", "--num_processes", "4").num_processes == 4
    # gpu_ids "all": the web app's job runner assigns GPUs through CUDA_VISIBLE_DEVICES; presets must not overwrite it.
    for name in ("single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2"):
        env = _launch_env(_launch_args(PRESETS / f"{name}.yaml"))
        assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES"), name
    # Two machines: the same file on both, --machine_rank 1 on the second; 16 processes = 8 per machine.
    second = _launch_args(PRESETS / "two_machines.yaml", "--machine_rank", "1")
    _launch_env(second)
    assert (second.nnodes, second.nproc_per_node, second.node_rank) == ("2", "8", 1)
    assert (second.rdzv_backend, second.rdzv_endpoint) == ("static", "10.0.0.1:29500")
    deepspeed = _launch_env(_launch_args(PRESETS / "deepspeed_zero2.yaml"))
    assert deepspeed["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    # A preset's gradient_accumulation_steps would be exported and override the run's own setting.
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in deepspeed


def test_fsdp_preset_suits_lora(monkeypatch):
    """The FSDP plugin accelerate builds in each process from the preset: original parameters kept (frozen and
    trainable LoRA weights share units), whole tensors on save, one unit per transformer block."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from accelerate.utils import dataclasses as accelerate_dataclasses
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    env = _launch_env(_launch_args(PRESETS / "fsdp.yaml"))
    # sync_module_states asks the current GPU for its index; this machine may have none.
    monkeypatch.setattr(accelerate_dataclasses, "is_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with patch_environment(**{k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1 and plugin.use_orig_params is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_several_processes_without_gpu_pick_the_cpu(monkeypatch):
    """accelerate forms a CPU (gloo) group only with ACCELERATE_USE_CPU=true, which its multi-process launcher never
    exports; the trainer asks for the CPU itself when it is one of several processes and sees no GPU."""
    import torch

    from finetune.processes import several_processes_without_accelerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert several_processes_without_accelerator() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    has_gpu = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    assert several_processes_without_accelerator() is (not has_gpu)


def test_processes_that_did_not_form_a_group_are_refused(monkeypatch):
    """Where they still run alone (an accelerator accelerate cannot group), they would all write one run directory."""
    from finetune.errors import UserError
    from finetune.processes import check_process_group

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

    from finetune.batches import dataloaders

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
        train_dl, _ = dataloaders(cfg, data, None, accelerator, images=False)
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
