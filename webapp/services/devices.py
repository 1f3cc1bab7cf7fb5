"""The machine's accelerators, the launch setups they allow, and the exact `accelerate launch` command.

GPUs are found with nvidia-smi rather than torch, so the page that lists them loads in milliseconds.
Each setup is one of the commented presets in configs/accelerate/.
"""

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from finetune.checks import c_compiler
from webapp.services import workspace


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int


@dataclass(frozen=True)
class Setup:
    """How to launch a run: an accelerate preset and its process count (one GPU per process on GPUs)."""

    label: str
    preset: str
    num_processes: int
    uses_gpus: bool

    def command(self, run_config: Path) -> list[str]:
        """The launch command as it runs from the project folder, paths relative to it when they lie in it (for
        copy-paste): the accelerate of this app's environment (.venv/bin/accelerate after scripts/setup.sh), which a
        shell that never activated the environment would not find as plain `accelerate`."""
        accelerate = _short(Path(sys.executable).with_name("accelerate"))
        return launch_command(accelerate, self.preset, self.num_processes, run_config, short=True)


# The presets the app launches (configs/accelerate/two_machines.yaml needs a second machine: command line only).
LAUNCHABLE_PRESETS = ("cpu", "single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2")
# What a preset needs installed beyond the project's own dependencies (the Docker image does not ship DeepSpeed,
# which builds CUDA ops against a toolkit on first use).
PRESET_PACKAGES = {"deepspeed_zero2": "deepspeed"}


def unavailable(preset: str) -> Optional[str]:
    """Why ``preset`` cannot run on this machine's software (None when it can)."""
    package = PRESET_PACKAGES.get(preset)
    if package is not None and importlib.util.find_spec(package) is None:
        return f"the {preset} setup needs the {package} package, which is not installed here (pip install {package})"
    return None


def unavailable_settings(gpus: list[Gpu]) -> dict[str, str]:
    """Settings this machine cannot run, with why: the form offers them greyed out (the trainer refuses them too)."""
    missing = {}
    if c_compiler() is None:
        missing["torch_compile"] = "needs a C compiler (gcc or clang) to build its kernels; none is installed here"
    if not gpus:
        missing["load_in_4bit"] = "QLoRA needs a CUDA GPU (bitsandbytes' 4-bit kernels); this machine has none"
    elif importlib.util.find_spec("bitsandbytes") is None:
        missing["load_in_4bit"] = "QLoRA needs the bitsandbytes package, which is not installed here"
    return missing


def launch_command(
    accelerate: str, preset: str, num_processes: int, run_config: Path, short: bool = False
) -> list[str]:
    """`accelerate launch` of the trainer on ``run_config`` with one of the project's presets."""
    if preset not in LAUNCHABLE_PRESETS:
        raise ValueError(f"unknown launch preset {preset!r}; expected one of {', '.join(LAUNCHABLE_PRESETS)}")
    paths = [
        workspace.ACCELERATE_PRESETS / f"{preset}.yaml",
        workspace.REPO / "finetune" / "train.py",
        Path(run_config),
    ]
    preset_file, script, config = (_short(p) for p in paths) if short else (str(p) for p in paths)
    return [
        accelerate,
        "launch",
        "--config_file",
        preset_file,
        "--num_processes",
        str(num_processes),
        script,
        "--config",
        config,
    ]


def detect_gpus() -> list[Gpu]:
    """NVIDIA GPUs visible to this machine; empty when there are none (or no driver)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, name, memory = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), name, int(float(memory))))
    return gpus


def setups(gpus: list[Gpu]) -> list[Setup]:
    """The launch setups this machine supports, the recommended one first."""
    if not gpus:
        return [Setup("CPU · 1 process", "cpu", 1, False)]
    options = [Setup(f"1 GPU · {gpus[0].name}", "single_gpu", 1, True)]
    for count in range(2, len(gpus) + 1):
        options.append(Setup(f"{count} GPUs · DDP", "multi_gpu", count, True))
    if len(gpus) > 1:
        options += [
            Setup(f"{len(gpus)} GPUs · FSDP", "fsdp", len(gpus), True),
            Setup(f"{len(gpus)} GPUs · DeepSpeed ZeRO-2", "deepspeed_zero2", len(gpus), True),
        ]
    return [setup for setup in options if unavailable(setup.preset) is None]


def _short(path: Path) -> str:
    path = Path(path).absolute()  # not resolved: a venv's bin/ links to the interpreter it was made from
    return str(path.relative_to(workspace.REPO)) if path.is_relative_to(workspace.REPO) else str(path)
