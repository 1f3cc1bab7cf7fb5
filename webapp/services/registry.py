"""Which folders are runs: the ones the app made, sealed when it made them.

A user's upload can hold files named like a run's (status.json, job.json, config.yaml). On a shared app a folder
counts as a run, to be listed, queued, started or counted in a quota, only when it holds the seal the launch wrote:
an HMAC of its owner and name under a key only this server holds (LORA_LAB_HOME/seal.key, mode 0600), which no
upload can forge and which a copied or renamed folder does not carry over. In local mode the one user owns the
machine, and every run folder counts, command-line runs included.
"""

import functools
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from finetune.rundir import RunDirectory
from webapp.services import workspace

KEY_FILE = "seal.key"
SEAL_FILE = ".lora-lab-run"  # in each run folder the app made


def _key() -> bytes:
    return _key_in(workspace.home())


@functools.lru_cache(maxsize=8)
def _key_in(home: Path) -> bytes:
    """The sealing key of the workspace ``home``, made once (O_EXCL: two processes starting together agree on one
    key) and read once per process: every run listing checks every run folder's seal."""
    path = home / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes()


def _seal_of(owner: str, name: str) -> str:
    return hmac.new(_key(), f"{owner}/{name}".encode(), hashlib.sha256).hexdigest()


def seal(owner: str, run_path: Path) -> None:
    """Mark ``run_path`` (a folder the app just made for ``owner``) as a run."""
    (run_path / SEAL_FILE).write_text(_seal_of(owner, run_path.name))


def is_sealed(owner: str, run_path: Path) -> bool:
    try:
        found = (run_path / SEAL_FILE).read_text(errors="replace").strip()
    except OSError:
        return False
    return hmac.compare_digest(found, _seal_of(owner, run_path.name))


def is_run(owner: str, path: Path, shared: bool) -> bool:
    """Whether the folder ``path`` in ``owner``'s runs folder is a run: on a shared app, one the app made."""
    if path.is_symlink() or not path.is_dir() or not RunDirectory(path).is_run():
        return False
    return not shared or is_sealed(owner, path)


def runs_in(owner: str, root: Path, shared: bool) -> list[RunDirectory]:
    """The runs in ``owner``'s runs folder ``root``."""
    folders = list(root.iterdir()) if root.is_dir() else []
    return [RunDirectory(p) for p in folders if is_run(owner, p, shared)]


def runs_by_owner(roots: dict[str, Path], shared: bool) -> dict[str, list[RunDirectory]]:
    """The runs in each runs folder of ``roots`` (by user key), by user key."""
    return {owner: runs_in(owner, root, shared) for owner, root in roots.items()}


def all_runs(shared: bool) -> dict[str, list[RunDirectory]]:
    """Every user's runs, by user key (what the job runner serves and the quotas count)."""
    return runs_by_owner(workspace.all_runs_dirs(), shared)
