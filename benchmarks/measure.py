"""Timing and memory measurement helpers: interleaved timing, medians, RSS sampling, CUDA peaks."""

import gc
import os
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: Dict[str, Callable[[], object]], warmup: int, repeats: int, device: str, on_round=None
) -> Dict[str, List[float]]:
    """Time every function once per round, in an order rotated each round; ``warmup`` rounds are not kept.

    Interleaving puts every variant under the same (noisy, shared) machine conditions; rotating the order keeps any
    variant from always following the same neighbour.
    """
    names = list(fns)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = timed(fns[name], device)
            if round_index >= warmup:
                times[name].append(elapsed)
        if on_round is not None:
            on_round(round_index, warmup + repeats)
    return times


def summary(values: Sequence[float]) -> Dict[str, float]:
    values = list(values)
    if not values:
        return {"n": 0}
    out = {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        out["iqr"] = q[2] - q[0]
    return out


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ------------------------------------------------------------------------------------------------------ memory
def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        import psutil

        return psutil.Process().memory_info().rss


class RSSSampler:
    """Samples this process's RSS every ``interval`` seconds in a thread; ``peak`` is the highest sample.

    ``ru_maxrss`` is monotonic over the process's life (model building included), so each variant is measured in a
    process of its own and its peak is read by sampling from just before its first step.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "RSSSampler":
        gc.collect()
        self.baseline = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class CUDAPeak:
    """``torch.cuda.max_memory_allocated`` over a block, and what was allocated before it."""

    def __enter__(self) -> "CUDAPeak":
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.baseline = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()
        self.peak_reserved = torch.cuda.max_memory_reserved()


def mib(value: Optional[float]) -> Optional[float]:
    return None if value is None else value / 2**20
