#!/usr/bin/env bash
# Build the Space image (the Dockerfile at the repository root) with a CPU torch and prove that it works:
# the web app answers /_stcore/health as uid 1000 with a volume at /data, a short training run started inside
# the container finishes, reaches the volume (LORA_LAB_HOME on it, or copied to LORA_LAB_MIRROR on it as the
# app's job runner does) and is back in a new container started on the same volume. CI runs it after the
# tests (.ci/run); see docs/deploying.md, "Checking the image locally".
#
# Usage (as root, on Debian bookworm, no Docker engine needed): scripts/check-space-image.sh
#
# It installs podman and buildah with apt-get when they are missing and uses no registry: the base image
# python:3.11-slim is stood in for by a Debian bookworm root file system (debootstrap, python3.11 from
# Debian, this machine's CA certificates and pip settings) imported into podman. torch is this machine's CPU
# wheel (pip download), lent to the build by a read-only bind mount; everything else comes from PyPI,
# reached the way this machine's pip reaches it. The images stay in podman's store, so a rerun reuses the
# base image and buildah's layer cache; containers, volume and temporary files are removed on exit.
#
# Settings (environment):
#   CHECK_TORCH_VERSION   torch release to install (default 2.13.0; its CPU wheel must be available to pip)
#   CHECK_DEBIAN_MIRROR   mirror for debootstrap (default: the first bookworm mirror in /etc/apt/sources*)
#   CHECK_STORAGE_DRIVER  containers/storage driver (default: podman's own choice, overlay on ext4/xfs)
#   CHECK_TIME_LIMIT      seconds the whole check may take before it gives up (default 2100 = 35 min)
#   CHECK_REBUILD_BASE=1  make the python:3.11-slim stand-in again even when it exists
#   CHECK_NETWORK=host    run the container on the host's network (app on 127.0.0.1 only) instead of trying
#                         -p 127.0.0.1:PORT:7860 first (the script falls back to this by itself when -p fails)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

IMAGE=localhost/lora-lab-check:latest
BASE_IMAGE=docker.io/library/python:3.11-slim
CONTAINER=lora-lab-check
SUITE=bookworm
TORCH_VERSION=${CHECK_TORCH_VERSION:-2.13.0}
TIME_LIMIT=${CHECK_TIME_LIMIT:-2100}
HEALTH_LIMIT=300
# podman's default rlimits (nofile 1048576) are above this VM's hard limits and refused.
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
PACKAGES=(podman buildah debootstrap runc fuse-overlayfs slirp4netns uidmap)

started=$SECONDS
step_name="setup"
storage_opts=()
work=""
# "port" (-p 127.0.0.1:PORT:7860), or "host" (--network host, the app on 127.0.0.1:PORT) where -p fails here
net_mode=""
[ "${CHECK_NETWORK:-auto}" = host ] && net_mode=host
port=""

log() { echo "[check-space-image] $*"; }
fail() {
    echo "[check-space-image] FAILED at step '$step_name': $*" >&2
    exit 1
}
# Seconds left of CHECK_TIME_LIMIT, capped at $1: every long step runs under `timeout` with this.
budget() {
    local left=$((TIME_LIMIT - (SECONDS - started)))
    if [ "$left" -le 0 ]; then
        echo "[check-space-image] the check ran past its time limit of ${TIME_LIMIT} s (CHECK_TIME_LIMIT)" >&2
        left=1
    fi
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# Last lines of a log file, shown when a step fails.
show_log() {
    [ -f "$1" ] || return 0
    echo "----- last lines of $(basename "$1") -----" >&2
    tail -n "${2:-60}" "$1" >&2
    echo "-----" >&2
}
pod() { podman "${storage_opts[@]}" "$@"; }
container_logs() {
    if pod container exists "$CONTAINER" 2>/dev/null; then
        echo "----- container log (last lines) -----" >&2
        pod logs --tail 60 "$CONTAINER" >&2 || true
        echo "-----" >&2
    fi
}

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ]; then
        container_logs
    fi
    if command -v podman >/dev/null 2>&1; then
        pod rm -f -t 5 "$CONTAINER" >/dev/null 2>&1
    fi
    if [ -n "$work" ] && [ -d "$work" ]; then
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || fail "run it as root (apt-get, debootstrap and podman's root store need it)"

