#!/usr/bin/env bash
# Write constraints.txt: the exact version of every package LoRA Lab installs (direct and indirect, all extras),
# the one source of versions for scripts/setup.sh, CI and the Dockerfile.
# Usage: scripts/lock.sh
# It installs the newest releases into a throw-away environment and freezes it. Adopt newer releases by running
# it, then the test command (README), and committing constraints.txt when the suite passes.
# torch is left out: its build differs by machine (a CPU wheel here, a CUDA wheel in the Docker image), so each
# install pins it with TORCH_SPEC; torch's own CUDA packages are pinned exactly by torch itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

"$PYTHON" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may hold several words
"$scratch/venv/bin/python" -m pip install --quiet $TORCH_SPEC
# Editable: a plain install would leave build/ in the source tree.
"$scratch/venv/bin/python" -m pip install --quiet -e ".[dev,mlflow,qlora]"
{
    echo "# Exact versions of everything LoRA Lab installs but torch (TORCH_SPEC pins that), all extras included."
    echo "# Made by scripts/lock.sh with $("$scratch/venv/bin/python" --version) on $(date -u +%Y-%m-%d); do not edit by hand."
    "$scratch/venv/bin/python" -m pip freeze --all --exclude lora-lab | grep -viE '^(torch|pip|setuptools|wheel)==' \
        | LC_ALL=C sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages pinned"
