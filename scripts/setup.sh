#!/usr/bin/env bash
# Create .venv and install LoRA Lab into it. Usage: scripts/setup.sh [--dev]
#   --dev  also installs the test tools.
# torch goes in first and pinned: an unpinned torch would pull several GB of CUDA wheels on a CPU
# machine. Set TORCH_SPEC (e.g. "torch==2.13.0" or "torch --index-url ...") to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may hold several words
.venv/bin/python -m pip install --quiet $TORCH_SPEC
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "LoRA Lab installed in .venv"