# ---------------------------------------------------------------------------------------------------------
step_name="install tools"
missing=()
for package in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt-get ..."
    t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >"$apt_log" 2>&1; then
        show_log "$apt_log"
        rm -f "$apt_log"
        fail "apt-get install ${missing[*]}"
    fi
    rm -f "$apt_log"
    log "  installed in $((SECONDS - t0)) s"
fi

storage_opts=()
if [ -n "${CHECK_STORAGE_DRIVER:-}" ]; then
    storage_opts=(--storage-driver "$CHECK_STORAGE_DRIVER")
fi
pod info >/dev/null 2>&1 || { pod info >&2 || true; fail "podman does not work on this machine (podman info)"; }
log "podman $(pod version --format '{{.Client.Version}}'), storage driver $(pod info --format '{{.Store.GraphDriverName}}')"

work=$(mktemp -d /var/tmp/lora-lab-check.XXXXXX)

# ---------------------------------------------------------------------------------------------------------
# python:3.11-slim stand-in. Docker Hub is out of reach; Debian bookworm's python3 is 3.11 too.
step_name="base image"
debian_mirror() {
    if [ -n "${CHECK_DEBIAN_MIRROR:-}" ]; then
        echo "$CHECK_DEBIAN_MIRROR"
        return 0
    fi
    # deb822 (.sources: "Types:", "URIs:" and "Suites:" in one stanza) and one-line (.list: "deb [opts] URI
    # suite ...") entries; the first that serves the bookworm suite itself (not -security, -updates) wins.
    python3 - "$SUITE" <<'PY' || true
import re, sys
from pathlib import Path

suite = sys.argv[1]
files = [Path("/etc/apt/sources.list")]
d = Path("/etc/apt/sources.list.d")
if d.is_dir():
    files += sorted(f for f in d.iterdir() if f.suffix in (".list", ".sources"))
for f in files:
    if not f.is_file():
        continue
    text = f.read_text(errors="replace")
    if f.suffix == ".sources":
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"])[0].lower() == "no" or "deb" not in fields.get("types", []):
                continue
            if suite in fields.get("suites", []):
                for uri in fields.get("uris", []):
                    if uri.startswith(("http://", "https://")):
                        print(uri)
                        sys.exit()
    else:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite and words[1].startswith(("http://", "https://")):
                print(words[1])
                sys.exit()
PY
}

# This machine's pip settings, merged as pip merges them (global files, user files, PIP_CONFIG_FILE, PIP_*
# variables, later ones winning), written as one /etc/pip.conf for the image; prints the local paths the
# settings name (find-links folders, constraint files, certificates; for a file:// index, the folder above
# its simple/ pages, which link to files beside them), one a line.
write_pip_conf() {
    python3 - "$1" <<'PY'
import configparser, os, sys
from pathlib import Path

home = Path.home()
files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"), home / ".pip/pip.conf",
         home / ".config/pip/pip.conf"]
if os.environ.get("PIP_CONFIG_FILE") not in (None, "", os.devnull):
    files.append(Path(os.environ["PIP_CONFIG_FILE"]))
merged = configparser.RawConfigParser()
for f in files:
    if f.is_file():
        part = configparser.RawConfigParser()
        part.read(f)
        for section in part.sections():
            if not merged.has_section(section):
                merged.add_section(section)
            for key, value in part.items(section):
                merged.set(section, key.replace("_", "-"), value)
for name, value in sorted(os.environ.items()):
    if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
        if not merged.has_section("global"):
            merged.add_section("global")
        merged.set("global", name[4:].lower().replace("_", "-"), value)
if merged.sections():
    with open(sys.argv[1], "w") as out:
        out.write("# This machine's pip settings (scripts/check-space-image.sh), so pip in the build reaches\n"
                  "# PyPI as the machine's pip does.\n")
        merged.write(out)
