"""The one timer of the benchmarks: the median wall seconds of repeated calls."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def median_seconds(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> tuple[float, Any]:
    """(median wall seconds of `repeats` calls of fn(), the last output). One untimed call first
    (compilation) unless warm_up is False; every output is waited for (block_until_ready), so a
    call's seconds hold its device work; outputs that are not arrays pass through."""
    out = jax.block_until_ready(fn()) if warm_up else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
