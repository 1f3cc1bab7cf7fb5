"""Fine-tune a GPT-2, BERT, ViT or ResNet checkpoint with LoRA (or fully) on Accelerate.

    accelerate launch finetune/train.py --config run.yaml [--key value ...]
    python -m finetune.train --config run.yaml [--key value ...]

Flags override the YAML's keys. The recipe reads top to bottom: config, accelerator, data, model,
optimizer, loop, save. Everything it produces goes to the run directory (finetune/rundir.py).
"""

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from finetune.config import TrainConfig, parse_args
from finetune.errors import ConfigError, UserError
from finetune.rundir import CANCELLED, FAILED, FINISHED, RunDirectory, output_dir_problem

logger = logging.getLogger("finetune")


@dataclass
class Recipe:
    """Everything the loop works with, built once by ``set_up``."""

    cfg: TrainConfig
    run: RunDirectory
    accelerator: Any
    task: Any
    model: Any
    processor: Any
    labels: Optional[list[str]]
    derived: dict  # settings chosen from the data (max_seq_length, block_size)
    optimizer: Any
    scheduler: Any
    train_dl: Any
    eval_dl: Any
    test_dl: Any  # None without a test_file
    plan: Any  # progress.Plan

    def evaluate(self, step: int) -> dict:
        """Score the eval split and log it as an eval event: the one place training evaluates."""
        metrics = self._score(self.eval_dl, self.run.examples_path("validation", step))
        self.accelerator.log(metrics, step=step, log_kwargs={"run_directory": {"event": "eval"}})
        return metrics

    def score_test(self, model: str) -> dict:
        """The "base" or "finetuned" ``model``'s scores on the test split ({} without a test_file): kept apart from
        evaluation, nothing selects on it."""
        return {} if self.test_dl is None else self._score(self.test_dl, self.run.examples_path("test", model))

    def _score(self, dataloader, keep: Path) -> dict:
        from finetune.training import engine

        labels = len(self.labels or []) or None
        return engine.evaluate(self.model, dataloader, self.accelerator, self.task, labels, self.run, keep)


def train(cfg: TrainConfig, run: RunDirectory) -> str:
    """Run the recipe; returns the final state (finished or cancelled)."""
    from finetune.training import progress, reproducibility, throughput

    stop = progress.StopSignal()
    recipe = set_up(cfg, run)
    reproducibility.write_record(cfg, run, recipe.accelerator)  # training only: Check (preflight) hashes nothing
    best = progress.BestWeights(recipe.accelerator, cfg.load_best_model_at_end)
    state, result = _start_or_resume(recipe, best)
    if state.step >= recipe.plan.max_steps and run.metrics_path.is_file():
        logger.info("The run finished at step %d already: nothing to train, and its result stays as it is", state.step)
        return FINISHED
    # The loop's clock starts after the base evaluation or the resume: the web app's ETA paces only this segment.
    meter = throughput.meter_for(
        cfg, recipe.accelerator, recipe.model, recipe.train_dl.dataset, recipe.task, recipe.train_dl.collate_fn
    )
    if recipe.accelerator.is_main_process:
        run.update_status(
            total_steps=recipe.plan.max_steps,
            steps_per_epoch=recipe.plan.steps_per_epoch,
            num_processes=recipe.accelerator.num_processes,
            loop_started_at=meter.started,
            loop_start_step=state.step,
            step=state.step,  # a resumed run reads at its checkpoint's step before its first log
        )
    outcome, result = _loop(recipe, state, meter, stop, best, result)
    recipe.accelerator.wait_for_everyone()
    if outcome == FINISHED:
        _finish(recipe, state, meter, best, result)
    recipe.accelerator.end_training()
    return outcome