paths = set()
for section in merged.sections():
    for key, value in merged.items(section):
        for word in value.split():
            word = word[len("file://"):] if word.startswith("file://") else word
            if word.startswith("/") and os.path.exists(word):
                word = os.path.normpath(word)
                # A local index's pages link to files beside it (ROOT/simple/NAME/ -> ../../files/...).
                if key.endswith("index-url") and os.path.dirname(word) != "/":
                    word = os.path.dirname(word)
                paths.add(word)
print("\n".join(sorted(paths)))
PY
}

make_base_image() {
    local mirror rootfs t0 path
    mirror=$(debian_mirror)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs="$work/rootfs"
    log "making the $BASE_IMAGE stand-in: debootstrap $SUITE from $mirror ..."
    t0=$SECONDS
    # libpython3.11-dev: python:3.11-slim ships Python's headers (Python.h), which torch_compile's C++ kernels include.
    timeout "$(budget 900)" debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,libpython3.11-dev,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { show_log "$work/debootstrap.log"; show_log "$rootfs/debootstrap/debootstrap.log" 30; fail "debootstrap"; }
    # As in python:3.11-slim: `python` on the PATH, under /usr/local/bin.
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
    # This machine's CA certificates (a proxy's or a mirror's own CA among them).
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -a /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
    fi
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    # This machine's pip settings, and the files they name that live under /etc (constraint files, certs).
    if [ -d /etc/xdg/pip ]; then
        mkdir -p "$rootfs/etc/xdg"
        cp -a /etc/xdg/pip "$rootfs/etc/xdg/"
    fi
    while IFS= read -r path; do
        if [ -f "$path" ] && [ ! -e "$rootfs$path" ]; then
            mkdir -p "$rootfs$(dirname "$path")"
            cp -L "$path" "$rootfs$path"
        fi
    done < <(write_pip_conf "$rootfs/etc/pip.conf")
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs/debootstrap"
    tar -C "$rootfs" --numeric-owner -cf - . | pod import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >"$work/import.log" 2>&1 || { show_log "$work/import.log"; fail "podman import"; }
    rm -rf "$rootfs"
    log "  made in $((SECONDS - t0)) s"
}

if [ "${CHECK_REBUILD_BASE:-0}" = 1 ] || ! pod image exists "$BASE_IMAGE"; then
    make_base_image
else
    log "$BASE_IMAGE is there already (CHECK_REBUILD_BASE=1 makes it again)"
fi

# ---------------------------------------------------------------------------------------------------------
step_name="torch wheel"
mkdir -p "$work/wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --dest "$work/wheels" "torch==$TORCH_VERSION" >"$work/pip-download.log" 2>&1 \
    || { show_log "$work/pip-download.log"; fail "pip download torch==$TORCH_VERSION"; }
wheel=$(find "$work/wheels" -maxdepth 1 -name 'torch-*.whl' -printf '%f\n' | head -n 1)
case $wheel in
    *+cpu-cp311-*) ;;
    "") fail "pip download torch==$TORCH_VERSION gave no wheel" ;;
    *) fail "pip download torch==$TORCH_VERSION gave $wheel, not a CPU wheel for Python 3.11 (a CUDA one is GBs)" ;;
esac
log "torch: $wheel"

# ---------------------------------------------------------------------------------------------------------
step_name="build"
# The build context: the working tree as git sees it (tracked and untracked files that are not ignored),
# so stray local files do not reach the image; .dockerignore then applies as usual.
context="$work/context"
mkdir -p "$context"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (
        cd "$REPO"
        git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
            if [ -e "$file" ] || [ -L "$file" ]; then printf '%s\0' "$file"; fi
        done | tar --null -T - -cf - | tar -C "$context" -xf -
    ) || fail "copying the working tree into the build context"
else
    cp -a "$REPO/." "$context/"
fi

# pip in the build sees this machine's pip settings (the base image's /etc/pip.conf); the local folders they
# name (find-links, file:// indexes) and the torch wheel are bind-mounted read-only into the build's RUN steps.
build_mounts=(--volume "$work/wheels:/tmp/torch-wheel:ro")
while IFS= read -r path; do
    if [ -d "$path" ]; then
        build_mounts+=(--volume "$path:$path:ro")
    fi
