"""What the benchmarks share: timing an action, and progress on stderr (stdout carries their JSON)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Seconds each of `repeat` runs of `action` took (perf_counter)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