def set_up(cfg: TrainConfig, run: RunDirectory) -> Recipe:
    """Accelerator, data, model, optimizer and schedule, prepared for this run's processes."""
    from accelerate.utils import set_seed

    from finetune.data.batches import dataloaders
    from finetune.tasks import get_task
    from finetune.training import engine, progress, speed
    from finetune.training.processes import describe_wrapping, run_accelerator, wrap_lora_layers_apart

    accelerator = run_accelerator(cfg, run)
    set_seed(cfg.seed)
    task = get_task(cfg.task)
    if accelerator.is_main_process:
        logger.info("Task %s on %d process(es), device %s", task.name, accelerator.num_processes, accelerator.device)
    model, processor, data, labels, derived, new_heads = _load_data_and_model(cfg, accelerator, task)
    engine.keep_initial_adapter(model, cfg, run, accelerator)
    train_dl, eval_dl, test_dl = dataloaders(
        cfg, data, task.collate_fn(processor), accelerator, images=task.unit == "images"
    )
    sharded = accelerator.distributed_type in progress.SHARDED
    speed.store_frozen_weights_in_bf16(model, accelerator.mixed_precision, cfg.finetune_method, sharded)
    model = speed.for_this_device(model, speed.uses_cuda(), cfg.torch_compile)
    optimizer = engine.build_optimizer(model, cfg, new_heads)
    wrap_lora_layers_apart(accelerator, model)
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)
    test_dl = accelerator.prepare(test_dl) if test_dl is not None else None
    if accelerator.is_main_process:
        logger.info("Model prepared as %s", describe_wrapping(model))
    plan = progress.Plan.for_run(cfg, len(train_dl))
    return Recipe(
        cfg,
        run,
        accelerator,
        task,
        model,
        processor,
        labels,
        derived,
        optimizer,
        _scheduler(cfg, optimizer, plan, accelerator),
        train_dl,
        eval_dl,
        test_dl,
        plan,
    )


def _scheduler(cfg: TrainConfig, optimizer, plan, accelerator):
    from transformers import get_scheduler

    # The prepared scheduler steps once per process per optimizer step (accelerate's convention).
    return accelerator.prepare(
        get_scheduler(
            cfg.lr_scheduler_type,
            optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * plan.max_steps) * accelerator.num_processes,
            num_training_steps=plan.max_steps * accelerator.num_processes,
        )
    )


def _start_or_resume(recipe: Recipe, best):
    """(trainer state, latest evaluation): a fresh run scores the untuned base model first; a resumed one finds the
    evaluation of its checkpoint's step in its events (None when there was none), and takes back the checkpoint's
    best weights into ``best``."""
    from finetune.training import checkpoints, progress

    resume_from = checkpoints.checkpoint_to_resume(recipe.cfg, recipe.run)
    if resume_from is None and recipe.cfg.resume_from_checkpoint and recipe.accelerator.is_main_process:
        recipe.run.events_path.unlink(missing_ok=True)  # starting over: the first attempt's events are replaced
    if resume_from is not None:
        state = checkpoints.load_checkpoint(recipe.accelerator, resume_from, recipe.model)
        best.load_from(resume_from)
        if recipe.accelerator.is_main_process:
            recipe.run.keep_events_up_to(state.step)
        logger.info("Resumed from %s at step %d", resume_from, state.step)
        return state, recipe.run.evaluation_at(state.step)
    state = progress.TrainerState()
    state.base_metrics = recipe.evaluate(step=0)
    state.base_test_metrics = recipe.score_test("base")
    return state, state.base_metrics


