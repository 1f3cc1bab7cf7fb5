"""The reproducibility record of a run (RUN/reproducibility.json): what config.yaml alone does not say about how a
result came about. Library versions, platform, device and precision, the SHA-256 of the data, the project's git
commit and the exact command; ``python -m finetune.reproduce`` re-runs a run and compares two records.

Nothing heavy at import: the model card and the reproduce command read records without the training stack.
"""

import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, Optional

from finetune.rundir import PROJECT_ROOT, RunDirectory

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "numpy")
DATA_FIELDS = ("train_file", "validation_file", "test_file")
# An image folder can hold gigabytes: hashing all the data stops after this long (the record says so), so a run
# never waits minutes for its record.
HASH_SECONDS = 120.0
CHUNK = 1 << 20


class OutOfTime(Exception):
    """Hashing went past its deadline."""


def write_record(cfg: Any, run: RunDirectory, accelerator: Any) -> None:
    """Write the run's record (main process only). A resumed run keeps the records of its earlier segments in
    ``earlier_segments``: a result trained partly under other versions says so."""
    if not accelerator.is_main_process:
        return
    record = build_record(cfg, accelerator)
    earlier = run.read_reproducibility()
    if earlier:
        record["earlier_segments"] = [*earlier.pop("earlier_segments", []), earlier]
    run.write_reproducibility(record)


def build_record(cfg: Any, accelerator: Any) -> dict:
    return {
        "recorded_at": time.time(),
        "versions": library_versions(),
        "platform": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "device": device_facts(accelerator),
        "data": data_digests(cfg),
        "git": git_state(),
        "command": command_facts(),
    }


def library_versions() -> dict[str, Optional[str]]:
    """Python's version and the installed version of each of LIBRARIES (None when one is not installed)."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_facts(accelerator: Any) -> dict:
    """Where and how the run trains: device, precision (``auto`` resolved), processes and, on CUDA, the GPU."""
    facts = {
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
    }
    if accelerator.device.type == "cuda":
        import torch

        facts["gpu_name"] = torch.cuda.get_device_name(accelerator.device)
    return facts


def command_facts() -> dict:
    """The command as this trainer was started (its argv, interpreter and working folder), how many processes were
    launched, and the ``accelerate launch`` command that started it when one did."""
    return {
        "argv": list(sys.argv),
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "launched_processes": int(os.environ.get("WORLD_SIZE", "1")),
        "launcher": accelerate_launcher(),
    }


def accelerate_launcher() -> Optional[list[str]]:
    """The parent process's command line when it is ``accelerate launch`` (it runs torchrun in-process for several
    processes, so it is every rank's parent), else None."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return None
    is_launch = "launch" in argv and any(
        Path(arg).name == "accelerate" or arg == "accelerate.commands.launch" for arg in argv
    )
    return argv if is_launch else None


def data_digests(cfg: Any, budget: float = HASH_SECONDS) -> dict[str, dict]:
    """The digest of each data file the run was given (train_file, validation_file, test_file), all within
    ``budget`` seconds."""
    deadline = time.monotonic() + budget
    return {field: digest(Path(value), deadline) for field in DATA_FIELDS if (value := getattr(cfg, field, None))}


def digest(path: Path, deadline: float) -> dict:
    """{"path", "sha256", "bytes"} of a data file; of a folder the SHA-256 of its manifest (one line
    "<file sha256>  <relative path>" per file, sorted by path) and "files". "sha256" is None, with "incomplete"
    saying why, for a missing or unreadable path or when the deadline came first."""
    entry: dict[str, Any] = {"path": str(path.expanduser().resolve())}
    try:
        if path.is_dir():
            return {**entry, **folder_digest(path, deadline)}
        if path.is_file():
            sha, size = file_digest(path, deadline)
            return {**entry, "sha256": sha, "bytes": size}
        return {**entry, "sha256": None, "incomplete": "no such file or folder"}
    except OutOfTime:
        return {**entry, "sha256": None, "incomplete": f"not hashed: the data took longer than {HASH_SECONDS:g} s"}
    except OSError as err:
        return {**entry, "sha256": None, "incomplete": f"unreadable: {err}"}


def file_digest(path: Path, deadline: float) -> tuple[str, int]:
    """(SHA-256 in hex, size in bytes) of a file, read in chunks; OutOfTime past ``deadline``."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise OutOfTime
    return sha.hexdigest(), size


def folder_digest(folder: Path, deadline: float) -> dict:
    """The manifest digest of every file under ``folder`` (the same as
    ``find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum`` run inside it, for names without spaces)."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    manifest, total = hashlib.sha256(), 0
    for name in files:
        sha, size = file_digest(folder / name, deadline)
        manifest.update(f"{sha}  ./{name}\n".encode())
        total += size
    return {"sha256": manifest.hexdigest(), "bytes": total, "files": len(files)}


def git_state(root: Path = PROJECT_ROOT) -> dict:
    """{"commit", "dirty"} of the project's checkout (the folder holding finetune/, never anything a run folder
    says): dirty when tracked files differ from the commit, then with "diff_sha256", the SHA-256 of those changes.
    Both None when it is no git checkout of its own, or git is missing."""
    found = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = found.splitlines() if found else []
    if len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():  # a repository around an installed copy
        return {"commit": None, "dirty": None}
    changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    state = {"commit": lines[1], "dirty": None if changes is None else bool(changes)}
    if changes:  # two runs of one commit with different edits differ here
        diff = _git(root, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv")
        state["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest() if diff is not None else None
    return state


def _git(root: Path, *args: str) -> Optional[str]:
    """git's output in ``root``, None when it fails. GIT_* variables could point it at another repository, and a
    configured fsmonitor would run a command: both are left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    command = ["git", "-c", "core.fsmonitor=false", "--no-optional-locks", "-C", str(root), *args]
    try:
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class Difference(NamedTuple):
    """One way two records differ: kind (versions, platform, device, git, data), what, and the two values."""

    kind: str
    name: str
    original: Any
    new: Any


def differences(original: dict, new: dict) -> list[Difference]:
    """What differs between two records: versions, platform, device, commit, and the data's SHA-256."""
    found = []
    for kind in ("versions", "platform", "device", "git"):
        before, after = original.get(kind) or {}, new.get(kind) or {}
        found += [
            Difference(kind, key, before.get(key), after.get(key))
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        ]
    before, after = original.get("data") or {}, new.get("data") or {}
    for field in sorted(set(before) | set(after)):
        old_sha, new_sha = (before.get(field) or {}).get("sha256"), (after.get(field) or {}).get("sha256")
        if old_sha != new_sha or old_sha is None:  # an unhashed file cannot be shown unchanged
            found.append(Difference("data", field, old_sha, new_sha))
    return found


def short(sha: Optional[str]) -> str:
    """A SHA-256 (or commit) as its first 12 hex digits, the way people quote them."""
    return sha[:12] if isinstance(sha, str) else "unknown"
