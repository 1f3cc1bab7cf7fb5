"""Archive tricks against the unpacker, through the engine's loader and the app's upload service.

Each case checks that nothing lands outside the archive's own folder and that a refused archive
leaves nothing behind.
"""

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from finetune.data.archive import Limits, unpack_zip
from finetune.data.loading import Unpacking, load_table
from finetune.errors import UserError


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] = (), modes: dict[str, int] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in dict(links).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
        for name, mode in dict(modes).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, b"")
    return path


GOOD = {"red/0.png": _png(), "red/1.png": _png(), "blue/0.png": _png(), "blue/1.png": _png()}
TRICKS = {
    "absolute path": ({"/tmp/evil.png": b"x", **GOOD}, {}, {}, "unsafe path"),
    "parent folder": ({"red/../../evil.png": b"x", **GOOD}, {}, {}, "unsafe path"),
    "backslash parent": ({"..\\evil.png": b"x", **GOOD}, {}, {}, "unsafe path"),
    "drive letter": ({"C:/evil.png": b"x", **GOOD}, {}, {}, "unsafe path"),
    "symlink": (GOOD, {"red/link.png": "/etc/passwd"}, {}, "symbolic link"),
    "device file": (GOOD, {}, {"red/dev": stat.S_IFCHR | 0o644}, "special file"),
    "fifo": (GOOD, {}, {"red/pipe": stat.S_IFIFO | 0o644}, "special file"),
    "ratio bomb": ({**GOOD, "red/bomb.png": b"\0" * (8 * 2**20)}, {}, {}, "zip bomb"),
}


@pytest.mark.parametrize("name", TRICKS)
def test_every_archive_trick_is_refused_and_leaves_nothing(tmp_path, name):
    members, links, modes, message = TRICKS[name]
    case = tmp_path / name.replace(" ", "-")
    archive = _zip(case.with_suffix(".zip"), members, links, modes)
    root = case / "unpacked"
    with pytest.raises(UserError, match=message):
        load_table(archive, "train_file", Unpacking(root))
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()
    assert not root.exists() or not any(root.iterdir()), "nothing left behind"


def test_oversized_archive_is_refused_from_its_headers_and_while_streaming(tmp_path):
    archive = _zip(tmp_path / "big.zip", {**GOOD, "red/big.png": os.urandom(3 * 2**20)})
    with pytest.raises(UserError, match="unpacks to 3.0 MiB; at most 2.0 MiB"):
        unpack_zip(archive, tmp_path / "out", Limits(max_unpacked_bytes=2 * 2**20), "train_file")
    # A header that understates the size is caught by counting the bytes written.
    lying = tmp_path / "lying.zip"
    lying.write_bytes(archive.read_bytes())
    with zipfile.ZipFile(lying) as zf:
        info = zf.getinfo("red/big.png")
    data = bytearray(lying.read_bytes())
    _patch_sizes(data, info, declared=1000)
    lying.write_bytes(bytes(data))
    with pytest.raises(UserError):
        unpack_zip(lying, tmp_path / "out", Limits(max_unpacked_bytes=2 * 2**20), "train_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip", "lying.zip"], "no partial folder left"


def _patch_sizes(data: bytearray, info: zipfile.ZipInfo, declared: int) -> None:
    """Rewrite a member's uncompressed size in its local header and its central directory entry."""
    data[info.header_offset + 22 : info.header_offset + 26] = declared.to_bytes(4, "little")
    name, start = info.filename.encode(), 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        if data[start + 46 : start + 46 + len(name)] == name:
            data[start + 24 : start + 28] = declared.to_bytes(4, "little")
        start += 4


