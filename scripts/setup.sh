#!/usr/bin/env bash
# Create .venv and install LoRA Lab into it. Usage: scripts/setup.sh [--dev]
#   --dev  also installs the test tools, and Debian's chromium + chromium-driver when /usr/bin/chromium
#          is missing: the browser test (tests/webapp/test_browser_e2e.py) drives that browser, as
#          Playwright's own download is not used. apt-get needs root or sudo; without either it says so.
# torch goes in first and pinned: an unpinned torch would pull several GB of CUDA wheels on a CPU
# machine. Set TORCH_SPEC (e.g. "torch==2.13.0" or "torch --index-url ...") to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
dev=false
[ "${1:-}" = "--dev" ] && dev=true
extras=""
$dev && extras="[dev]"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may hold several words
.venv/bin/python -m pip install --quiet $TORCH_SPEC
.venv/bin/python -m pip install --quiet -e ".${extras}"

if $dev && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=""
    elif command -v sudo >/dev/null 2>&1; then
        as_root="sudo"
    else
        as_root="none"
    fi
    if [ "$as_root" = none ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "The browser test needs Debian's chromium and chromium-driver (/usr/bin/chromium); install them as" \
             "root: apt-get install chromium chromium-driver. Without them that test is skipped." >&2
    else
        echo "Installing chromium and chromium-driver for the browser test"
        # Unattended (CI runs this as root on a fresh machine); no recommends keeps the download small.
        # shellcheck disable=SC2086  # as_root is empty or "sudo"
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # shellcheck disable=SC2086
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null
    fi
fi
echo "LoRA Lab installed in .venv"
