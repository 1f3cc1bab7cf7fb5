"""Fine-tune a GPT-2, BERT, ViT or ResNet checkpoint with LoRA (or fully) on Accelerate.

    accelerate launch finetune/train.py --config run.yaml [--key value ...]
    python -m finetune.train --config run.yaml [--key value ...]

Flags override the YAML's keys. The recipe reads top to bottom: config, accelerator, data, model,
optimizer, loop, save. Everything it produces goes to the run directory (finetune/rundir.py).
"""

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional

from finetune.config import TrainConfig, field_help, read_yaml
from finetune.errors import ConfigError, UserError
from finetune.rundir import RunDirectory, output_dir_problem, process_start, write_json_atomic

logger = logging.getLogger("finetune")


def parse_args(argv: Optional[list[str]] = None) -> TrainConfig:
    """--config YAML plus --key value overrides, all validated together."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of settings (see configs/)")
    for name, text in field_help().items():
        parser.add_argument(f"--{name}", default=argparse.SUPPRESS, help=text)
    args, unknown = parser.parse_known_args(argv)
    values = read_yaml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    problems = [f"{flag}: unknown command-line argument" for flag in unknown if flag.startswith("--")]
    try:
        cfg = TrainConfig.from_dict(values)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def train(cfg: TrainConfig, run: RunDirectory) -> str:
    """Run the recipe; returns the final state (finished or cancelled)."""
    import datasets
    import transformers
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from finetune import speed, training
    from finetune.tasks import get_task, load_model_config, resolve_task

    # Progress bars are noise in train.log and the web app's log tail; events.jsonl carries progress.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    stop = training.StopSignal()
    cuda, model_config = speed.uses_cuda(), load_model_config(cfg.model_name_or_path)
    accelerator = Accelerator(
        cpu=_several_processes_without_accelerator(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=speed.resolve_mixed_precision(cfg.mixed_precision, cuda, speed.model_width(model_config)),
        log_with=[training.RunDirectoryTracker(run)],
        # Shuffling seeded by (seed, epoch) so a resumed run sees the batches the original would have; batches
        # copied to the GPU while it computes (pinned memory, non-blocking).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=cuda),
        dynamo_backend="inductor" if cfg.torch_compile else "no",
    )
    _check_process_group(accelerator)
    if cuda:
        speed.enable_fast_cuda_math()
    accelerator.register_save_state_pre_hook(speed.keep_trainable_weights)
    accelerator.init_trackers("lora-lab")
    set_seed(cfg.seed)
    task = get_task(resolve_task(model_config, cfg.task, cfg.model_name_or_path))
    cfg.task = task.name
    if accelerator.is_main_process:
        _write_config(cfg, run)  # now with the task inferred from the checkpoint
        logger.info("Task %s on %d process(es), device %s", task.name, accelerator.num_processes, accelerator.device)

    # ---- data and model ------------------------------------------------------------------------
    model, processor, data, labels, derived, new_heads = _load_data_and_model(cfg, run, accelerator, task)
    train_dl, eval_dl = _dataloaders(cfg, data, task.collate_fn(processor), accelerator,
                                     images=task.name == "image-classification")
    speed.store_frozen_weights_in_bf16(model, accelerator.mixed_precision, cfg.finetune_method)
    model = speed.channels_last(model, cuda)
    optimizer = training.build_optimizer(model, cfg, new_heads)
    model, optimizer, train_dl, eval_dl = accelerator.prepare(model, optimizer, train_dl, eval_dl)

    steps_per_epoch = math.ceil(len(train_dl) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs_for(steps_per_epoch) * steps_per_epoch)
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    eval_steps, save_steps = cfg.eval_steps or steps_per_epoch, cfg.save_steps or steps_per_epoch
    # The prepared scheduler steps once per process per optimizer step (accelerate's convention).
    scheduler = accelerator.prepare(get_scheduler(
        cfg.lr_scheduler_type, optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * max_steps) * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes))

    # ---- start or resume -------------------------------------------------------------------------
    resume_from = training.checkpoint_to_resume(cfg, run)
    if resume_from is not None:
        state = training.load_checkpoint(accelerator, resume_from, model)
        logger.info("Resumed from %s at step %d", resume_from, state.step)
    else:
        state = training.TrainerState()
        state.base_metrics = training.evaluate(model, eval_dl, accelerator, task, len(labels or []) or None)
        accelerator.log(state.base_metrics, step=0, log_kwargs={"run_directory": {"event": "eval"}})
    # The loop's clock starts after the base evaluation or the resume: the web app's ETA paces only this segment.
    meter = _meter(cfg, accelerator, model, data, task, processor)
    started, planned_steps = meter.started, max_steps  # early stopping lowers max_steps; the plan is kept
    if accelerator.is_main_process:
        run.update_status(total_steps=max_steps, steps_per_epoch=steps_per_epoch, num_processes=accelerator.num_processes,
                          loop_started_at=started, loop_start_step=state.step)

    # ---- the loop ------------------------------------------------------------------------------
    window_loss, window_batches = 0.0, 0
    earlier_runtime, earlier_samples = state.runtime_seconds, state.samples  # from segments before a resume
    final_state, last_eval = "finished", state.base_metrics if resume_from is None else None
    best = training.BestWeights(accelerator, cfg.load_best_model_at_end)
    model.train()
    # A run resumed from its last checkpoint (step == max_steps) has nothing left to train: the range is empty.
    for epoch in range(state.step // steps_per_epoch, num_epochs if state.step < max_steps else 0):
        train_dl.set_epoch(epoch)
        done_in_epoch = (state.step - epoch * steps_per_epoch) * cfg.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(train_dl, done_in_epoch) if done_in_epoch else train_dl
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            window_loss, window_batches = window_loss + loss.detach().float(), window_batches + 1
            meter.add(batch)
            if not accelerator.sync_gradients:
                continue
            state.step += 1

            if state.step % cfg.logging_steps == 0 or state.step == max_steps:
                mean_loss = accelerator.reduce(window_loss / window_batches, reduction="mean").item()
                accelerator.log({"epoch": round(state.step / steps_per_epoch, 4), "loss": mean_loss,
                                 "learning_rate": scheduler.get_last_lr()[0], **meter.figures(task.unit)},
                                step=state.step)
                window_loss, window_batches = 0.0, 0

            if state.step % eval_steps == 0 or state.step == max_steps:
                last_eval = training.evaluate(model, eval_dl, accelerator, task, len(labels or []) or None)
                accelerator.log(last_eval, step=state.step, log_kwargs={"run_directory": {"event": "eval"}})
                state.record_eval(last_eval["eval_loss"])
                best.offer(model, state, last_eval)
                if state.step < max_steps and training.stop_early(state, cfg.early_stopping_patience, run,
                                                                  accelerator.is_main_process):
                    max_steps = state.step

            cancelled = stop.agreed(accelerator)
            if state.step % save_steps == 0 or cancelled:
                state.runtime_seconds = earlier_runtime + time.time() - started
                state.samples = earlier_samples + meter.samples * accelerator.num_processes
                training.save_checkpoint(accelerator, run, state, cfg.save_total_limit)
            if cancelled:
                final_state = "cancelled"
            if cancelled or state.step >= max_steps:
                break
        if final_state == "cancelled" or state.step >= max_steps:
            break

    # ---- save ----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if final_state == "finished":
        throughput = _final_throughput(meter.figures(task.unit), accelerator)  # every process: tokens are summed
        if last_eval is None:  # resumed from a checkpoint taken after the last evaluation
            last_eval = training.evaluate(model, eval_dl, accelerator, task, len(labels or []) or None)
            accelerator.log(last_eval, step=state.step, log_kwargs={"run_directory": {"event": "eval"}})
        last_eval, adapter_step = (best.restore(model, state) or last_eval), best.step or state.step
        _save_artifacts(accelerator, model, processor, run, cfg, task.name, labels, derived)
        if accelerator.is_main_process:
            run.write_metrics({**_final_metrics(cfg, task.name, state, last_eval, model, accelerator, planned_steps,
                                                earlier_runtime + time.time() - started,
                                                earlier_samples + meter.samples * accelerator.num_processes),
                               "adapter_step": adapter_step, **throughput})
    accelerator.end_training()
    return final_state


def _several_processes_without_accelerator() -> bool:
    """True when this is one of several launched processes (accelerate launch --multi_gpu, torchrun) and there is no GPU.

    accelerate then forms a gloo process group on CPU only if ACCELERATE_USE_CPU=true is in the environment,
    which its multi-process launcher never sets (a config file's use_cpu reaches single-process launches only).
    Without it every process would run alone, all writing the same run directory.
    """
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    devices = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA alone before that
    return not (devices.is_available() if devices is not None else torch.cuda.is_available())


def _check_process_group(accelerator) -> None:
    """Refuse to start when the launched processes did not join one process group (they would train separately)."""
    import os

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise UserError(f"{launched} processes were launched but each runs alone (accelerate formed no process group "
                        f"on {accelerator.device}); launch one process (configs/accelerate/cpu.yaml or single_gpu.yaml), "
                        "or set ACCELERATE_USE_CPU=true for several processes on the CPU")


def _load_data_and_model(cfg: TrainConfig, run: RunDirectory, accelerator, task):
    """(model ready to train, processor, encoded splits, class names, data-derived settings, new heads)."""
    from accelerate.utils import set_seed

    from finetune import training

    with accelerator.main_process_first():
        raw, columns, labels = task.load_data(cfg)
    processor = task.load_processor(cfg.model_name_or_path)
    set_seed(cfg.seed)  # the new head starts from the same weights in every run with this seed
    model, new_heads = task.load_model(cfg.model_name_or_path, labels, processor)
    with accelerator.main_process_first():
        data, derived = task.encode(cfg, raw, columns, processor, model)
    model = training.prepare_model(model, cfg, new_heads)
    trainable, total = training.count_parameters(model)
    if accelerator.is_main_process:
        logger.info("Columns %s; %d train / %d eval examples; settings from data %s; trainable %d of %d parameters",
                    columns, len(data["train"]), len(data["validation"]), derived, trainable, total)
    return model, processor, data, labels, derived, new_heads


def _dataloaders(cfg: TrainConfig, data, collate, accelerator, images: bool):
    """Training batches of similar text lengths (little padding), shuffled by (seed, epoch); evaluation longest
    first; on a GPU pinned memory and, for images, decoding in worker processes."""
    import torch
    from torch.utils.data import DataLoader

    from finetune import speed

    cuda = accelerator.device.type == "cuda"
    workers = cfg.dataloader_num_workers
    if workers is None:
        workers = speed.image_workers(cuda, accelerator.num_processes) if images else 0
    common = {"collate_fn": collate, "num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0}
    train, evaluation = data["train"], data["validation"]
    if cfg.group_by_length and "length" in train.column_names:
        # Grouped by the batch of all processes together, which accelerate then splits: N processes see the batches
        # one process would.
        global_batch = cfg.per_device_train_batch_size * accelerator.num_processes
        order = {"sampler": speed.EpochLengthGroupedSampler(global_batch, train["length"], cfg.seed)}
    else:
        order = {"shuffle": True}
    # Own generators: a DataLoader without one draws its seed from the global RNG at every pass, which would
    # shift dropout masks after a resume.
    train_dl = DataLoader(train, batch_size=cfg.per_device_train_batch_size, **order, **common,
                          generator=torch.Generator().manual_seed(cfg.seed))
    eval_order = speed.longest_first(evaluation["length"]) if "length" in evaluation.column_names else None
    eval_dl = DataLoader(evaluation, batch_size=cfg.per_device_eval_batch_size, sampler=eval_order, **common,
                         generator=torch.Generator().manual_seed(cfg.seed))
    return train_dl, eval_dl


def _save_artifacts(accelerator, model, processor, run: RunDirectory, cfg: TrainConfig, task: str,
                    labels: Optional[list[str]], derived: dict) -> None:
    """The adapter (or full model) with its processor and label maps: everything inference needs."""
    unwrapped = accelerator.unwrap_model(model)
    # Whole tensors even where FSDP or DeepSpeed shard them (the unwrapped model's own state_dict would hold
    # per-process shards of the weights FSDP's root unit owns, such as a classification head); every process calls it.
    state_dict = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(run.adapter_dir, state_dict=state_dict, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save)
    if accelerator.is_main_process:
        processor.save_pretrained(run.adapter_dir)
        info = {"task": task, "base_model": cfg.model_name_or_path, "finetune_method": cfg.finetune_method,
                "labels": labels, "id2label": dict(enumerate(labels)) if labels else None,
                "label2id": {name: i for i, name in enumerate(labels)} if labels else None, **derived}
        write_json_atomic(run.adapter_dir / "lora_lab.json", info)


def _meter(cfg: TrainConfig, accelerator, model, data, task, processor):
    """The loop's throughput meter; on a GPU it also counts the model's FLOPs on one real batch (for TFLOP/s, MFU)."""
    import torch
    from accelerate.utils import send_to_device

    from finetune import throughput

    if accelerator.device.type != "cuda":
        return throughput.Meter(accelerator)
    examples = [data["train"][i] for i in range(min(len(data["train"]), cfg.per_device_train_batch_size))]
    batch = send_to_device(task.collate_fn(processor)(examples), accelerator.device)
    with accelerator.autocast():
        # A compiled model is counted through its original module: FLOP counting needs no compiled graph.
        per_token = throughput.train_flops_per_token(getattr(model, "_orig_mod", model), batch, cfg.finetune_method)
    peak = throughput.peak_tflops(torch.cuda.get_device_name(accelerator.device))
    return throughput.Meter(accelerator, per_token, peak)


def _final_throughput(figures: dict, accelerator) -> dict:
    """metrics.json's names for the loop's throughput (over this segment of the run)."""
    import torch

    names = {"tokens_per_second": "train_tokens_per_second", "images_per_second": "train_images_per_second",
             "tflops": "train_tflops", "mfu": "mfu"}
    out = {names[key]: value for key, value in figures.items() if key in names}
    if accelerator.device.type == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name(accelerator.device)
    return out


def _final_metrics(cfg, task: str, state, last_eval: dict, model, accelerator, planned_steps: int, seconds: float,
                   samples: int) -> dict:
    from finetune.training import count_parameters, peak_memory_mb

    trainable, total = count_parameters(accelerator.unwrap_model(model))
    return {
        "task": task,
        "base": state.base_metrics,
        "finetuned": last_eval,
        "best_step": state.best_step,
        "best_eval_loss": state.best_eval_loss,
        "steps": state.step,
        "total_steps": planned_steps,
        "stopped_early": state.step < planned_steps,  # a finished run falls short of its plan only by early stopping
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100 * trainable / total,
        "train_runtime_seconds": seconds,
        "train_samples_per_second": samples / seconds if seconds > 0 else None,
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,  # what "auto" became on this machine
    }


def _setup_logging(run: Optional[RunDirectory], is_main: bool) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if is_main else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per file saved is noise
    # GPT-2 ties lm_head to the token embeddings; safetensors stores a shared tensor once, so every checkpoint
    # drops the alias (the tie restores it at load) and accelerate warns each time: expected, never actionable.
    logging.getLogger("accelerate.utils.other").addFilter(lambda record: "Removed shared tensor" not in record.getMessage())
    if run is not None and is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)


def main(argv: Optional[list[str]] = None) -> int:
    import os

    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = parse_args(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg.model_name_or_path = _absolute_if_local(cfg.model_name_or_path)
    run = RunDirectory(cfg.output_dir)
    # Only rank 0 checks: other ranks would see the files rank 0 has just written.
    problem = output_dir_problem(run.path, resuming=cfg.resume_from_checkpoint not in (None, False)) if is_main else None
    if problem:
        print(f"error: output_dir: {problem}", file=sys.stderr)
        return 2
    _setup_logging(run, is_main)
    if is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, run)
        # A resumed run starts a new segment: the last one's loop start and early stop no longer apply.
        run.update_status(state="running", error=None, started_at=time.time(), ended_at=None, pid=os.getpid(),
                          pid_started=process_start(os.getpid()), loop_started_at=None, loop_start_step=None,
                          stopped_early_at_step=None)
    try:
        final_state = train(cfg, run)
    except UserError as err:
        return _fail(run, is_main, str(err), code=2)
    except Exception as err:  # report any crash in status.json, with the traceback in train.log
        logger.exception("Training failed")
        return _fail(run, is_main, f"{type(err).__name__}: {err}", code=1)
    if is_main:
        run.update_status(state=final_state, ended_at=time.time())
        logger.info("Run %s: %s", final_state, run.path)
    return 0


def _write_config(cfg: TrainConfig, run: RunDirectory) -> None:
    # config.yaml describes the run itself, so re-running it starts fresh rather than resuming.
    dataclasses.replace(cfg, resume_from_checkpoint=None).to_yaml(run.config_path)


def _absolute_if_local(name: str) -> str:
    # Saved adapters record the base model path; a relative one would break when loaded from elsewhere.
    return str(Path(name).resolve()) if Path(name).exists() else name


def _fail(run: RunDirectory, is_main: bool, message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    if is_main:
        logger.error(message)
        run.update_status(state="failed", error=message, ended_at=time.time())
    return code


if __name__ == "__main__":
    sys.exit(main())