def test_a_good_archive_unpacks_once_and_is_reused(tmp_path):
    archive = _zip(tmp_path / "colours.zip", GOOD)
    unpacking = Unpacking(tmp_path / "cache")
    table = load_table(archive, "train_file", unpacking)
    assert len(table) == 4 and sorted(set(table["label"])) == [0, 1]
    (folder,) = list((tmp_path / "cache").iterdir())
    assert len(folder.name) == 16, "named by the archive's content hash"
    marker = folder / "red" / "0.png"
    mtime = marker.stat().st_mtime_ns
    assert len(load_table(archive, "train_file", unpacking)) == 4
    assert marker.stat().st_mtime_ns == mtime and len(list((tmp_path / "cache").iterdir())) == 1, "not unpacked again"


def test_upload_named_dot_dot_zip_stays_in_its_own_folder(tmp_path, monkeypatch):
    """The attack that once replaced a run's job.json: an upload called '...zip' holding a job.json."""
    from webapp.services import uploads, workspace
    from webapp.services.identity import local_user

    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path / "home"))
    run = workspace.runs_dir() / "victim"
    run.mkdir()
    (run / "job.json").write_text('{"preset": "cpu", "num_processes": 1, "gpus": 0}')
    payload = _zip(
        tmp_path / "payload.zip",
        {**GOOD, "job.json": b'{"command": ["/bin/sh", "-c", "env"]}', "../runs/victim/job.json": b"pwned"},
    )
    with pytest.raises(UserError, match="unsafe path"):
        uploads.save_upload(local_user(), "...zip", payload.read_bytes(), "image-classification")
    safe = _zip(tmp_path / "safe.zip", {**GOOD, "job.json": b'{"command": ["/bin/sh"]}'})
    folder = uploads.save_upload(local_user(), "...zip", safe.read_bytes(), "image-classification")
    assert folder.parent.parent == workspace.uploads_dir() and folder.name == "unpacked"
    assert (folder / "job.json").is_file() and "pwned" not in (run / "job.json").read_text()
    assert (run / "job.json").read_text() == '{"preset": "cpu", "num_processes": 1, "gpus": 0}'
    assert sorted(p.name for p in workspace.uploads_dir().iterdir()) == [folder.parent.name], (
        "the refused one left nothing"
    )


def test_an_archive_with_more_members_than_allowed_is_refused_from_its_end_record(tmp_path):
    many = _zip(tmp_path / "many.zip", {f"cats/{i}.png": b"" for i in range(60)})
    with pytest.raises(UserError) as err:
        unpack_zip(many, tmp_path / "out", Limits(max_members=50), "train_file")
    assert "many.zip holds 60 files and folders; at most 50 are accepted" in str(err.value)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["many.zip"]
    assert unpack_zip(many, tmp_path / "out", Limits(max_members=60), "train_file").is_dir()


def test_the_run_settings_bound_the_member_count(tmp_path):
    from finetune.config import TrainConfig

    cfg = TrainConfig(model_name_or_path="m", train_file="t", output_dir="o", max_archive_members=50)
    assert Unpacking.from_config(cfg).limits.max_members == 50
    many = _zip(tmp_path / "many.zip", {f"cats/{i}.png": _png() for i in range(60)})
    with pytest.raises(UserError, match="at most 50 are accepted"):
        load_table(many, "train_file", Unpacking.from_config(cfg))


def test_an_uploaded_archive_is_refused_by_the_name_its_user_gave(tmp_path, monkeypatch):
    """The app stores an upload as upload.zip; its refusals still name the user's file, and the app's member cap
    (LORA_LAB_MAX_ARCHIVE_MEMBERS) applies to uploads."""
    from webapp.services import uploads, workspace
    from webapp.services.identity import local_user

    monkeypatch.setenv("LORA_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORA_LAB_MAX_ARCHIVE_MEMBERS", "50")
    many = _zip(tmp_path / "many.zip", {f"cats/{i}.png": b"" for i in range(60)})
    with pytest.raises(UserError) as err:
        uploads.save_upload(local_user(), "My cats (2026).zip", many.read_bytes(), "image-classification")
    assert str(err.value).startswith("upload: My cats (2026).zip holds 60 files and folders; at most 50"), err.value
    assert not list(workspace.uploads_dir().iterdir()), "the refused upload left nothing"
