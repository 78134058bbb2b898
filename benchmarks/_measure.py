"""Wall-clock time and resident memory of one timed call, measured inside its process."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


def current_rss() -> int:
    """Return the resident set size of this process in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def max_rss() -> int:
    """Return the peak resident set size of this process so far, in bytes.

    ``ru_maxrss`` is in kilobytes on Linux.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Measurement:
    """Time and memory of one call.

    Attributes
    ----------
    seconds : float
        Wall-clock time of the call (``time.perf_counter``).
    cpu_seconds : float
        CPU time of the process during the call, all threads, user and system
        (``time.process_time``). Other processes on the machine change it less than the
        wall time, but thread pools that wait by spinning add to it.
    rss_before : int
        Resident set size in bytes just before the call: the interpreter, the libraries,
        the model and the images.
    rss_peak : int
        Largest resident set size in bytes seen during the call, sampled every
        ``interval`` seconds by a background thread, and never below ``rss_before``.
    process_max_rss : int
        ``ru_maxrss`` of the process after the call, in bytes: the peak over its whole life.
    """

    seconds: float
    cpu_seconds: float
    rss_before: int
    rss_peak: int
    process_max_rss: int

    @property
    def rss_growth(self) -> int:
        """Peak resident memory of the call above the resident memory before it, in bytes."""
        return self.rss_peak - self.rss_before


class _PeakSampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = current_rss()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, current_rss())


def measure(call: Callable[[], Any], interval: float = 0.005) -> tuple[Any, Measurement]:
    """Run ``call()`` once and return its result with its time and memory.

    A peak shorter than ``interval`` between two samples can be missed, so ``rss_peak`` is
    a lower bound. ``process_max_rss`` is exact but includes everything before the call.
    """
    rss_before = current_rss()
    sampler = _PeakSampler(interval)
    sampler.start()
    start = time.perf_counter()
    cpu_start = time.process_time()
    try:
        result = call()
    finally:
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        peak = sampler.stop()
    return result, Measurement(seconds, cpu_seconds, rss_before, peak, max_rss())
