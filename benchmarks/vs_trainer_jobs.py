"""The jobs benchmarks.vs_trainer runs on both sides: one per family and size (model, data, LoRA targets, batch sizes,
steps), and how each side is told to run it (our YAML, the reference's command line).
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


VARIANTS = ("ours", "reference")
FAMILIES = ("gpt2", "bert", "vit", "resnet")


OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


TASKS = {
    "gpt2": "causal-lm",
    "bert": "text-classification",
    "vit": "image-classification",
    "resnet": "image-classification",
}


# LoRA targets, the same list on both sides: what finetune.training.lora discovers on these models (ResNet: its Conv2d
# layers, all named "convolution"; ViT in transformers 5 names its projections q_proj/k_proj/v_proj/o_proj).
TARGETS = {"gpt2": ["c_attn"], "bert": ["query", "value"], "vit": ["q_proj", "v_proj"], "resnet": ["convolution"]}


LEARNING_RATE = 5e-4  # one rate for LoRA and the new head: the reference's Trainer has a single one


# (train batch, eval batch, CPU steps, tokens per text / per block) by family and size. CPU steps keep
# --family all --repeats 2 near 3 minutes (tiny) and 15-25 minutes (base) on 2 cores, measured there: a base
# training example costs about 0.4-2.5 s (GPT-2, block of 256 with its 50,257-word output layer), 0.05-0.15 s (BERT,
# a tweet of ~33 tokens), 0.15-0.9 s (ViT-base) and 0.15-0.3 s (ResNet-50, 224x224 images), on AMX or AVX512-BF16.
# Base BERT trains one whole epoch (125 steps of 16): with length-grouped batches on both sides, a shorter run's
# samples/s depends on which texts each side's shuffle put first (12 steps: ours drew texts 1.4x as long); over an
# epoch both train on the same 2,000 tweets.
SHAPES = {
    "tiny": {
        "gpt2": (16, 32, 30, 128),
        "bert": (16, 64, 30, 128),
        "vit": (16, 64, 100, None),
        "resnet": (16, 64, 100, None),
    },
    "base": {"gpt2": (4, 8, 6, 256), "bert": (16, 32, 125, 128), "vit": (8, 16, 6, None), "resnet": (8, 16, 12, None)},
    # Trained MiniLM on 2,000 tweets: 3 epochs of 125 steps, long enough to learn, so the two sides' accuracy at equal
    # steps says whether they train equally well (about 2 minutes a run on 2 cores).
    "real": {"bert": (16, 32, 375, 128)},
}


# On a GPU a step takes milliseconds: 200 of them measure the steady state, not the first steps' warm-up.
CUDA_STEPS = {"tiny": 200, "base": 300, "real": 375}


# Per-device batches on a GPU: the CPU's base batches keep an H100 busy for 1-3 s in all, too short for steady-state
# figures (train, eval).
CUDA_BATCHES = {"gpt2": (32, 32), "bert": (64, 128), "vit": (64, 128), "resnet": (64, 128)}


@dataclass
class Job:
    """One fine-tuning job, identical on both sides."""

    family: str
    task: str
    checkpoint: str
    train_file: str
    validation_file: str
    steps: int
    batch: int
    eval_batch: int
    length: Optional[int]  # max_seq_length (text classification) or block_size (causal LM); None for images
    targets: list
    learning_rate: float = LEARNING_RATE
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    seed: int = 42


def make_jobs(manifest: dict, size: str, device: str, steps: Optional[int]) -> list[Job]:
    jobs = []
    for family, files in manifest.items():
        batch, eval_batch, cpu_steps, length = SHAPES[size][family]
        if device == "cuda" and size == "base":
            batch, eval_batch = CUDA_BATCHES[family]
        jobs.append(
            Job(
                family,
                TASKS[family],
                files["checkpoint"],
                files["train_file"],
                files["validation_file"],
                steps or (CUDA_STEPS[size] if device == "cuda" else cpu_steps),
                batch,
                eval_batch,
                length,
                TARGETS[family],
            )
        )
    return jobs


def ours_config(job: Job, output_dir: Path, overrides: dict) -> dict:
    """LoRA Lab's settings for ``job``: every setting the reference fixes or Trainer defaults, set explicitly."""
    config = {
        "model_name_or_path": job.checkpoint,
        "train_file": job.train_file,
        "validation_file": job.validation_file,
        "output_dir": str(output_dir),
        "task": job.task,
        "max_steps": job.steps,
        "per_device_train_batch_size": job.batch,
        "per_device_eval_batch_size": job.eval_batch,
        "learning_rate": job.learning_rate,
        "head_learning_rate": job.learning_rate,
        "warmup_ratio": 0.0,
        "lr_scheduler_type": "linear",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "lora_r": job.lora_r,
        "lora_alpha": job.lora_alpha,
        "lora_dropout": job.lora_dropout,
        "lora_target_modules": job.targets,
        "seed": job.seed,
        # One evaluation, at the end; no checkpoint mid-run (Trainer saves every 500 steps, beyond these jobs);
        # the last step logs a train event with the throughput.
        "eval_steps": job.steps,
        "save_steps": job.steps + 1,
        "logging_steps": job.steps,
        "max_eval_samples": 10**9,  # the whole validation file, as the reference evaluates it
    }
    if job.task == "causal-lm":
        config["block_size"] = job.length
    elif job.task == "text-classification":
        config["max_seq_length"] = job.length
    return {**config, **overrides}


