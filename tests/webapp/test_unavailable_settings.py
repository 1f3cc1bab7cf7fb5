"""The page offers a switch only where this machine can run it: torch_compile needs a C compiler, load_in_4bit a CUDA
GPU and bitsandbytes. Elsewhere it is shown off and greyed out, with why (the trainer refuses it too)."""

import os
import sys

from tests.webapp.apptest import assert_ok, open_app
from webapp.services import devices

GPU = devices.Gpu(index=0, name="NVIDIA T4", memory_mib=15_360)


def _path_with(tmp_path, *programs: str) -> str:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in programs:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_torch_compile_is_unavailable_without_a_c_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path))
    assert "C compiler" in devices.unavailable_settings([GPU])["torch_compile"]
    monkeypatch.setenv("PATH", _path_with(tmp_path, "gcc"))
    assert "torch_compile" not in devices.unavailable_settings([GPU])


def test_qlora_is_unavailable_without_a_gpu():
    assert "CUDA GPU" in devices.unavailable_settings([])["load_in_4bit"]


def test_the_form_greys_out_what_this_machine_cannot_run(no_runner, tmp_path, monkeypatch):
    at = open_app()
    assert not at.checkbox(key="cfg_torch_compile").disabled, "this machine has a compiler: compile is offered"
    monkeypatch.setenv("PATH", _path_with(tmp_path) + os.pathsep + os.path.dirname(sys.executable))
    at = open_app()
    assert_ok(at)
    unavailable = at.checkbox(key="cfg_torch_compile_unavailable")
    assert unavailable.disabled and unavailable.value is False
    assert "C compiler" in unavailable.help
    assert at.checkbox(key="cfg_load_in_4bit_unavailable").disabled, "no GPU here: QLoRA is greyed out"
    [config] = [c.value for c in at.code if c.value.startswith("model_name_or_path")]
    assert "torch_compile: false" in config and "load_in_4bit: false" in config
