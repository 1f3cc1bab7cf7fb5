"""The zip of a finished run's merged model (the adapter folded into the base weights), built in the background.

Merging a large model and zipping its weights take minutes: a page starts the build and shows its progress, and
offers the zip once it is whole. One build per run for the whole server: a second click, or another tab, joins the
one under way. The zip is kept in the run's folder (its owner's storage, deleted with the run) as
RUN/exports/merged.zip. Plain Python: no streamlit.
"""

import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

from finetune.errors import UserError
from finetune.rundir import FINISHED, RunDirectory

EXPORTS, MERGED_ZIP = "exports", "merged.zip"
STAGING = ".merged."  # the prefix of a build's staging folder, beside the zip
ZIP_CHUNK = 2**20  # bytes zipped between two progress counts
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergedBuild:
    """Where the zip of a run's merged model stands."""

    state: str  # "absent" (never built), "building", "ready" or "failed"
    phase: str = ""  # while building: "merging" (nothing to measure), then "zipping"
    done_bytes: int = 0  # while zipping: bytes of the merged model zipped so far, of total_bytes
    total_bytes: int = 0
    elapsed: float = 0.0  # seconds since the build started
    error: Optional[str] = None  # why it failed, in words

    @property
    def progress(self) -> float:
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else 0.0


class _Build:
    """A build under way, or failed: its worker thread writes the counts, pages read snapshots (MergedBuild)."""

    def __init__(self, path: Path):
        self.phase, self.done, self.total, self.error = "merging", 0, 0, None
        self.started = time.time()
        self.thread = threading.Thread(target=_work, args=(path, self), name=f"merge {path.name}", daemon=True)

    def snapshot(self) -> MergedBuild:
        state = "failed" if self.error else "building"
        return MergedBuild(state, self.phase, self.done, self.total, time.time() - self.started, self.error)

    def count(self, size: int) -> None:
        self.done += size


_builds: dict[Path, _Build] = {}  # by run folder: under way, or failed (until started again)
_lock = threading.Lock()


def zip_path(run_path: Path) -> Path:
    return run_path / EXPORTS / MERGED_ZIP


def status(run_path: Path) -> MergedBuild:
    with _lock:
        build = _builds.get(run_path)
        if build:
            return build.snapshot()
    return MergedBuild("ready" if zip_path(run_path).is_file() else "absent")


def start(run_path: Path) -> Optional[_Build]:
    """Start building the run's merged zip unless it is under way (that build is returned) or ready (None); a
    failed build starts again. UserError unless the run has finished."""
    run = RunDirectory(run_path)
    if run.state != FINISHED or not run.adapter_dir.is_dir():
        raise UserError(f"download: {run_path.name} has not finished; only a finished run exports its merged model")
    with _lock:
        build = _builds.get(run_path)
        if (build and not build.error) or (not build and zip_path(run_path).is_file()):
            return build
        build = _builds[run_path] = _Build(run_path)
    build.thread.start()
    return build


def wait(run_path: Path) -> Path:
    """The run's merged zip: started unless under way or ready, and waited for."""
    build = start(run_path)
    if build:
        build.thread.join()
        if build.error:
            raise UserError(build.error)
    return zip_path(run_path)


def _work(run_path: Path, build: _Build) -> None:
    """Merge and zip in a staging folder beside the zip, renamed into place only when whole, so a download never
    gets part of a file (a build killed with the server leaves its staging folder, cleared by the next)."""
    from finetune.export.local import export_merged

    target = zip_path(run_path)
    try:
        target.parent.mkdir(exist_ok=True)
        for old in target.parent.glob(f"{STAGING}*"):
            shutil.rmtree(old, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=STAGING) as staging:
            folder = export_merged(run_path, Path(staging) / "export")
            build.total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            build.phase = "zipping"
            with (Path(staging) / MERGED_ZIP).open("wb") as out:
                zip_folder(folder, f"{run_path.name}-merged", out, build.count)
            os.replace(Path(staging) / MERGED_ZIP, target)
    except Exception as err:  # shown on the page, which offers to start again
        logger.exception("building the merged model of %s failed", run_path)
        build.error = str(err) if isinstance(err, UserError) else f"download: building the merged model failed: {err!r}"
        return
    with _lock:
        _builds.pop(run_path, None)


def zip_folder(folder: Path, top: str, out: BinaryIO, count: Callable[[int], None] = lambda size: None) -> None:
    """Every file under ``folder`` into the zip archive ``out``, stored under ``top/`` (a run's name: the project's
    own naming); ``count`` is told each chunk's size as it is zipped."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo.from_file(file, str(Path(top) / file.relative_to(folder)))
            info.compress_type = zipfile.ZIP_DEFLATED
            with file.open("rb") as source, archive.open(info, "w") as target:
                while chunk := source.read(ZIP_CHUNK):
                    target.write(chunk)
                    count(len(chunk))
