"""Where a run stands: its counters (TrainerState), its plan of steps, the best weights kept, early stopping and the
processes' agreement on a stop. Parts of the recipe (finetune/train.py), each small enough to test on its own.
"""

import logging
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file
from torch import nn

from finetune.config import TrainConfig
from finetune.rundir import RunDirectory, read_json, write_json_atomic
from finetune.training import speed

logger = logging.getLogger(__name__)

# FSDP and DeepSpeed shard the weights across processes.
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


@dataclass
class TrainerState:
    """What a checkpoint needs beyond accelerate's save_state: progress and early-stopping memory."""

    step: int = 0
    best_eval_loss: float = math.inf
    best_step: Optional[int] = None
    evals_without_improvement: int = 0
    base_metrics: dict = field(default_factory=dict)
    base_test_metrics: dict = field(default_factory=dict)  # on test_file; empty without one
    # Training time (s) and examples seen in earlier segments of a resumed run, so totals span every segment.
    runtime_seconds: float = 0.0
    samples: int = 0

    def record_eval(self, eval_loss: float) -> None:
        if eval_loss < self.best_eval_loss:
            self.best_eval_loss, self.best_step, self.evals_without_improvement = eval_loss, self.step, 0
        else:
            self.evals_without_improvement += 1


@dataclass(frozen=True)
class Plan:
    """How long the run is and when it evaluates and saves, in optimizer steps."""

    steps_per_epoch: int
    max_steps: int
    eval_steps: int
    save_steps: int

    @classmethod
    def for_run(cls, cfg: TrainConfig, batches_per_epoch: int) -> "Plan":
        """max_steps when given, else num_train_epochs (or enough epochs for the data, TrainConfig.epochs_for)."""
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation_steps)
        max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs_for(steps_per_epoch) * steps_per_epoch)
        return cls(steps_per_epoch, max_steps, cfg.eval_steps or steps_per_epoch, cfg.save_steps or steps_per_epoch)

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.steps_per_epoch)

    def epoch(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    def logs(self, step: int, logging_steps: int) -> bool:
        return step % logging_steps == 0 or step == self.max_steps

    def evaluates(self, step: int) -> bool:
        return step % self.eval_steps == 0 or step == self.max_steps


BEST_WEIGHTS, BEST_INFO = "best_weights.safetensors", "best_weights.json"  # in a checkpoint: BestWeights.save_into


class BestWeights:
    """The trained weights (LoRA, new heads, buffers; everything when fine-tuning fully) at the lowest eval loss so
    far, copied to CPU memory, so that a run whose evaluation got worse at the end keeps its best point."""

    def __init__(self, accelerator: Accelerator, enabled: bool):
        # FSDP and DeepSpeed shard the weights across processes: their copies would not load back as a whole.
        sharded = accelerator.distributed_type in SHARDED
        self.enabled, self.weights, self.metrics, self.step = enabled and not sharded, None, None, None

    def offer(self, model: nn.Module, state: TrainerState, metrics: dict) -> None:
        if self.enabled and state.best_step == state.step:
            self.weights = {name: t.detach().to("cpu", copy=True) for name, t in speed.trained_tensors(model).items()}
            self.metrics, self.step = metrics, state.step

    def restore(self, model: nn.Module, state: TrainerState) -> Optional[dict]:
        """Loads the best weights back when they are not the current ones; returns their eval metrics, or None."""
        if self.weights is None or self.step == state.step:
            if self.enabled and state.best_step not in (None, state.step):
                logger.info(
                    "The best eval loss was at step %s, before this run resumed; its weights were not kept, "
                    "so the result is step %d",
                    state.best_step,
                    state.step,
                )
            return None
        model.load_state_dict(self.weights, strict=False)
        logger.info(
            "Restored the weights of step %d (eval loss %.4f), the best evaluation: the later ones up to "
            "step %d scored worse",
            self.step,
            self.metrics["eval_loss"],
            state.step,
        )
        return self.metrics

    def save_into(self, checkpoint: Path) -> None:
        """Part of a checkpoint: the best weights so far and their evaluation, so that a run resumed from it ends
        with the result an uninterrupted run would have (its best evaluation's weights), not its last step's."""
        if self.weights is not None:
            save_file({k: v.contiguous() for k, v in self.weights.items()}, str(checkpoint / BEST_WEIGHTS))
            write_json_atomic(checkpoint / BEST_INFO, {"step": self.step, "metrics": self.metrics})

    def load_from(self, checkpoint: Path) -> None:
        """The best weights a checkpoint holds (save_into), when it holds any."""
        info = read_json(checkpoint / BEST_INFO)
        if self.enabled and info is not None and (checkpoint / BEST_WEIGHTS).is_file():
            self.weights, self.metrics, self.step = (
                load_file(str(checkpoint / BEST_WEIGHTS)),
                info["metrics"],
                info["step"],
            )


def stop_early(state: TrainerState, patience: Optional[int], run: RunDirectory, is_main: bool) -> bool:
    """True when eval loss has not improved for ``patience`` evaluations; logged, and recorded in status.json
    (``stopped_early_at_step``) so a finished run short of its planned steps is not read as stalled."""
    if not patience or state.evals_without_improvement < patience:
        return False
    logger.info("Early stopping at step %d: eval loss has not improved for %d evaluations", state.step, patience)
    if is_main:
        run.update_status(stopped_early_at_step=state.step)
    return True


STOP_CHECK_STEPS = 10  # optimizer steps between the processes' agreements on a stop (a cancel waits that long)


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks at step boundaries, so a cancel saves a checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        logger.warning("Received %s: stopping at the next step boundary", signal.Signals(signum).name)
        self.requested = True

    def agreed(self, accelerator: Accelerator, step: int, save_due: bool = False) -> tuple[bool, bool]:
        """(stop, save a checkpoint), the same on every process once any process was signalled or found its time
        for a checkpoint come (they must stop and save at the same step). Several processes agree every
        STOP_CHECK_STEPS optimizer steps: each agreement is an all-reduce whose result the CPU waits for, which would
        stall a GPU's queue of work at every step."""
        if accelerator.num_processes == 1:
            return self.requested, save_due
        if step % STOP_CHECK_STEPS:
            return False, False
        flags = torch.tensor([float(self.requested), float(save_due)], device=accelerator.device)
        stop, save = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
        return stop, save
