"""The bounds against resource exhaustion on large inputs, each measured beside the unbounded alternative.

    python -m benchmarks.large_inputs [--mb 20] [--csv-mb 200] [--quick]

Cases (see docs/benchmarks.md):
  causal-lm        one very long line in a .txt, loaded and encoded for causal LM: MAX_TEXT_CHARS vs no cap
  classification   the same line as one row of a CSV, encoded for text classification: MAX_TEXT_CHARS vs no cap
  preview          webapp inspect_data on a large CSV: first SAMPLE_ROWS rows vs the whole file (the old preview)
  eval-cap         load_splits on a 200k-row CSV: validation split cut to max_eval_samples=2000 vs kept whole

Every case and variant runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own, and with its own
empty HF_DATASETS_CACHE, so both variants start cold. All files live in one temporary folder, removed at the end.
The default run takes about 3 minutes of CPU; --quick about 1 minute, mostly the 9 interpreters starting.
"""

import argparse
import contextlib
import csv
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
VARIANTS = ("bounded", "unbounded")
OFFLINE_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
# Rows of the CSV for the eval-cap case: 10% held out gives 20,000 validation rows against the cap of 2,000.
EVAL_ROWS, QUICK_EVAL_ROWS = 200_000, 50_000
# Short rows beside the long one: classification needs two classes and enough rows to hold some out.
SHORT_ROWS = 40


# ---------------------------------------------------------------- input files (written in a child process)


def _sentences(count: int, seed: int = 0) -> list[str]:
    """Sentences of the tiny tokenizer's own corpus, so they tokenize into whole words (about 4-5 chars a token)."""
    from finetune.tiny_checkpoints import corpus

    sentences = corpus(count, seed)
    random.Random(seed).shuffle(sentences)
    return sentences


