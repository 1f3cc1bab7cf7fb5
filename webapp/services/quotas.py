"""Per-user limits on a shared app: runs waiting in the queue, upload size, disk used.

The local user (local single-user mode) owns the machine and has no limits. How many runs of one
user train at once is enforced by the job runner (settings.max_running_runs).
"""

import math
import os
from pathlib import Path

from finetune.errors import UserError
from finetune.rundir import ACTIVE, RunDirectory
from webapp.services import registry, settings, workspace
from webapp.services.identity import LOCAL_KEY, User, is_visitor_key


def check_can_queue(owner: str, limits: settings.Settings, adding: int = 1) -> None:
    """UserError when ``adding`` more runs would take the user ``owner`` (a folder key) past the runs one user may
    have queued or training, or when they are out of disk. A sweep is queued whole or not at all. An operator
    resuming someone's run is checked against that run's owner."""
    if owner == LOCAL_KEY:
        return
    active = _active(registry.runs_in(owner, workspace.runs_dir(owner), limits.shared))
    if len(active) + adding > limits.max_queued_runs:
        if adding > 1:
            raise UserError(
                f"queue: this sweep queues {adding} runs and you have {len(active)} queued or training; at most "
                f"{limits.max_queued_runs} per user. Draw fewer points (random count) or wait for runs to finish"
            )
        raise UserError(
            f"queue: you have {len(active)} runs queued or training; at most {limits.max_queued_runs} per "
            "user. Wait for one to finish, or cancel one on the Runs page"
        )
    if is_visitor_key(owner):
        _check_anonymous_total(limits, adding)
    check_storage(owner, limits, adding=0)


def _active(runs: list[RunDirectory]) -> list[RunDirectory]:
    return [run for run in runs if run.state in ACTIVE]


def _check_anonymous_total(limits: settings.Settings, adding: int) -> None:
    """Anonymous visitors share one allowance: a fresh address is a fresh key, so per-key limits alone multiply."""
    runs = registry.all_runs(limits.shared)
    total = sum(len(_active(owned)) for owner, owned in runs.items() if is_visitor_key(owner))
    if total + adding > limits.max_anonymous_runs:
        raise UserError(
            f"queue: visitors without an account have {total} runs queued or training on this app, and at most "
            f"{limits.max_anonymous_runs} may be at once; try again when one finishes"
        )


def check_upload(user: User, limits: settings.Settings, size: int) -> None:
    """UserError when an upload of ``size`` bytes is too large, or would take ``user`` past their disk limit."""
    if user.key == LOCAL_KEY:
        return
    if size > limits.max_upload_mb * 2**20:
        raise UserError(f"upload: the file is {_mib(size, up=True)}; at most {limits.max_upload_mb} MiB per upload")
    check_storage(user.key, limits, adding=size)


def check_storage(owner: str, limits: settings.Settings, adding: int) -> None:
    used = disk_usage(workspace.user_root(owner))
    if used + adding > limits.max_storage_mb * 2**20:
        adds = f" and this upload would add {_mib(adding, up=True)}" if adding else ""
        raise UserError(
            f"storage: your runs and uploads take {_mib(used)} of your {limits.max_storage_mb} MiB{adds}; "
            "delete runs you no longer need on the Runs page"
        )


def _mib(size: int, up: bool = False) -> str:
    """A size in MiB to 0.1; rounded up (``up``) where a file just over a limit must not read as equal to it."""
    tenths = size / 2**20 * 10
    return f"{(math.ceil(tenths) if up else round(tenths)) / 10:g} MiB"


def disk_usage(root: Path) -> int:
    """Bytes in the files under ``root`` (symbolic links not followed)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while counting
                continue
    return total
