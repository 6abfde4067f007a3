"""Side-by-side latency measurement: contenders interleaved in one process, medians reported.

Shared machines are noisy; interleaving the contenders round by round spreads that noise over
all of them instead of penalising whichever ran during a busy moment.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(fns: dict[str, Callable[[], object]], runs: int = 7, warmup: int = 2) -> dict[str, list[float]]:
    """Wall time in ms of each zero-argument callable per round, measured round-robin: entry i
    of every list comes from the same round, so two lists can be compared round by round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], runs: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median wall time in ms of each zero-argument callable, measured round-robin."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, runs, warmup).items()}
