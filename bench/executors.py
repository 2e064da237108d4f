"""Executor layouts on this machine: runs/hour for one fixed small design, and Ray's overhead per sweep and per run.

Layouts: in-process with all threads; N worker processes x T threads; Ray (local instance) with one CPU per task.
Each layout runs the same design into a fresh store. Run alone (other jobs spoil the timings). Needs
data/prepared/ml-100k (`bfmscale fetch --profile smoke && bfmscale prepare --profile smoke`).

    .venv/bin/python bench/executors.py [--runs 8] [--flops 3e11]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench_args import positive, provenance, run  # noqa: E402
from bfmscale.sweep.design import Design, expand  # noqa: E402
from bfmscale.sweep.executors import LocalExecutor, RayExecutor  # noqa: E402
from bfmscale.sweep.runner import run_sweep  # noqa: E402
from bfmscale.sweep.store import RunStore  # noqa: E402


def design(runs: int, flops: float, prepared: str) -> Design:
    return Design.from_dict({
        "name": "bench", "seeds": list(range(runs)),
        "base": {"data": {"dataset": "ml-100k", "prepared_dir": prepared},
                 "model": {"d_model": 64, "n_heads": 2, "d_ff": 256, "max_len": 50},
                 "train": {"flops": flops, "batch_size": 64, "n_evals": 0, "precision": "fp32"}},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=positive(int), default=8)
    ap.add_argument("--flops", type=positive(float), default=3e11)
    ap.add_argument("--prepared", default="data/prepared")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    layouts = [("in-process", LocalExecutor(workers=1, threads=cores)),
               (f"{cores} workers x 1 thread", LocalExecutor(workers=cores, threads=1)),
               ("1 worker x 1 thread", LocalExecutor(workers=1, threads=1)),
               (f"ray local, {cores} CPUs, 1 per run", RayExecutor(num_cpus=cores, cpus_per_run=1))]
    configs = expand(design(args.runs, args.flops, args.prepared))
    print(provenance())
    print(f"{len(configs)} runs of {args.flops:.3g} FLOPs (ML-100k, d=64, L=2, T=50), {cores} cores")
    print(f"{'layout':<30} {'wall s':>8} {'runs/hour':>10} {'mean run s':>11}")
    for name, ex in layouts:
        with tempfile.TemporaryDirectory() as tmp:
            store = RunStore(Path(tmp) / "runs")
            t = time.perf_counter()
            run_sweep("bench", configs, store, ex)
            wall = time.perf_counter() - t
            per_run = [store.status(k).get("wall_time") or 0.0 for k in store.keys()]
        mean = sum(per_run) / len(per_run)
        print(f"{name:<30} {wall:>8.1f} {3600 * len(configs) / wall:>10.0f} {mean:>11.1f}", flush=True)
        if isinstance(ex, RayExecutor):
            ideal = sum(per_run) / cores
            print(f"  ray: init+shutdown and scheduling = wall - sum(run)/cores = {wall - ideal:.1f} s per sweep")
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t
    f = ray.remote(lambda: 1)
    ray.get(f.remote())
    t = time.perf_counter()
    ray.get([f.remote() for _ in range(50)])
    per_task = (time.perf_counter() - t) / 50
    ray.shutdown()
    print(f"ray: ray.init (local instance) {init:.1f} s; an empty task {1000 * per_task:.1f} ms once workers are warm")


if __name__ == "__main__":
    run(main)
