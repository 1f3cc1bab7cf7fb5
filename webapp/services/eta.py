"""How long a running run has left: the recent pace of its steps, plus the evaluations and saves still to come.

Plain Python. The records are the run's logged steps ({"event": "train", "step", "time"}: its train events, and
the latest step in status.json) and its eval events; times are Unix seconds.
"""

import statistics
import time
from typing import Optional

MIN_ETA_STEPS = 2  # optimizer steps into a segment before its pace says anything
RECENT_INTERVALS = 5  # intervals between logged steps that the recent pace is read from
EVENTS_TAIL_BYTES = 64 * 1024  # the end of events.jsonl that a running run's pace is read from: ~200 events


def eta(status: dict, events: list[dict], now: Optional[float] = None) -> Optional[float]:
    """Seconds left in this segment: steps left x (recent seconds per step + evaluation and save seconds per step).

    The trainer writes ``loop_started_at`` (Unix s) and ``loop_start_step`` once the base-model evaluation (or the
    resume) is over, so neither that evaluation nor steps trained before a resume skew the pace. The step pace is
    the median over the latest RECENT_INTERVALS intervals between logged steps that hold no evaluation: a run that
    slowed down is paced as it is now, and an interval a checkpoint save slowed is an outlier the median drops.
    Until one such interval is logged, the segment's average (evaluations included) paces it all.
    None until MIN_ETA_STEPS steps of the segment have been logged.
    """
    total, since, first = status.get("total_steps"), status.get("loop_started_at"), status.get("loop_start_step")
    if not (isinstance(total, int) and isinstance(since, (int, float)) and isinstance(first, int)):
        return None
    points = _segment_steps(events, since, first)
    step, at = points[-1]
    if step - first < MIN_ETA_STEPS:
        return None
    if step >= total:
        return 0.0  # every step is done: the final evaluation and save are under way
    evals = [e["time"] for e in events if e.get("event") == "eval" and _number(e.get("time")) and e["time"] > since]
    pace = _pace(points, evals) or (at - since) / (step - first)
    # Less the time since the latest logged step (the steps trained since are not logged yet), though never down to
    # nothing while steps remain: one step's time, and a second at least (the page shows whole seconds).
    return max(pace * (total - step) - ((time.time() if now is None else now) - at), pace, 1.0)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _segment_steps(events: list[dict], since: float, first: int) -> list[tuple[int, float]]:
    """(step, when it was logged) of this segment, in step order, from (first, since): the loop's start. A resumed
    run's events.jsonl holds the steps of the segment before; a step logged twice (its train event and status.json)
    counts at its first time."""
    logged: dict[int, float] = {}
    for e in events:
        step, at = e.get("step"), e.get("time")
        if e.get("event") == "train" and isinstance(step, int) and _number(at) and at >= since and step > first:
            logged[step] = min(at, logged.get(step, at))
    return [(first, since), *sorted(logged.items())]


def _pace(points: list[tuple[int, float]], evals: list[float]) -> Optional[float]:
    """Seconds per step, evaluations and saves to come spread over the steps: the median pace of the latest
    intervals free of evaluations, plus the time the others took beyond that pace per step. None before an interval
    free of evaluations is logged."""
    intervals = [(s1 - s0, t1 - t0, any(t0 < e <= t1 for e in evals)) for (s0, t0), (s1, t1) in zip(points, points[1:])]
    clean = [seconds / steps for steps, seconds, evaluated in intervals if not evaluated and steps > 0]
    if not clean:
        return None
    pace = statistics.median(clean[-RECENT_INTERVALS:])
    # Not the first interval: from the loop's start, it also spans the steps whose events lie before the tail read.
    later = intervals[1:]
    paused = sum(max(0.0, seconds - steps * pace) for steps, seconds, evaluated in later if evaluated)
    steps = sum(steps for steps, _, _ in later)
    return pace + (paused / steps if steps else 0.0)
