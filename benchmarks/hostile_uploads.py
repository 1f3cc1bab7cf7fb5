"""Uploads built to stall the New run page's preview, each measured with the app's caps and without them.

    python -m benchmarks.hostile_uploads [--members 100000] [--columns 10000] [--limit 120]

Cases (figures in docs/benchmarks.md):
  zip-members   a .zip of N empty files in one class folder, through uploads.save_upload and inspect_data (what the
                page does on upload): the app's member cap (LORA_LAB_MAX_ARCHIVE_MEMBERS, 5,000) vs the engine's
                own default (200,000)
  csv-columns   a CSV of N columns and 50 rows through inspect_data: the engine's column cap (columns.MAX_COLUMNS,
                1,000) vs no cap
Each variant runs in a fresh subprocess with its own LORA_LAB_HOME, stopped after --limit seconds (reported as
"> limit"); a refusal prints its message. Target: the capped variant answers within 10 s.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}

# Run in the child: save and preview one upload as the page does; print the outcome's first line.
CHILD = """
import sys
from pathlib import Path
from finetune.data import columns
from finetune.errors import UserError
from webapp.services import identity, uploads
path, task, uncapped = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "uncapped"
if uncapped:
    columns.MAX_COLUMNS = 10**9
user = identity.signed_in_user("bench", ())
try:
    saved = uploads.save_upload(user, path.name, path.read_bytes(), task)
    report = uploads.inspect_data(saved, task)
    print(f"previewed: {report.num_examples} examples, {len(report.column_names)} columns")
except UserError as err:
    print(f"refused: {str(err)[:160]}")
"""


def write_zip(path: Path, members: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(members):
            archive.writestr(f"cats/{i}.png", b"")
    return path


def write_wide_csv(path: Path, columns: int, rows: int = 50) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", *(f"c{i}" for i in range(columns - 2))])
        for r in range(rows):
            writer.writerow([f"row {r} text", "ab"[r % 2], *(str(i) for i in range(columns - 2))])
    return path


def measure(path: Path, task: str, variant: str, env: dict, limit: float) -> tuple[str, str]:
    """(seconds or "> limit", outcome) of one variant, in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), task, variant],
                cwd=REPO,
                env={**env, "LORA_LAB_HOME": home},
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            return f"> {limit:.0f}", "still running: stopped"
        seconds = time.perf_counter() - started
        outcome = (done.stdout.strip().splitlines() or [done.stderr.strip()[-160:]])[-1]
        return f"{seconds:.1f}", outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=10_000)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds before a variant is stopped")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        archive = write_zip(Path(scratch) / "many.zip", args.members)
        table = write_wide_csv(Path(scratch) / "wide.csv", args.columns)
        engine_default = {**ENV, "LORA_LAB_MAX_ARCHIVE_MEMBERS": "200000"}
        cases = [
            ("zip-members", archive, "image-classification", "capped", ENV),
            ("zip-members", archive, "image-classification", "uncapped", engine_default),
            ("csv-columns", table, "text-classification", "capped", ENV),
            ("csv-columns", table, "text-classification", "uncapped", ENV),
        ]
        print("| case | variant | seconds | outcome |\n| --- | --- | --- | --- |")
        for name, path, task, variant, env in cases:
            seconds, outcome = measure(path, task, variant, env, args.limit)
            print(f"| {name} | {variant} | {seconds} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
