"""benchmarks/gpu_check --dry-run: the GPU proof rehearsed on the CPU with tiny models, so that a lent GPU machine's
minutes go to figures, not to set-up bugs. Every check that can run without CUDA runs and succeeds; the others say
why they were skipped."""

import json
import subprocess
import sys

from tests.conftest import OFFLINE_ENV, REPO


def test_the_dry_run_passes_every_check_it_can_run_here(tmp_path):
    out = tmp_path / "gpu-check"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    checks = record["checks"]
    assert record["dry_run"] is True and set(checks) == {"families", "gpt2-1024", "compile", "fp16", "qlora", "fsdp"}
    assert {name for name, outcome in checks.items() if "skipped" in outcome} == {"fp16", "qlora", "fsdp"}
    summaries = checks["families"]["summaries"]
    assert [s["family"] for s in summaries] == ["gpt2", "bert", "vit", "resnet"]
    assert all(s["failed"] == {"ours": 0, "reference": 0} and s["ratio"]["samples_s"] for s in summaries)
    for name in ("gpt2-1024", "compile"):
        assert checks[name]["adapter_saved"] and checks[name]["losses_finite"], name
    assert "| families |" in done.stdout, "the table is printed"
