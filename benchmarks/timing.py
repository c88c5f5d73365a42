"""What the benchmarks share: timing an action."""

from __future__ import annotations

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
