"""The job runner: the queue of runs (jobs.py), the order they start in (fair_queue.py), the process that starts
and settles them (loop.py) and its terminal commands (control.py, __main__.py)."""
