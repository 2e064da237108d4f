"""Wall time and peak memory of fetch and prepare for ml-100k and ml-1m (each step in a fresh process).

    .venv/bin/python bench/prepare.py
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_args import provenance

STEP = """
import resource, sys, time
from pathlib import Path
from bfmscale.params import load_params
from bfmscale.data.sources import dataset_spec
step, name, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
t = time.perf_counter()
if step == "fetch":
    from bfmscale.data.fetch import fetch
    fetch(dataset_spec({}, name), root / "raw", pip_args=["--no-cache-dir"])
else:
    from bfmscale.data.prepare import PrepareConfig, prepare
    from bfmscale.data.readers import read_raw
    prepare(read_raw(root / "raw" / name), root / "prepared" / name, PrepareConfig(), name)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    print(provenance() + f", python {platform.python_version()}")
    print(f"{'dataset':<8} {'step':<8} {'wall s':>7} {'peak MiB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ml-100k", "ml-1m"):
            for step in ("fetch", "prepare"):
                t = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", STEP, step, name, tmp], capture_output=True, text=True,
                                     check=True).stdout.split()
                print(f"{name:<8} {step:<8} {float(out[0]):>7.2f} {float(out[1]):>9.0f}   "
                      f"(process incl. imports: {time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
