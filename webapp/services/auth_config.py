"""Streamlit's sign-in configuration for "Sign in with Hugging Face", made from a Space's environment.

A Space whose README front matter says ``hf_oauth: true`` gets OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET,
OAUTH_SCOPES, OPENID_PROVIDER_URL and SPACE_HOST in its environment. Streamlit's ``st.login`` reads an
``[auth]`` section from secrets.toml, so at start (``scripts/start-space.sh``, when LORA_LAB_USERS is
``huggingface``) this writes ~/.streamlit/secrets.toml from those variables: nothing secret is in the
repository or the image. The cookie secret that signs Streamlit's identity cookie is made once and kept
in LORA_LAB_HOME, so sign-ins survive restarts.

    python -m webapp.services.auth_config
"""

import os
import secrets
import sys
from pathlib import Path
from typing import Mapping

from finetune.rundir import write_text_atomic

MARKER = "# Written by LoRA Lab from the Space's OAuth variables (webapp/services/auth_config.py)."
REQUIRED = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OPENID_PROVIDER_URL", "SPACE_HOST")


def auth_section(env: Mapping[str, str], cookie_secret: str) -> str:
    """The secrets.toml text; ValueError naming the missing variables when OAuth is not enabled."""
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not set: add `hf_oauth: true` (and `hf_oauth_scopes: [write-repos]` to "
            "let users push with their own token) to the Space's README front matter"
        )
    host = env["SPACE_HOST"].split(",")[0].strip()
    scopes = env.get("OAUTH_SCOPES") or "openid profile"
    values = {
        "redirect_uri": f"https://{host}/oauth2callback",
        "cookie_secret": cookie_secret,
        "client_id": env["OAUTH_CLIENT_ID"],
        "client_secret": env["OAUTH_CLIENT_SECRET"],
        "server_metadata_url": env["OPENID_PROVIDER_URL"].rstrip("/") + "/.well-known/openid-configuration",
    }
    lines = [
        MARKER,
        "[auth]",
        *(f"{key} = {_toml_string(value)}" for key, value in values.items()),
        'expose_tokens = ["access"]',
        f"client_kwargs = {{ scope = {_toml_string(scopes)} }}",
    ]
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cookie_secret(home: Path) -> str:
    path = home / ".auth-cookie-secret"
    if not path.is_file():
        write_text_atomic(path, secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def write(env: Mapping[str, str], home: Path, target: Path) -> None:
    """Write ``target`` unless it exists and was written by someone else (an operator's own secrets)."""
    if target.is_file() and MARKER not in target.read_text(errors="replace"):
        raise ValueError(f"{target} exists and was not written by LoRA Lab; add its [auth] section yourself")
    text = auth_section(env, cookie_secret(home))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    target.chmod(0o600)


def main() -> int:
    from webapp.services import workspace

    try:
        write(os.environ, workspace.home(), Path.home() / ".streamlit" / "secrets.toml")
    except ValueError as err:
        print(f"Sign-in with Hugging Face is not set up: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