done < <(write_pip_conf /dev/null)

old_image=$(pod image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "building $IMAGE (TORCH_SPEC=/tmp/torch-wheel/$wheel) ..."
t0=$SECONDS
timeout "$(budget 1800)" buildah "${storage_opts[@]}" bud \
    --isolation chroot --network host --pull=never --format docker --layers \
    "${build_mounts[@]}" \
    --build-arg "TORCH_SPEC=/tmp/torch-wheel/$wheel" \
    -t "$IMAGE" "$context" >"$work/build.log" 2>&1 \
    || { show_log "$work/build.log" 80; fail "buildah bud (log above)"; }
build_seconds=$((SECONDS - t0))
new_image=$(pod image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
    pod rmi "$old_image" >/dev/null 2>&1 || true  # the previous build's image, unless later layers use it
fi
size_mb=$(($(pod image inspect --format '{{.Size}}' "$IMAGE") / 1000000))
log "  built in ${build_seconds} s; image size ${size_mb} MB"
healthcheck=$(pod image inspect --format '{{.HealthCheck}}' "$IMAGE" 2>/dev/null || true)
case $healthcheck in
    *_stcore/health*) ;;
    *) fail "the image has no HEALTHCHECK on /_stcore/health (got: ${healthcheck:-nothing})" ;;
esac
rm -rf "$context"

# ---------------------------------------------------------------------------------------------------------
# The container, with a volume at /data that uid 1000 may write (a Space's persistent storage).
volume="$work/data"
mkdir -p "$volume"
chown 1000:1000 "$volume"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_container() {
    pod rm -f -t 5 "$CONTAINER" >/dev/null 2>&1 || true
    local common=(-d --name "$CONTAINER" "${ULIMITS[@]}" -v "$volume:/data")
    if [ "$net_mode" != host ]; then
        if pod run "${common[@]}" -p "127.0.0.1:$port:7860" "$IMAGE" >"$work/run.log" 2>&1; then
            net_mode=port
            return 0
        fi
        log "  podman run -p failed here ($(tail -n 1 "$work/run.log")); using the host's network instead"
        pod rm -f -t 5 "$CONTAINER" >/dev/null 2>&1 || true
        net_mode=host
    fi
    # The host's network: the app listens on 127.0.0.1:$PORT only (start-space.sh passes extra flags on).
    pod run "${common[@]}" --network host -e "PORT=$port" "$IMAGE" \
        scripts/start-space.sh --server.address 127.0.0.1 >"$work/run.log" 2>&1 \
        || { show_log "$work/run.log"; fail "podman run"; }
}

# Waits for "ok" from /_stcore/health on 127.0.0.1:$port; returns 2 when the app answers inside the container
# but not through the published port (port forwarding broken in this VM).
wait_healthy() {
    local deadline=$((SECONDS + $(budget "$HEALTH_LIMIT"))) inside_ok=0 answer
    while [ "$SECONDS" -lt "$deadline" ]; do
        answer=$(curl -fsS --max-time 4 "http://127.0.0.1:$port/_stcore/health" 2>/dev/null || true)
        [ "$answer" = ok ] && return 0
        [ "$(pod inspect --format '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" = true ] \
            || fail "the container stopped (podman inspect: $(pod inspect --format '{{.State.Status}} exit {{.State.ExitCode}}' "$CONTAINER" 2>&1))"
        if [ "$net_mode" = port ] && pod exec "$CONTAINER" python -c \
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/_stcore/health', timeout=4)" \
            >/dev/null 2>&1; then
            inside_ok=$((inside_ok + 1))
            [ "$inside_ok" -ge 5 ] && return 2
        fi
        sleep 2
    done
    fail "/_stcore/health did not answer ok within ${HEALTH_LIMIT} s"
}