def _long_text(chars: int) -> str:
    # The corpus is ASCII, so ``chars`` characters are also ``chars`` bytes on disk.
    unit = " ".join(_sentences(2000))
    return (unit * (chars // len(unit) + 1))[:chars]


def _rows(count: int, sentences_per_row: int = 1) -> list[tuple[str, str]]:
    """Exactly ``count`` (text, label) rows, the sentences cycled; labels alternate between two classes."""
    texts, n = _sentences(2000), sentences_per_row
    return [
        (" ".join(texts[(i * n + j) % len(texts)] for j in range(n)), ("negative", "positive")[i % 2])
        for i in range(count)
    ]


def _csv_block(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _write_csv(path: Path, block: str, repeats: int) -> None:
    with path.open("w") as f:
        f.write("text,label\n")
        for _ in range(repeats):
            f.write(block)


def write_inputs(tmp: Path, line_bytes: int, csv_bytes: int, eval_rows: int) -> None:
    """Every input file of every case, under ``tmp``."""
    from transformers.utils import logging as transformers_logging

    from finetune.tiny_checkpoints import make_tiny_checkpoints

    transformers_logging.disable_progress_bar()  # keep the output to the results
    with contextlib.redirect_stdout(io.StringIO()):
        make_tiny_checkpoints(tmp / "checkpoints", ["gpt2"])
    line = _long_text(line_bytes)
    (tmp / "long.txt").write_text(line + "\n")
    # A one-line file cannot be split into train and validation, so validation comes from its own file.
    (tmp / "short.txt").write_text("\n".join(text for text, _ in _rows(SHORT_ROWS)) + "\n")
    (tmp / "long.csv").write_text("text,label\n" + _csv_block([(line, "positive"), *_rows(SHORT_ROWS)]))
    # Rows of ~470 bytes, like product reviews: 200 MiB is ~445k rows (shorter rows would mean more rows).
    block = _csv_block(_rows(1000, sentences_per_row=10))
    _write_csv(tmp / "preview.csv", block, -(-csv_bytes // len(block)))
    _write_csv(tmp / "eval.csv", _csv_block(_rows(eval_rows)), 1)


# ---------------------------------------------------------------- cases (child process)


def _lift(name: str, value) -> None:
    """Raise bound ``name`` in every loaded project module: modules that imported it by name hold their own copy."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith(("finetune", "webapp")) and hasattr(module, name):
            setattr(module, name, value)


def _config(tmp: Path, task: str):
    from finetune.config import TrainConfig

    return TrainConfig(
        model_name_or_path=str(tmp / "checkpoints" / "gpt2"),
        train_file="unused",
        output_dir=str(tmp / "run"),
        task=task,
    )


def causal_lm(tmp: Path, bounded: bool):
    """Load + encode the long line for causal LM; unbounded tokenizes it in one call, as before the cap."""
    from transformers import AutoModelForCausalLM

    from finetune.data.loading import Columns, Unpacking, load_splits
    from finetune.tasks.causal_lm import CausalLMTask, load_tokenizer

    cfg = _config(tmp, "causal-lm")
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path)
    if not bounded:
        _lift("MAX_TEXT_CHARS", sys.maxsize)

    def work() -> str:
        data, columns, _ = load_splits(
            str(tmp / "long.txt"), str(tmp / "short.txt"), "causal-lm", Columns(), 10.0, 42, Unpacking(tmp / "unpacked")
        )
        encoded, chosen = CausalLMTask().encode(cfg, data, columns, tokenizer, model)
        return f"{len(encoded['train']):,} training blocks of {chosen['block_size']} tokens"

    return work


def classification(tmp: Path, bounded: bool):
    """Load + encode the CSV holding the long line; unbounded tokenizes the whole text before truncating."""
    from transformers import AutoModelForSequenceClassification

    from finetune.data.loading import Columns, Unpacking, load_splits
    from finetune.tasks.causal_lm import load_tokenizer
    from finetune.tasks.text_classification import TextClassificationTask

    cfg = _config(tmp, "text-classification")
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model_name_or_path, num_labels=2)
    if not bounded:
        _lift("MAX_TEXT_CHARS", sys.maxsize)

    def work() -> str:
        data, columns, _ = load_splits(
            str(tmp / "long.csv"), None, "text-classification", Columns(), 10.0, 42, Unpacking(tmp / "unpacked")
        )
        encoded, chosen = TextClassificationTask().encode(cfg, data, columns, tokenizer, model)
        return f"{sum(map(len, encoded.values()))} rows, max_seq_length {chosen['max_seq_length']}"

    return work


def preview(tmp: Path, bounded: bool):
    """The upload preview; unbounded never samples, which is inspect_data before SAMPLE_ABOVE_BYTES.

    The sampled read streams the file, and datasets' streaming reader imports torch (~200 MiB): timed and
    counted here, as the app pays it on its first large preview.
    """
    import finetune.data.loading  # noqa: F401  inspect_data imports it on first use: a once-per-process cost, not timed
    from webapp.services.uploads import inspect_data

    if not bounded:
        _lift("SAMPLE_ABOVE_BYTES", sys.maxsize)

    def work() -> str:
        report = inspect_data(tmp / "preview.csv", "text-classification")
        return f"{report.num_examples:,} rows read and checked"

    return work


def eval_cap(tmp: Path, bounded: bool):
    """The splits of a large CSV with the default max_eval_samples vs none (the time evaluation then takes scales
    with the rows kept: the load time here is not what the cap saves)."""
    from finetune.data.loading import Columns, Unpacking, load_splits

    def work() -> str:
        splits, _, _ = load_splits(
            str(tmp / "eval.csv"),
            None,
            "text-classification",
            Columns(),
            10.0,
            42,
            Unpacking(tmp / "unpacked"),
            max_eval_samples=2000 if bounded else None,
        )
        return f"{len(splits['validation']):,} validation rows"

    return work


CASES = {"causal-lm": causal_lm, "classification": classification, "preview": preview, "eval-cap": eval_cap}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def child(case: str, variant: str, tmp: Path) -> None:
    """Run one case's work, timed, after its untimed setup (imports, tokenizer, model); print the result as JSON."""
    work = CASES[case](tmp, variant == "bounded")
    before = _peak_mib()
    start = time.perf_counter()
    detail = work()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": _peak_mib(), "before_mib": before, "detail": detail}))


# ---------------------------------------------------------------- running and reporting (parent process)


def _run(args: list[str], env: dict) -> str:
    """Run this module with ``args`` in a fresh interpreter; its stdout.

    The parent stays small (no torch, no data in memory): a child's ru_maxrss starts from the parent's peak,
    which Linux carries over through fork and exec.
    """
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_inputs", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def measure(case: str, variant: str, tmp: Path) -> dict:
    cache = tmp / "hf-cache" / f"{case}-{variant}"  # fresh per run: both variants read the file cold
    start = time.perf_counter()
    try:
        out = _run(["--child", case, variant, str(tmp)], {**OFFLINE_ENV, "HF_DATASETS_CACHE": str(cache)})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"{case} {variant}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return json.loads(out.strip().splitlines()[-1])


def report(titles: dict[str, str], results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| case | bounded s | bounded peak MiB | unbounded s | unbounded peak MiB | time ratio | peak ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, title in titles.items():
        b, u = results[case]["bounded"], results[case]["unbounded"]
        lines.append(
            f"| {title} | {b['seconds']:.1f} | {b['peak_mib']:.0f} | {u['seconds']:.1f} | "
            f"{u['peak_mib']:.0f} | {u['seconds'] / b['seconds']:.2f} | {u['peak_mib'] / b['peak_mib']:.2f} |"
        )
    lines += [
        "",
        "Ratios are unbounded / bounded. What each variant produced (peak RSS before the timed work:",
        "interpreter, imports, tokenizer and model):",
    ]
    for case, title in titles.items():
        b, u = results[case]["bounded"], results[case]["unbounded"]
        lines.append(
            f"- {title}: bounded {b['detail']} ({b['before_mib']:.0f} MiB before); "
            f"unbounded {u['detail']} ({u['before_mib']:.0f} MiB before)"
        )
    return "\n".join(lines)


def run_all(line_mb: float, csv_mb: float, eval_rows: int) -> None:
    titles = {
        "causal-lm": f"causal LM, one {line_mb:g} MiB line",
        "classification": f"text classification, one {line_mb:g} MiB row",
        "preview": f"preview of a {csv_mb:g} MiB CSV",
        "eval-cap": f"eval split of {eval_rows:,} rows",
    }
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        _run(["--inputs", tmp, str(int(line_mb * MIB)), str(int(csv_mb * MIB)), str(eval_rows)], OFFLINE_ENV)
        results = {case: {v: measure(case, v, Path(tmp)) for v in VARIANTS} for case in titles}
    print(report(titles, results))


def main(argv: list[str] | None = None) -> None:
    from webapp.services.uploads import SAMPLE_ABOVE_BYTES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=20, help="size of the long line, MiB (default 20)")
    parser.add_argument("--csv-mb", type=float, default=200, help="size of the preview CSV, MiB (default 200)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 MiB line, 24 MiB CSV, 50k-row eval CSV")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "VARIANT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--inputs", nargs=4, metavar=("DIR", "LINE_BYTES", "CSV_BYTES", "EVAL_ROWS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    line_mb, csv_mb, eval_rows = (2, 24, QUICK_EVAL_ROWS) if args.quick else (args.mb, args.csv_mb, EVAL_ROWS)
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
    elif args.inputs:
        write_inputs(Path(args.inputs[0]), *map(int, args.inputs[1:]))
    elif csv_mb * MIB <= SAMPLE_ABOVE_BYTES:
        parser.error(f"--csv-mb must exceed {SAMPLE_ABOVE_BYTES / MIB:g} (SAMPLE_ABOVE_BYTES), or nothing is sampled")
    else:
        run_all(line_mb, csv_mb, eval_rows)


if __name__ == "__main__":
    main()
