"""The order in which queued runs start: round-robin across users, first in, first out within each user.

One user queueing ten runs does not make another user's single run wait behind all ten: the runner
takes one run from each user in turn, starting with the user it served longest ago.
"""

from pathlib import Path
from typing import Optional

from finetune.rundir import QUEUED, RunDirectory


def as_number(value) -> float:
    """A time or count read from a JSON file a user could have edited: 0 unless it is a number."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def waiting(runs_by_owner: dict[str, list[RunDirectory]], is_launched) -> dict[str, list[RunDirectory]]:
    """Each user's queued, not yet launched runs, oldest first, by user key."""
    found = {}
    for owner, runs in runs_by_owner.items():
        runs = [r for r in runs if r.state == QUEUED and not is_launched(r)]
        if runs:
            found[owner] = sorted(runs, key=lambda r: as_number(r.read_status().get("queued_at")))
    return found


def last_launches(runs_by_owner: dict[str, list[RunDirectory]]) -> dict[str, float]:
    """When each user's most recent run was launched (status.json ``launched_at``, written by the runner)."""
    found = {}
    for owner, runs in runs_by_owner.items():
        found[owner] = max((as_number(r.read_status().get("launched_at")) for r in runs), default=0.0)
    return found


def round_robin(
    by_owner: dict[str, list[RunDirectory]], last_launch: dict[str, float]
) -> list[tuple[str, RunDirectory]]:
    """Interleave the users' queues one run at a time: first the user served longest ago (never served first,
    then whoever queued earliest), so one user's many runs never hold back another's first.

    Read from the run folders only, so the runner and the Runs page's queue positions agree.
    """

    def turn(owner: str) -> tuple[float, float]:
        return last_launch.get(owner, 0.0), as_number(by_owner[owner][0].read_status().get("queued_at"))

    owners = sorted(by_owner, key=turn)
    queues = {owner: list(by_owner[owner]) for owner in owners}
    order = []
    while any(queues.values()):
        for owner in owners:
            if queues[owner]:
                order.append((owner, queues[owner].pop(0)))
    return order


class Slots:
    """The GPUs and the CPU slot in use, and how many runs each user trains now."""

    def __init__(self, gpu_ids: list[int], busy: dict[Path, tuple[str, list[int]]]):
        """``busy``: each launched run's (owner, GPU ids); no GPU ids means it holds the CPU slot."""
        self.gpu_ids = gpu_ids
        self.used = {i for _, ids in busy.values() for i in ids}
        self.cpu_busy = any(not ids for _, ids in busy.values())
        self.running: dict[str, int] = {}
        for owner, _ in busy.values():
            self.running[owner] = self.running.get(owner, 0) + 1

    def take(self, gpus: int) -> Optional[list[int]]:
        """The GPU ids for a run needing ``gpus`` (empty for the CPU slot), None when they are not free."""
        free = [i for i in self.gpu_ids if i not in self.used]
        if (gpus and len(free) < gpus) or (not gpus and self.cpu_busy):
            return None
        return free[:gpus]

    def started(self, owner: str, ids: list[int]) -> None:
        self.used.update(ids)
        self.cpu_busy = self.cpu_busy or not ids
        self.running[owner] = self.running.get(owner, 0) + 1
