"""Runs that survive a restart on a Space: live files on local disk, copied whole to a mounted Storage Bucket.

A Space's persistent storage is now a Storage Bucket mounted as a volume (hf-mount: FUSE over object storage). In its
default mode a file reaches the bucket when it is closed; opening an existing file to append or to write in place
fails (EPERM); fsync does nothing; locks hold within one mount only; symbolic links live in memory until unmount.
The run directory appends to events.jsonl and train.log, locks files and relies on fsynced renames, so the app keeps
LORA_LAB_HOME on local disk and the job runner copies what changed to the mount (LORA_LAB_MIRROR) every
PUSH_SECONDS and when it goes idle: each file written whole under a temporary name, closed, then renamed into
place (a rename within the mount is supported). At start, ``python -m webapp.services.mirror restore``
(scripts/start-space.sh) copies back whatever the local disk lacks. A crash loses the last PUSH_SECONDS of changes.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from webapp.services import workspace

PUSH_SECONDS = 60.0
# Rebuilt on demand, machine-specific, or live process records: never mirrored. Top-level names of LORA_LAB_HOME,
# and names anywhere below it.
LOCAL_ONLY_TOP = {"demo", "cache", "runner.lock", "runner.json", "runner.log", "preflight.json"}
LOCAL_ONLY_ANYWHERE = {"cache", "tables", "unpacked-archives", ".lock", "__pycache__"}
RESTORED = ".mirror-restored"  # in LORA_LAB_HOME: this disk holds what the mirror held at start


def mirror_root() -> Optional[Path]:
    """The mounted folder runs are mirrored to (LORA_LAB_MIRROR), or None when the home itself persists."""
    value = os.environ.get("LORA_LAB_MIRROR", "").strip()
    return Path(value).expanduser() if value else None


def _mirrored(root: Path) -> dict[str, Path]:
    """Every file under ``root`` that is mirrored, by its path relative to ``root``."""
    found = {}
    for folder, dirs, files in os.walk(root):
        relative = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not _local_only(relative / d)]
        for name in files:
            if not _local_only(relative / name) and not name.endswith((".tmp", ".partial")):
                found[str(relative / name)] = Path(folder) / name
    return found


def _local_only(relative: Path) -> bool:
    parts = relative.parts
    return bool(parts) and (parts[0] in LOCAL_ONLY_TOP or any(p in LOCAL_ONLY_ANYWHERE for p in parts))


def _copy_whole(source: Path, target: Path) -> None:
    """``source`` to ``target`` as one sequential write of a new file, then a rename: what a bucket mount accepts."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.utime(partial, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns))
    os.replace(partial, target)


def _changed(source: Path, target: Path) -> bool:
    try:
        mine, theirs = source.stat(), target.stat()
    except FileNotFoundError:
        return True
    return mine.st_size != theirs.st_size or mine.st_mtime_ns > theirs.st_mtime_ns


def push(home: Path, mirror: Path) -> int:
    """Copy new and changed files of ``home`` to ``mirror``; remove from it what ``home`` no longer holds (only once
    ``home`` was restored from it, so a fresh disk never empties the bucket). Returns the files written."""
    local, remote = _mirrored(home), _mirrored(mirror)
    written = 0
    for relative, source in local.items():
        if _changed(source, mirror / relative):
            try:
                _copy_whole(source, mirror / relative)
            except FileNotFoundError:  # removed while copying (a checkpoint pruned): the next push settles it
                continue
            written += 1
    if (home / RESTORED).is_file():
        for relative in remote.keys() - local.keys():
            (mirror / relative).unlink(missing_ok=True)
            _remove_empty_parents(mirror / relative, mirror)
    return written


def _remove_empty_parents(path: Path, root: Path) -> None:
    for folder in path.parents:
        if folder == root or any(folder.iterdir()):
            return
        folder.rmdir()


def restore(home: Path, mirror: Path) -> int:
    """Copy every mirrored file that ``home`` lacks back from ``mirror``; returns how many."""
    copied = 0
    for relative, source in _mirrored(mirror).items():
        if not (home / relative).exists():
            _copy_whole(source, home / relative)
            copied += 1
    (home / RESTORED).write_text(str(time.time()))
    return copied


class Pusher:
    """The runner's mirroring: a push at most every PUSH_SECONDS (``due``), and a last one on the way out."""

    def __init__(self, mirror: Optional[Path]):
        self.mirror, self.last = mirror, 0.0

    def due(self) -> None:
        if self.mirror is not None and time.time() - self.last >= PUSH_SECONDS:
            self.now()

    def now(self) -> None:
        if self.mirror is not None:
            push(workspace.home(), self.mirror)
            self.last = time.time()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp.services.mirror", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("restore", "push"), help="copy the mirror into LORA_LAB_HOME, or back")
    command = parser.parse_args(argv).command
    mirror = mirror_root()
    if mirror is None:
        print("LORA_LAB_MIRROR is not set: nothing to do", file=sys.stderr)
        return 0
    mirror.mkdir(parents=True, exist_ok=True)
    count = restore(workspace.home(), mirror) if command == "restore" else push(workspace.home(), mirror)
    print(f"{command}: {count} file(s) copied between {workspace.home()} and {mirror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
