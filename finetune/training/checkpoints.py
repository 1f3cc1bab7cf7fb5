"""Resumable checkpoints of a run: accelerate's save_state plus the trainer's progress, marked complete last."""

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.rundir import CHECKPOINT_COMPLETE, TRAINER_STATE, RunDirectory, read_json, write_json_atomic
from finetune.training import speed
from finetune.training.progress import BestWeights, TrainerState

logger = logging.getLogger(__name__)


def save_checkpoint(
    accelerator: Accelerator, run: RunDirectory, state: TrainerState, keep: Optional[int], best: BestWeights
) -> Path:
    """accelerate's save_state plus trainer_state.json and the best weights so far, then the completion marker once
    every process is done, and the step saved into status.json (RunDirectory.record_checkpoint)."""
    began = time.time()  # the step was trained by then: the save is no part of its pace (Unix s)
    path = run.checkpoints_dir / f"step_{state.step}"
    if accelerator.is_main_process:
        (path / CHECKPOINT_COMPLETE).unlink(missing_ok=True)  # re-saving this step: incomplete until marked again
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()  # each process writes its own RNG state
    if accelerator.is_main_process:
        write_json_atomic(path / TRAINER_STATE, asdict(state))
        best.save_into(path)
        write_json_atomic(path / CHECKPOINT_COMPLETE, {"complete": True, "step": state.step})
        run.record_checkpoint(state.step, began)
        for old in run.checkpoints()[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def checkpoint_to_resume(cfg: TrainConfig, run: RunDirectory) -> Optional[Path]:
    """The checkpoint named by resume_from_checkpoint (true = latest), or None to start fresh: also when ``true``
    finds none yet (a run killed before its first checkpoint starts over from step 0 with the same seed, which
    trains exactly as the first attempt would have)."""
    if cfg.resume_from_checkpoint in (None, False):
        return None
    if cfg.resume_from_checkpoint is True:
        for partial in run.checkpoints(complete=False):
            logger.warning("Skipping %s: the save was cut short (no %s)", partial, CHECKPOINT_COMPLETE)
        latest = run.latest_checkpoint()
        if latest is None:
            logger.warning("No complete checkpoint under %s yet: starting over from step 0", run.checkpoints_dir)
        return latest
    path = Path(cfg.resume_from_checkpoint)
    if not (path / CHECKPOINT_COMPLETE).is_file():
        raise UserError(
            f"resume_from_checkpoint: {path} is not a complete checkpoint directory (no {CHECKPOINT_COMPLETE})"
        )
    return path


def load_checkpoint(accelerator: Accelerator, path: Path, model: nn.Module) -> TrainerState:
    """Model, optimizer, scheduler, RNG and sampler state plus progress. Checkpoints hold the trained weights only
    (speed.keep_trainable_weights), so they load non-strictly once checked to hold every one of them."""
    speed.check_checkpoint_weights(model, path)
    # DeepSpeed saves and loads its whole engine itself; its load_checkpoint takes no `strict`.
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    accelerator.load_state(str(path), **({} if deepspeed else {"strict": False}))
    values = read_json(path / TRAINER_STATE)
    if values is None:
        raise UserError(
            f"resume_from_checkpoint: {path / TRAINER_STATE} is missing or not valid JSON; resume from "
            "another checkpoint of the run"
        )
    values["best_eval_loss"] = float(values["best_eval_loss"])
    return TrainerState(**values)
