"""Shared helpers of the keras-prune benchmarks (machine info, statistics)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, core count and load average at the time of the run."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "note": "2 cores shared with other jobs: absolute times are noisy, ratios come "
        "from interleaved repeats in one process",
    }


def stats(times: list[float]) -> dict[str, Any]:
    """Median, min, max and all of a list of timings (seconds)."""
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "all_s": times,
    }


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    sides: dict[str, Callable[[], Any]], repeats: int, warmup: int, calls: int = 1
) -> dict[str, dict[str, Any]]:
    """`stats` of each side's calls, the sides alternating after `warmup` rounds.

    Each repeat times `calls` calls in a row and records the time per call:
    a call of a few microseconds (a small model in LiteRT) is shorter than
    the timer's own cost, which would otherwise weigh on both sides alike.
    """
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, fn in sides.items():
            times[side].append(timed(lambda fn=fn: [fn() for _ in range(calls)]) / calls)
    return {side: {**stats(t), "calls_per_repeat": calls} for side, t in times.items()}


def calls_lasting(fn: Callable[[], Any], seconds: float) -> int:
    """How many calls of `fn` in a row last about `seconds` (at least 1)."""
    fn()
    return max(1, round(seconds / max(timed(fn), 1e-9)))


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Ratio of the medians of two `stats` results."""
    return a["median_s"] / b["median_s"]


def vm_kib(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0, /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def write_results(path: str, results: dict[str, Any]) -> None:
    """Writes a benchmark's results as indented JSON (making its folder) and says where."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)
    print(f"wrote {path}")
