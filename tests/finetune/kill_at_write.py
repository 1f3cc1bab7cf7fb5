"""Test helper: run the trainer's command line, SIGKILLing it in the middle of the Nth write of one state file.

    python tests/finetune/kill_at_write.py FILE_NAME N [trainer arguments...]

N counts the writes of FILE_NAME; N=last-state kills the write that records the run's final state (status.json
is also rewritten at every logged step, so its count depends on the run's length).

The kill lands after half the new content reached the temporary file and before the rename: the moment
a kill -9 would have left a truncated file when state files were written in place.
"""

import os
import signal
import sys
from pathlib import Path

from finetune import rundir, train


def main() -> int:
    name, nth, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    write = rundir.write_bytes_atomic
    seen = 0

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
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
