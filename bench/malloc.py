"""glibc malloc tuning (train.tune_malloc) on and off: training tokens/s and the share of CPU time in the kernel.

Each setting trains the SASRec-size ID model on ML-1M (full softmax, T=200) to the same FLOP budget in a fresh
process, so allocator state does not carry over; user and system CPU seconds come from getrusage of the child.
Run alone. Needs data/prepared/ml-1m.

    .venv/bin/python bench/malloc.py [--flops 5e12]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from bench_args import positive, provenance
from sasrec import SASREC

CHILD = """
import json, sys
from bfmscale.config import load_run_config
from bfmscale.data.dataset import load_prepared
from bfmscale.train.loop import train_run
res = train_run(load_run_config(None, sys.argv[1:]), load_prepared("data/prepared/ml-1m"))
print(json.dumps({"tokens_per_s": res.info["tokens_per_s"], "train_time": res.info["train_time"]}))
"""

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", type=positive(float), default=5e12)
    args = ap.parse_args()
    print(provenance())
    print(f"SASRec-size ID model, ML-1M, full softmax, T=200, {args.flops:.3g} FLOPs per run")
    print(f"{'tune_malloc':>11} {'tokens/s':>9} {'train s':>8} {'user s':>7} {'sys s':>6} {'sys share':>10}")
    rows = {}
    for tune in (False, True):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([sys.executable, "-c", CHILD, *SASREC, f"train.flops={args.flops}",
                              f"train.tune_malloc={str(tune).lower()}"], capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        user, sys_s = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        rows[tune] = info["tokens_per_s"]
        print(f"{str(tune):>11} {info['tokens_per_s']:>9,.0f} {info['train_time']:>8.1f} {user:>7.1f} {sys_s:>6.1f} "
              f"{100 * sys_s / (user + sys_s):>9.1f}%", flush=True)
    print(f"speed-up from tuning: {rows[True] / rows[False]:.2f}x")


if __name__ == "__main__":
    main()
