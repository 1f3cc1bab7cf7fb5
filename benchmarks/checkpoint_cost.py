"""What one checkpoint costs a run (save_steps, and save_minutes' time-based ones): seconds and bytes per save of a
base-size model, LoRA (the default) and full fine-tuning side by side.

    python -m benchmarks.checkpoint_cost [--family bert|gpt2] [--saves 3]

Random-init BERT-base or GPT-2 124M shapes (no download), an AdamW step taken so the optimizer has state, then
checkpoints.save_checkpoint as the training loop calls it, timed over --saves saves. Figures in docs/run-directory.md.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def model_for(family: str):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    return (
        BertForSequenceClassification(BertConfig(num_labels=2)) if family == "bert" else GPT2LMHeadModel(GPT2Config())
    )


def measure(family: str, method: str, saves: int) -> dict:
    import torch
    from accelerate import Accelerator

    from finetune.config import TrainConfig
    from finetune.rundir import RunDirectory
    from finetune.training import speed
    from finetune.training.checkpoints import save_checkpoint
    from finetune.training.engine import build_optimizer, prepare_model
    from finetune.training.progress import BestWeights, TrainerState

    with tempfile.TemporaryDirectory() as folder:
        cfg = TrainConfig(model_name_or_path="m", train_file="t", output_dir=folder, finetune_method=method)
        heads = ["classifier"] if family == "bert" else []
        model = prepare_model(model_for(family), cfg, heads)
        accelerator = Accelerator(cpu=True)
        accelerator.register_save_state_pre_hook(speed.keep_trainable_weights)  # as processes.build_accelerator
        model, optimizer = accelerator.prepare(model, build_optimizer(model, cfg, heads))
        batch = {"input_ids": torch.randint(0, 1000, (2, 32)), "labels": torch.tensor([0, 1])}
        if family == "gpt2":
            batch["labels"] = batch["input_ids"]
        model(**batch).loss.backward()
        optimizer.step()  # Adam's moments exist from here on, as in any checkpoint after the first step
        run, state, best = RunDirectory(folder), TrainerState(step=1), BestWeights(accelerator, True)
        seconds = []
        for save in range(saves):
            state.step = save + 1
            started = time.perf_counter()
            path = save_checkpoint(accelerator, run, state, None, best)
            seconds.append(time.perf_counter() - started)
        size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return {"family": family, "method": method, "seconds": statistics.median(seconds), "mib": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("bert", "gpt2"), default="bert")
    parser.add_argument("--saves", type=int, default=3)
    args = parser.parse_args()
    print("| model | method | seconds per save (median) | MiB per checkpoint |\n| --- | --- | --- | --- |")
    for method in ("lora", "full"):
        row = measure(args.family, method, args.saves)
        print(f"| {row['family']}-base | {method} | {row['seconds']:.2f} | {row['mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
