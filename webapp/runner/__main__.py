"""``python -m webapp.runner [serve|status|stop]``: serve the queue (as the app starts it), or report on or stop the
runner from a terminal."""

import argparse
import sys
from typing import Optional

from webapp.runner import control, loop


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp.runner", description="LoRA Lab's job runner.")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "status", "stop"),
        help="serve the queue (the default, as the app starts it); report on the runner; or stop "
        "it (runs in progress keep training)",
    )
    command = parser.parse_args(argv).command
    if command == "status":
        print(control.status_report())
        return 0
    if command == "stop":
        stopped, message = control.stop_runner()
        print(message)
        return 0 if stopped else 1
    return loop.serve()


if __name__ == "__main__":
    sys.exit(main())
