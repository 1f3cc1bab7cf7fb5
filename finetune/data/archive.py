"""Unpacking .zip data archives safely: into a folder named by the archive's content hash, once.

An archive is hostile input on a shared server. Every member is checked before anything is written:
no absolute paths, no ``..``, no symlinks or device files, and the unpacked size (from the headers)
within a cap. While streaming, the bytes actually written are counted against the same cap and
each member's compression ratio is bounded, so a lying header cannot fill the disk. Members are
written to a temporary folder that is renamed into place only when everything passed: a refused
archive leaves nothing behind, and a finished folder is reused by every run that names the archive.
"""

import hashlib
import logging
import os
import shutil
import stat
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from finetune.errors import UserError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Members this small may compress well beyond the ratio cap (a blank text file, a flat PNG) without
# threatening the disk; the ratio is only enforced above it.
RATIO_EXEMPT_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Caps on what one archive may unpack to."""

    max_unpacked_bytes: int = 2 * 2**30
    # Photos barely compress (JPEG/PNG about 1-1.2x) and text about 3-10x; bombs reach 1000x and more.
    max_compression_ratio: float = 100.0
    # A million tiny files would exhaust inodes long before the byte cap, and the loader lists every one.
    max_members: int = 200_000


def content_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256, read in chunks (archives can be GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def unpack_zip(path: Path, target: Path, limits: Limits, role: str, shown_as: str | None = None) -> Path:
    """Unpack ``path`` into ``target`` (a folder the caller names) unless it is there already; returns target.

    Messages name the archive ``shown_as`` (the name its user gave it) or, by default, by its file name.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    name = shown_as or path.name
    _check_entry_count(path, name, limits, role)
    # A folder of its own for this call: two tabs unpacking the same upload must not share one.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(archive, name, limits, role)
            _extract(archive, members, staging, name, limits, role)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # else another process unpacked the same archive a moment before
                raise
    except zipfile.BadZipFile as err:
        raise UserError(f"{role}: {name} is not a valid .zip archive ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Unpacked %s into %s", path.name, target)
    return target


def _check_entry_count(path: Path, name: str, limits: Limits, role: str) -> None:
    """Refuse an archive with too many entries before zipfile reads its whole directory into memory
    (about 560 bytes per entry: a million tiny entries would cost half a GiB)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65_557))  # the end record and its longest comment
        tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or end + 22 > len(tail):
        return  # not a zip: zipfile says so with its own message
    entries = struct.unpack("<H", tail[end + 10 : end + 12])[0]
    locator = tail.rfind(b"PK\x06\x06", 0, end)  # ZIP64 end record: 8-byte counts
    if entries == 0xFFFF and locator >= 0 and locator + 40 <= len(tail):
        entries = struct.unpack("<Q", tail[locator + 32 : locator + 40])[0]
    if entries > limits.max_members:
        raise _too_many(name, entries, limits, role)


def _too_many(name: str, entries: int, limits: Limits, role: str) -> UserError:
    return UserError(
        f"{role}: {name} holds {entries:,} files and folders; at most {limits.max_members:,} are accepted "
        "(fewer, larger examples, or split the data)"
    )


def _checked_members(
    archive: zipfile.ZipFile, name: str, limits: Limits, role: str
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member with its safe relative path; UserError for the first unsafe one or a too-large total."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise _too_many(name, len(infos), limits, role)
    checked, total = [], 0
    for info in infos:
        relative = _safe_relative(info.filename)
        if relative is None:
            raise UserError(
                f"{role}: {name} holds an unsafe path {info.filename!r}; expected relative paths "
                "inside the archive (no absolute paths, no '..')"
            )
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix file type
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if kind == stat.S_IFLNK else "a special file"
            raise UserError(
                f"{role}: {name} member {info.filename!r} is {kind}; only plain files and folders are accepted"
            )
        total += info.file_size
        checked.append((info, relative))
    if total > limits.max_unpacked_bytes:
        raise UserError(
            f"{role}: {name} unpacks to {_size(total)}; at most {_size(limits.max_unpacked_bytes)} is accepted"
        )
    return checked


def _safe_relative(filename: str) -> PurePosixPath | None:
    """The member's path relative to the target, or None when it could land outside it."""
    if "\x00" in filename:
        return None
    path = PurePosixPath(filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        return None
    return path


def _extract(archive: zipfile.ZipFile, members, staging: Path, name: str, limits: Limits, role: str) -> None:
    """Stream every member into ``staging``, counting bytes against the caps as they are written."""
    written_total = 0
    for info, relative in members:
        destination = staging / relative
        try:
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            written_total += _stream_member(archive, info, destination, written_total, name, limits, role)
        except OSError as err:  # duplicate names, a file where a folder should be, a full disk
            raise UserError(f"{role}: {name} member {info.filename!r} could not be unpacked ({err})") from err


def _stream_member(
    archive, info: zipfile.ZipInfo, destination: Path, before: int, name: str, limits: Limits, role: str
) -> int:
    """Bytes written for one member; UserError as soon as a cap is crossed."""
    written = 0
    with archive.open(info) as source, destination.open("xb") as sink:
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            written += len(chunk)
            if before + written > limits.max_unpacked_bytes:
                raise UserError(
                    f"{role}: {name} unpacks to more than {_size(limits.max_unpacked_bytes)}; that much is not accepted"
                )
            if written > RATIO_EXEMPT_BYTES and written / max(info.compress_size, 1) > limits.max_compression_ratio:
                raise UserError(
                    f"{role}: {name} member {info.filename!r} expands more than "
                    f"{limits.max_compression_ratio:g}x; such archives are refused as zip bombs"
                )
            sink.write(chunk)
    return written


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