@dataclass(frozen=True)
class ReferenceSetup:
    """How the reference Trainer is set: its defaults, or tuned the way a user who read Trainer's docs sets it."""

    precision: str = "no"  # Trainer's mixed precision: no, bf16 or fp16
    group_by_length: bool = False  # length-grouped batches (text tasks): less padding
    tf32: bool = False  # TF32 matmuls (CUDA)

    @classmethod
    def named(cls, name: str, precision: Optional[str], device: str) -> "ReferenceSetup":
        """``default`` (Trainer's defaults, fp32) or ``tuned`` (bf16, length grouping, TF32 on CUDA); ``precision``
        overrides either's."""
        if name == "tuned":
            return cls(precision or "bf16", group_by_length=True, tf32=device == "cuda")
        return cls(precision or "no")


def reference_args(job: Job, output_dir: Path, device: str, setup: ReferenceSetup = ReferenceSetup()) -> list[str]:
    args = [
        "--task",
        job.task,
        "--model",
        job.checkpoint,
        "--train-file",
        job.train_file,
        "--validation-file",
        job.validation_file,
        "--output-dir",
        str(output_dir),
        "--max-steps",
        str(job.steps),
        "--batch-size",
        str(job.batch),
        "--eval-batch-size",
        str(job.eval_batch),
        "--learning-rate",
        repr(job.learning_rate),
        "--lora-r",
        str(job.lora_r),
        "--lora-alpha",
        repr(job.lora_alpha),
        "--lora-dropout",
        repr(job.lora_dropout),
        "--target-modules",
        ",".join(job.targets),
        "--seed",
        str(job.seed),
        "--device",
        device,
        "--precision",
        setup.precision,
    ]
    if job.task == "causal-lm":
        args += ["--block-size", str(job.length)]
    elif job.task == "text-classification":
        args += ["--max-length", str(job.length)] + (["--group-by-length"] if setup.group_by_length else [])
    return args + (["--tf32"] if setup.tf32 else [])


def setup(workdir: Path, size: str, families: list[str]) -> dict:
    """Checkpoints and data, made (or found) by benchmarks.bench_setup in a child: the parent imports no torch."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_setup",
            "--workdir",
            str(workdir),
            "--size",
            size,
            "--families",
            *families,
        ],
        cwd=REPO,
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(done.stderr if done.returncode else "")
    if done.returncode:
        raise SystemExit(f"bench_setup failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])
