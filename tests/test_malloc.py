"""With the malloc tuning, a freed 64 MiB buffer is reused instead of being unmapped and faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from bfmscale.malloc import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
for _ in range(12):
    torch.ones(16 * 2**20)  # warm-up (the heap grows after import): 64 MiB allocated, touched, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_malloc_reuses_large_blocks():
    untuned, tuned = faults("plain"), faults("tuned")
    assert untuned > 10 * 16384 / 2  # every 64 MiB buffer is faulted in again (4 KiB pages)
    assert tuned < untuned / 10
