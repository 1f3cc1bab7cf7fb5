#!/usr/bin/env bash
# Create .venv and install LoRA Lab into it. Usage: scripts/setup.sh [--dev] [--latest]
#   --dev     also installs the test tools, and Debian's chromium + chromium-driver when /usr/bin/chromium
#             is missing: the browser test (tests/webapp/test_browser_e2e.py) drives that browser, as
#             Playwright's own download is not used. apt-get needs root or sudo; without either it says so.
#   --latest  installs the newest releases instead of the tested versions in constraints.txt, to try drift on
#             purpose (scripts/lock.sh adopts them).
# torch goes in first and pinned: an unpinned torch would pull several GB of CUDA wheels on a CPU
# machine. Set TORCH_SPEC (e.g. "torch==2.13.0" or "torch --index-url ...") to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
dev=false
constraints=(--constraint constraints.txt)
for arg in "$@"; do
    case $arg in
        --dev) dev=true ;;
        --latest) constraints=() ;;
        *) echo "scripts/setup.sh: unknown option $arg (expected --dev and/or --latest)" >&2; exit 2 ;;
    esac
done
extras=""
$dev && extras="[dev]"

# pip stays quiet (its output is pages long); one line per step says what the minutes go to.
started=$SECONDS
step() {  # step MESSAGE COMMAND...: run COMMAND after printing "MESSAGE ...", then its time in seconds
    local message=$1 t0=$SECONDS
    shift
    echo "$message ..."
    "$@"
    echo "  done in $((SECONDS - t0)) s"
}

[ -x .venv/bin/python ] || step "Creating .venv" "$PYTHON" -m venv .venv
step "Upgrading pip" .venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # TORCH_SPEC may hold several words
step "Installing torch ($TORCH_SPEC)" .venv/bin/python -m pip install --quiet $TORCH_SPEC
versions=${constraints[*]:+"the tested versions in constraints.txt"}
step "Installing LoRA Lab and dependencies${extras:+ (with test tools)}, ${versions:-the newest releases}" \
    .venv/bin/python -m pip install --quiet "${constraints[@]}" -e ".${extras}"

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
        # Unattended (CI runs this as root on a fresh machine); no recommends keeps the download small;
        # apt-get install prints a line per package even with -qq.
        apt_get() {
            # shellcheck disable=SC2086  # as_root is empty or "sudo"
            $as_root env DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null
        }
        step "Updating the apt package lists" apt_get update -qq
        step "Installing chromium and chromium-driver for the browser test" \
            apt_get install -y -qq --no-install-recommends chromium chromium-driver
    fi
fi
echo "LoRA Lab installed in .venv in $((SECONDS - started)) s"
