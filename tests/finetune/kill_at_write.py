"""Test helper: run the trainer's command line and SIGKILL it at one moment of the run.

    python -m tests.finetune.kill_at_write WHAT N [trainer arguments...]

WHAT is a state file's name: the kill lands in the middle of the Nth write of it (N=last-state: the write that
records the run's final state; status.json is also rewritten at every logged step). After half the new content
reached the temporary file and before the rename: the moment a kill -9 would have left a truncated file when state
files were written in place. Or WHAT is "train" or "eval": the kill lands right after the train or eval event of
step N was logged.
"""

import os
import signal
import sys
from pathlib import Path

from finetune import rundir, train


def die_at_write(name: str, nth: str) -> None:
    write, seen = rundir.write_bytes_atomic, 0

    def dying_write(path, data: bytes) -> None:
        nonlocal seen
        path = Path(path)
        if path.name == name:
            seen += 1
            final_state = nth == "last-state" and b'"ended_at"' in data and b'"state": "running"' not in data
            if final_state or (nth.isdigit() and seen == int(nth)):
                path.with_name(f".{path.name}.killed.tmp").write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        write(path, data)

    rundir.write_bytes_atomic = dying_write


def die_after_event(kind: str, step: int) -> None:
    append = rundir.RunDirectory.append_event

    def append_then_die(self, event: dict) -> None:
        append(self, event)
        if event.get("event") == kind and event.get("step") == step:
            os.kill(os.getpid(), signal.SIGKILL)

    rundir.RunDirectory.append_event = append_then_die


def main() -> int:
    what, nth, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if what in ("train", "eval"):
        die_after_event(what, int(nth))
    else:
        die_at_write(what, nth)
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
