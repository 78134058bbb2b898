"""raise_malloc_thresholds: glibc reuses freed memory instead of faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are those of glibc's malloc"
)

# Ten rounds of five 8 MiB blocks, allocated, written and freed together, as a model's
# pass allocates and frees its intermediate tensors. Prints the page faults of the rounds.
_ROUNDS = """
import ctypes, resource, sys
from cav.models.base import raise_malloc_thresholds

if sys.argv[1] == "raised":
    raise_malloc_thresholds()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 8 * 1024 * 1024
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    blocks = [libc.malloc(size) for _ in range(5)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return int(completed.stdout.strip())


def test_raised_thresholds_keep_freed_memory() -> None:
    default = _faults("default")
    raised = _faults("raised")
    # 40 MiB per round is 10,240 pages of 4 KiB. With glibc's starting thresholds the
    # heap is trimmed after every round, so all ten rounds fault.
    assert default >= 8 * 10_240
    # With the raised thresholds only the first round faults its pages in.
    assert raised <= 2 * 10_240