def _batches(recipe: Recipe, state):
    """The training batches from the current step to the end of the last epoch, resuming mid-epoch where the
    checkpoint was taken. A run resumed from its last checkpoint (step == max_steps) has none left."""
    plan, accelerator = recipe.plan, recipe.accelerator
    for epoch in range(state.step // plan.steps_per_epoch, plan.num_epochs if state.step < plan.max_steps else 0):
        recipe.train_dl.set_epoch(epoch)
        done_in_epoch = (state.step - epoch * plan.steps_per_epoch) * recipe.cfg.gradient_accumulation_steps
        yield from accelerator.skip_first_batches(recipe.train_dl, done_in_epoch) if done_in_epoch else recipe.train_dl


def _loop(recipe: Recipe, state, meter, stop, best, result: Optional[dict]) -> tuple[str, Optional[dict]]:
    """Train until max_steps, early stopping or a cancel; returns (finished|cancelled, latest evaluation)."""
    from finetune.training import checkpoints, progress

    cfg, accelerator, model, plan = recipe.cfg, recipe.accelerator, recipe.model, recipe.plan
    segment = (state.runtime_seconds, state.samples)  # from segments before a resume
    window_loss, window_batches, outcome, stopping = 0.0, 0, FINISHED, False
    saved_at = time.time()
    model.train()
    for batch in _batches(recipe, state):
        loss = train_step(recipe, batch)
        window_loss, window_batches = window_loss + loss.detach().float(), window_batches + 1
        meter.add(batch)
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        if plan.logs(state.step, cfg.logging_steps):
            _log_train(recipe, state.step, window_loss / window_batches, meter)
            window_loss, window_batches = 0.0, 0
        if plan.evaluates(state.step):
            with meter.paused():
                result = recipe.evaluate(state.step)
            state.record_eval(result["eval_loss"])
            best.offer(model, state, result)
            stopping = state.step < plan.max_steps and progress.stop_early(
                state, cfg.early_stopping_patience, recipe.run, accelerator.is_main_process
            )
        due = cfg.save_minutes is not None and time.time() - saved_at >= cfg.save_minutes * 60
        cancelled, save_due = stop.agreed(accelerator, state.step, due)
        _account(state, segment, meter, accelerator)
        if state.step % plan.save_steps == 0 or cancelled or save_due:
            with meter.paused():
                checkpoints.save_checkpoint(accelerator, recipe.run, state, cfg.save_total_limit, best)
            saved_at = time.time()
        if cancelled or stopping or state.step >= plan.max_steps:
            outcome = CANCELLED if cancelled else FINISHED
            break
    _account(state, segment, meter, accelerator)
    return outcome, result


def train_step(recipe: Recipe, batch: dict):
    """One forward/backward pass; the optimizer steps when the accumulation window closes. Returns the loss."""
    from finetune.training.engine import engine_batch

    accelerator, cfg, model = recipe.accelerator, recipe.cfg, recipe.model
    with accelerator.accumulate(model):
        loss = recipe.task.training_loss(model, engine_batch(batch, accelerator))
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        recipe.optimizer.step()
        recipe.scheduler.step()
        recipe.optimizer.zero_grad()
    return loss


def _log_train(recipe: Recipe, step: int, window_loss, meter) -> None:
    """A train event (mean loss since the last one, learning rate, throughput) and the step in status.json."""
    mean_loss = recipe.accelerator.reduce(window_loss, reduction="mean").item()
    epoch = recipe.plan.epoch(step)
    recipe.accelerator.log(
        {
            "epoch": epoch,
            "loss": mean_loss,
            "learning_rate": recipe.scheduler.get_last_lr()[0],
            **meter.figures(recipe.task.unit),
        },
        step=step,
    )
    if recipe.accelerator.is_main_process:
        recipe.run.record_progress(step=step, epoch=epoch)


def _account(state, segment: tuple[float, int], meter, accelerator) -> None:
    """Training time (s) and examples seen over every segment of the run, as checkpoints and metrics.json keep them."""
    state.runtime_seconds = segment[0] + time.time() - meter.started
    state.samples = segment[1] + meter.samples * accelerator.num_processes


def _finish(recipe: Recipe, state, meter, best, result: Optional[dict]) -> None:
    """Save the adapter (the best evaluation's weights) and metrics.json, with the scores' bootstrap intervals."""
    from finetune.training import artifacts, throughput

    figures = throughput.final_figures(meter, recipe.task.unit)  # every process: tokens are summed
    if result is None:  # resumed from a checkpoint taken after the last evaluation
        result = recipe.evaluate(state.step)
    result = best.restore(recipe.model, state) or result
    test_result = recipe.score_test("finetuned")  # every process: evaluation gathers across them
    artifacts.save_artifacts(
        recipe.accelerator,
        recipe.model,
        recipe.processor,
        recipe.run,
        recipe.cfg,
        recipe.task.name,
        recipe.labels,
        recipe.derived,
    )
    if recipe.accelerator.is_main_process:
        summary = artifacts.final_metrics(state, recipe.plan, result, recipe.model, recipe.accelerator, test_result)
        summary = artifacts.with_intervals(summary, recipe.run, adapter_step=best.step or state.step)
        recipe.run.write_metrics({"task": recipe.task.name, **summary, **figures})


def _load_data_and_model(cfg: TrainConfig, accelerator, task):
    """(model ready to train, processor, encoded splits, class names, data-derived settings, new heads)."""
    from accelerate.utils import set_seed

    from finetune.training import engine

    with accelerator.main_process_first():
        raw, columns, labels = task.load_data(cfg, checks=accelerator.is_main_process)
    processor = task.load_processor(cfg.model_name_or_path)
    set_seed(cfg.seed)  # the new head starts from the same weights in every run with this seed
    model, new_heads = task.load_model(cfg.model_name_or_path, labels, processor, load_in_4bit=cfg.load_in_4bit)
    with accelerator.main_process_first():
        data, derived = task.encode(cfg, raw, columns, processor, model)
    model = engine.prepare_model(model, cfg, new_heads)
    trainable, total = engine.count_parameters(model)
    if accelerator.is_main_process:
        logger.info(
            "Columns %s; %d train / %d eval examples; settings from data %s; trainable %d of %d parameters",
            columns,
            len(data["train"]),
            len(data["validation"]),
            derived,
            trainable,
            total,
        )
    return model, processor, data, labels, derived, new_heads


def _setup_logging(run: Optional[RunDirectory], is_main: bool) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if is_main else logging.WARNING
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per file saved is noise
    # GPT-2 ties lm_head to the token embeddings; safetensors stores a shared tensor once, so every checkpoint
    # drops the alias (the tie restores it at load) and accelerate warns each time: expected, never actionable.
    logging.getLogger("accelerate.utils.other").addFilter(
        lambda record: "Removed shared tensor" not in record.getMessage()
    )
    if run is not None and is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)


