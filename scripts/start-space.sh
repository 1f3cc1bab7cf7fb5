#!/usr/bin/env bash
# Start the LoRA Lab web app the way the Docker image does (its CMD): streamlit, headless, on 0.0.0.0:$PORT.
# Usage: scripts/start-space.sh [extra streamlit flags]
# Defaults, each set only when the variable is not set already:
#   LORA_LAB_HOME     $HOME/lora-lab: live runs stay on local disk
#   LORA_LAB_MIRROR   /data/lora-lab when /data (LORA_LAB_PERSISTENT: where the Space mounts its Storage Bucket)
#                     is writable: runs are restored from it here, and the job runner copies them to it whole
#                     (webapp/services/mirror.py: a bucket mount refuses appends and in-place writes)
#   PORT              7860 (the Space's app_port)
# HF_HOME is left to the libraries ($HOME/.cache/huggingface): the hub cache relies on symbolic links and locks,
# which a bucket mount does not keep; models download again after a restart.
# On a Space (SPACE_ID is set) XSRF protection is off unless STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION says
# otherwise: the Space is shown in an iframe on huggingface.co, where browsers drop Streamlit's XSRF cookie
# and every file upload would fail with 403.
# HF_TOKEN, when given, stays in the environment only: nothing here writes it anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

persistent=${LORA_LAB_PERSISTENT:-/data}
if [ -z "${LORA_LAB_MIRROR:-}" ] && [ -d "$persistent" ] && [ -w "$persistent" ]; then
    export LORA_LAB_MIRROR="$persistent/lora-lab"
fi
export LORA_LAB_HOME="${LORA_LAB_HOME:-${HOME:?HOME is not set}/lora-lab}"
if [ -n "${SPACE_ID:-}" ]; then
    export STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION="${STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION:-false}"
    # Streamlit keeps XSRF on whenever sign-in is configured: a SameSite=None cookie still reaches the iframe
    # in browsers that allow third-party cookies.
    export STREAMLIT_SERVER_XSRF_COOKIE_SAME_SITE="${STREAMLIT_SERVER_XSRF_COOKIE_SAME_SITE:-none}"
fi
mkdir -p "$LORA_LAB_HOME"
if [ -n "${LORA_LAB_MIRROR:-}" ]; then
    python -m webapp.services.mirror restore
fi
# Signed-in mode: Streamlit's [auth] settings from the Space's OAuth variables (docs/deploying.md).
if [ "${LORA_LAB_USERS:-local}" = huggingface ]; then
    python -m webapp.services.auth_config
fi
# A shared app: the operator's HF_TOKEN must not fetch private models for visitors, and tracebacks
# (server paths) stay in the log.
if [ "${LORA_LAB_USERS:-local}" != local ]; then
    export HF_HUB_DISABLE_IMPLICIT_TOKEN=1
    export STREAMLIT_CLIENT_SHOW_ERROR_DETAILS="${STREAMLIT_CLIENT_SHOW_ERROR_DETAILS:-type}"
fi
# Streamlit's own upload cap follows the app's per-user one.
export STREAMLIT_SERVER_MAX_UPLOAD_SIZE="${STREAMLIT_SERVER_MAX_UPLOAD_SIZE:-${LORA_LAB_MAX_UPLOAD_MB:-1024}}"

exec streamlit run webapp/app.py \
    --server.address 0.0.0.0 \
    --server.port "${PORT:-7860}" \
    --server.headless true \
    "$@"
