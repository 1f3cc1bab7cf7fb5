"""FSDP as the trainer sets it up. accelerate shards only on GPUs (its state turns GPU process groups into FSDP, never
CPU ones), so the wrap policy is proven with torch's FSDP1 itself on 2 CPU processes, and an FSDP launch that
accelerate would run as plain DDP on CPU is refused rather than run unsharded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OFFLINE_ENV, REPO, run_cli, write_lm_text

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _grads(checkpoint: Path, policy: str) -> dict:
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(Path(__file__).with_name("fsdp_grads.py")),
         str(checkpoint), policy],
        capture_output=True, text=True, cwd=REPO, env={**OFFLINE_ENV, "PYTHONPATH": str(REPO)}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_lora_layers_get_fsdp_units_of_their_own_so_frozen_weights_hold_no_gradient(tiny_checkpoints):
    preset = _grads(tiny_checkpoints["gpt2"], "transformer")
    trainer = _grads(tiny_checkpoints["gpt2"], "trainer")
    # Rank 0 holds half of the trainable elements: its shard. The preset's blocks alone mix frozen and LoRA weights,
    # and FSDP keeps a gradient for the whole flat parameter.
    assert trainer["flat_grad_elements"] == trainer["trainable_elements"] // 2, trainer
    assert preset["flat_grad_elements"] > 10 * trainer["flat_grad_elements"], (preset, trainer)
    assert trainer["units"] > preset["units"]


@pytest.mark.parametrize("preset", ["fsdp"])
def test_an_fsdp_launch_on_cpu_processes_is_refused_not_run_unsharded(tiny_checkpoints, tmp_path, preset):
    text = write_lm_text(tmp_path / "lm.txt", lines=120)
    env = {**OFFLINE_ENV, "ACCELERATE_USE_CPU": "true"}
    result = run_cli(
        "--model_name_or_path", str(tiny_checkpoints["gpt2"]), "--train_file", str(text), "--task", "causal-lm",
        "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
        launcher=[sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "configs" / "accelerate" / f"{preset}.yaml"), "--num_processes", "2",
                  "--fsdp_sync_module_states", "false", str(REPO / "finetune" / "train.py")],
        env=env,
    )  # fmt: skip
    assert result.returncode != 0
    log = (tmp_path / "run" / "train.log").read_text() if (tmp_path / "run" / "train.log").exists() else ""
    assert "accelerate shards only on GPUs" in result.stderr + log, (result.stderr[-2000:], log[-2000:])
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert os.environ.get("ACCELERATE_USE_CPU") is None, "the test's own environment is left as it was"