# podman stop and rm, quietly: without systemd, podman logs an error about the HEALTHCHECK timer it cannot
# remove (it never made one), which is harmless.
stop_container() {
    { pod stop -t 10 "$CONTAINER" && pod rm "$CONTAINER"; } >"$work/stop.log" 2>&1 \
        || { show_log "$work/stop.log"; fail "podman stop / podman rm"; }
}

start_and_wait() {
    local t0=$SECONDS rc=0
    start_container
    wait_healthy || rc=$?
    if [ "$rc" -eq 2 ]; then
        log "  the app answers inside the container but not on 127.0.0.1:$port; using the host's network instead"
        net_mode=host
        start_container
        wait_healthy
    fi
    health_seconds=$((SECONDS - t0))
}

step_name="start and health"
command -v curl >/dev/null 2>&1 || fail "curl is missing"
port=$(free_port)
log "starting $CONTAINER (app on 127.0.0.1:$port, volume $volume at /data) ..."
start_and_wait
first_health_seconds=$health_seconds
log "  healthy after ${health_seconds} s (network: $net_mode)"

step_name="user and storage"
uid=$(pod exec "$CONTAINER" id -u) || fail "podman exec id -u"
[ "$uid" = 1000 ] || fail "the container runs as uid $uid, not 1000"
app_uid=$(pod exec "$CONTAINER" sh -c "awk '/^Uid:/ {print \$2}' /proc/1/status") || fail "reading the app's uid"
[ "$app_uid" = 1000 ] || fail "the app (pid 1) runs as uid $app_uid, not 1000"
# What scripts/start-space.sh chose, from the app's own environment: LORA_LAB_HOME (where runs are written) and,
# when runs live on local disk, LORA_LAB_MIRROR (the folder on the volume they are copied to whole).
app_env() {
    pod exec "$CONTAINER" sh -c "tr '\\0' '\\n' </proc/1/environ | sed -n 's/^$1=//p'"
}
home=$(app_env LORA_LAB_HOME) || fail "reading the app's environment"
mirror=$(app_env LORA_LAB_MIRROR) || fail "reading the app's environment"
[ -n "$home" ] || fail "the app has no LORA_LAB_HOME"
use_mirror=false
case $home/ in
    /data/*) persisted=$home ;;
    *)
        case $mirror/ in
            /data/?*) persisted=$mirror use_mirror=true ;;
            *) fail "nothing reaches the volume: LORA_LAB_HOME=$home, LORA_LAB_MIRROR=${mirror:-unset}" ;;
        esac
        ;;
esac
[ -d "$volume${persisted#/data}" ] || fail "$persisted is not on the volume"
log "  app runs as uid 1000; LORA_LAB_HOME=$home, LORA_LAB_MIRROR=${mirror:-unset}: runs persist in $persisted"
run_dir="$home/runs/image-check"
demo_dir="$home/demo"
# podman exec starts from the image's environment: give it the app's settings.
app_vars=(-e "LORA_LAB_HOME=$home" -e "LORA_LAB_MIRROR=$mirror" -e HF_HUB_OFFLINE=1 -e HF_DATASETS_OFFLINE=1)

step_name="HEALTHCHECK"
# The image's own HEALTHCHECK command, run once by hand (podman's timer for it needs systemd, absent here).
pod healthcheck run "$CONTAINER" >"$work/healthcheck.log" 2>&1 \
    || { show_log "$work/healthcheck.log"; fail "podman healthcheck run: the image's HEALTHCHECK says unhealthy"; }
log "  the image's HEALTHCHECK says healthy"

# ---------------------------------------------------------------------------------------------------------
step_name="training"
log "training: demo data, then 4 LoRA steps of the demo GPT-2 with accelerate (CPU) ..."
t0=$SECONDS
timeout "$(budget 600)" podman "${storage_opts[@]}" exec "${app_vars[@]}" "$CONTAINER" \
    python -m webapp.services.demo "$demo_dir" >"$work/demo.log" 2>&1 \
    || { show_log "$work/demo.log"; fail "python -m webapp.services.demo $demo_dir"; }
timeout "$(budget 900)" podman "${storage_opts[@]}" exec "${app_vars[@]}" "$CONTAINER" \
    accelerate launch --config_file configs/accelerate/cpu.yaml finetune/train.py \
    --model_name_or_path "$demo_dir/checkpoints/gpt2" --task causal-lm \
    --train_file "$demo_dir/samples/stories.txt" --output_dir "$run_dir" \
    --max_steps 4 --logging_steps 1 >"$work/train.log" 2>&1 \
    || {
        show_log "$work/train.log"
        pod exec "$CONTAINER" tail -n 30 "$run_dir/train.log" >&2 2>/dev/null || true
        fail "accelerate launch finetune/train.py"
    }
training_seconds=$((SECONDS - t0))
run_state() {  # the state in a run's status.json, read inside the container
    pod exec "$CONTAINER" python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("state"))' \
        "$1/status.json" 2>&1
}
state=$(run_state "$run_dir") || fail "reading $run_dir/status.json: $state"
[ "$state" = finished ] || fail "the run's state is '$state', not finished"
pod exec "$CONTAINER" test -f "$run_dir/metrics.json" || fail "the run wrote no metrics.json"
log "  run finished in ${training_seconds} s (demo data and training together)"

step_name="torch_compile"
# The page offers torch_compile where a C compiler exists (the image installs g++): one compiled run proves it.
log "training: 4 compiled LoRA steps of the demo GPT-2 (torch_compile: inductor builds C++ kernels) ..."
t0=$SECONDS
timeout "$(budget 900)" podman "${storage_opts[@]}" exec "${app_vars[@]}" "$CONTAINER" \
    accelerate launch --config_file configs/accelerate/cpu.yaml finetune/train.py \
    --model_name_or_path "$demo_dir/checkpoints/gpt2" --task causal-lm \
    --train_file "$demo_dir/samples/stories.txt" --output_dir "$run_dir-compiled" \
    --max_steps 4 --logging_steps 1 --torch_compile true >"$work/compile.log" 2>&1 \
    || {
        show_log "$work/compile.log"
        pod exec "$CONTAINER" tail -n 30 "$run_dir-compiled/train.log" >&2 2>/dev/null || true
        fail "accelerate launch finetune/train.py --torch_compile true"
    }
state=$(run_state "$run_dir-compiled") || fail "reading $run_dir-compiled/status.json: $state"
[ "$state" = finished ] || fail "the compiled run's state is '$state', not finished"
log "  compiled run finished in $((SECONDS - t0)) s"

if $use_mirror; then
    step_name="mirror push"
    # What the app's job runner does every minute and when it goes idle (webapp/services/mirror.py).
    pod exec "${app_vars[@]}" "$CONTAINER" python -m webapp.services.mirror push >"$work/push.log" 2>&1 \
        || { show_log "$work/push.log"; fail "python -m webapp.services.mirror push"; }
    [ -f "$volume${persisted#/data}/runs/image-check/metrics.json" ] \
        || fail "the run's metrics.json did not reach the volume ($mirror/runs/image-check)"
    log "  $(tail -n 1 "$work/push.log")"
fi

# ---------------------------------------------------------------------------------------------------------
step_name="restart"
log "replacing the container (same volume) ..."
stop_container
start_and_wait
pod exec "$CONTAINER" test -f "$run_dir/metrics.json" \
    || fail "$run_dir/metrics.json is gone after the restart"
state=$(run_state "$run_dir") || fail "reading $run_dir/status.json after the restart: $state"
[ "$state" = finished ] || fail "after the restart the run's state is '$state', not finished"
log "  healthy again after ${health_seconds} s; the finished run is still in $run_dir"

step_name="stop"
stop_container

echo
echo "Space image check passed ($IMAGE, torch $wheel, network: $net_mode)"
printf '  %-22s %s\n' \
    "build:" "${build_seconds} s" \
    "image size:" "${size_mb} MB" \
    "health:" "${first_health_seconds} s" \
    "training:" "${training_seconds} s" \
    "restart:" "OK (healthy after ${health_seconds} s, run kept)" \
    "total:" "$((SECONDS - started)) s"