def main(argv: Optional[list[str]] = None) -> int:
    import os

    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = parse_args(argv, description=__doc__)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(cfg, model_name_or_path=_absolute_if_local(cfg.model_name_or_path))
    run = RunDirectory(cfg.output_dir)
    # Only rank 0 checks: other ranks would see the files rank 0 has just written.
    problem = (
        output_dir_problem(run.path, resuming=cfg.resume_from_checkpoint not in (None, False)) if is_main else None
    )
    if problem:
        print(f"error: output_dir: {problem}", file=sys.stderr)
        return 2
    _setup_logging(run, is_main)
    if is_main:
        run.start_segment(os.getpid())
    try:
        final_state = train(with_task(cfg, run, is_main), run)
    except UserError as err:
        return _fail(run, is_main, str(err), code=2)
    except Exception as err:  # report any crash in status.json, with the traceback in train.log
        logger.exception("Training failed")
        return _fail(run, is_main, f"{type(err).__name__}: {err}", code=1)
    if is_main:
        run.update_status(state=final_state, ended_at=time.time())
        logger.info("Run %s: %s", final_state, run.path)
    return 0


def with_task(cfg: TrainConfig, run: RunDirectory, is_main: bool) -> TrainConfig:
    """The config with its task resolved from the checkpoint, written once to config.yaml (by the main process)."""
    from finetune.tasks import load_model_config, resolve_task

    task = resolve_task(load_model_config(cfg.model_name_or_path), cfg.task, cfg.model_name_or_path)
    cfg = dataclasses.replace(cfg, task=task)
    if is_main:
        # config.yaml describes the run itself, so re-running it starts fresh rather than resuming.
        dataclasses.replace(cfg, resume_from_checkpoint=None).to_yaml(run.config_path)
    return cfg


def _absolute_if_local(name: str) -> str:
    # Saved adapters record the base model path; a relative one would break when loaded from elsewhere.
    return str(Path(name).resolve()) if Path(name).exists() else name


def _fail(run: RunDirectory, is_main: bool, message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if is_main:
        logger.error(message)
        run.update_status(state=FAILED, error=message, ended_at=time.time())
    return code


if __name__ == "__main__":
    sys.exit(main())
