"""How far bf16 autocast can speed up a training step here: each configuration's steps profiled in fp32 and bf16,
split into matrix products and the rest, with the ratio that split allows.

A configuration's fp32 and bf16 steps are taken in turn (fp32, bf16, fp32, ...), each under torch.profiler. The
matrix products are the ATen kernels in MATMUL_OPS (their self time); the rest is the step's wall time less them
(element-wise work, casts, gathers, the optimizer, Python). The Amdahl column is the bf16/fp32 ratio the step would
reach if bf16 changed only its products' time, as measured here: fp32 step / (fp32 step - fp32 products + bf16
products). Beside it, the rest's own bf16/fp32 time: above 1 where bf16 adds work outside the products (autocast's
casts, explicit attention's softmax), below where its half-size tensors make memory-bound work cheaper. Where the
Amdahl ratio is under a goal and the rest does not get cheaper, no tuning of the products reaches the goal. The last
column names the ops whose time bf16 adds most. The profiler's own cost per op is in these step times, so their
ratios read a little below bench/train_throughput.py's. Needs data/prepared/ml-1m and a CPU with native bf16.

    .venv/bin/python bench/bf16_ceiling.py            # d in {64, 128} x T in {50, 200} x 3 objectives x 2 embedders
    .venv/bin/python bench/bf16_ceiling.py --quick    # d=64, T=50, ID: the three objectives
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench_args import comma_list, positive, provenance, run
from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.data.dataset import load_prepared
from bfmscale.device import cpu_has_native_bf16
from bfmscale.model.catalog import build_catalog
from bfmscale.train.data import build_sequences
from train_throughput import AMPS, DTYPES, OBJECTIVES, ConfigRun, grid_model, matmul_peak

# The CPU kernels of the step's matrix products: linear layers, the CE's scores and gradients, attention (fp32
# flash forward and backward; bf16's explicit QK^T and PV).
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                        "aten::_scaled_dot_product_flash_attention_for_cpu",
                        "aten::_scaled_dot_product_flash_attention_for_cpu_backward"})


def self_times(prof: profile) -> Counter[str]:
    """Seconds of self CPU time per op name over a profiled region."""
    return Counter({e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()})


def matmul_seconds(times: Counter[str]) -> float:
    """Seconds spent in the matrix-product kernels (MATMUL_OPS)."""
    return sum(t for op, t in times.items() if op in MATMUL_OPS)


def amdahl_ratio(step32: float, mm32: float, mm16: float) -> float:
    """bf16/fp32 step ratio if bf16 changed only the matrix products' time (from mm32 to mm16 per step)."""
    return step32 / (step32 - mm32 + mm16)


def added_ops(t32: Counter[str], t16: Counter[str], top: int) -> list[tuple[str, float]]:
    """The `top` ops outside MATMUL_OPS whose time bf16 adds most, with the seconds added (largest first)."""
    extra = {op: t16[op] - t32[op] for op in t16 if op not in MATMUL_OPS}
    return sorted(((op, s) for op, s in extra.items() if s > 0), key=lambda x: -x[1])[:top]


def profile_pair(ds, seqs, catalog, mc: ModelConfig, tc: TrainConfig, batch_size: int,
                 steps: int) -> dict[str, tuple[float, Counter[str]]]:
    """fp32 and bf16 runs of one configuration, stepped in turn (2 warm-up steps each, then `steps` profiled):
    per precision, the mean wall seconds of a step and its mean self seconds per op."""
    device = torch.device("cpu")
    runs = {p: ConfigRun(ds, seqs, catalog, mc, tc, device, amp, batch_size, steps) for p, amp in AMPS.items()}
    times: dict[str, Counter[str]] = {p: Counter() for p in runs}
    for i in range(steps + 2):
        for p, r in runs.items():
            if i < 2:
                r.step()
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                r.step()
            times[p].update(self_times(prof))
    return {p: (r.elapsed / steps, Counter({op: t / steps for op, t in times[p].items()})) for p, r in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d=64, T=50, ID embedder: the three objectives")
    ap.add_argument("--prepared", default="data/prepared/ml-1m")
    ap.add_argument("--d-models", type=comma_list(int), default=[64, 128])
    ap.add_argument("--lengths", type=comma_list(int), default=[50, 200])
    ap.add_argument("--layers", type=positive(int), default=2)
    ap.add_argument("--steps", type=positive(int), default=6, help="profiled steps per precision")
    ap.add_argument("--batch-size", type=positive(int), default=64)
    ap.add_argument("--top", type=positive(int), default=3, help="ops named in the last column")
    ap.add_argument("--peak-n", type=positive(int), default=2048, help="size of the matmul that measures the peaks")
    args = ap.parse_args()
    if not cpu_has_native_bf16():
        raise SystemExit("bf16_ceiling.py: this CPU has no native bf16 (bf16 would run ~20x slower): nothing to bound")
    print(provenance(), flush=True)
    ds = load_prepared(args.prepared)
    seqs = build_sequences(ds)
    catalog = build_catalog(ds, 2048)
    grid = list(itertools.product(args.d_models, args.lengths, OBJECTIVES, ["id", "features"]))
    if args.quick:
        grid = [(64, 50, obj, "id") for obj in OBJECTIVES]
    peaks = {p: matmul_peak(DTYPES[p], torch.device("cpu"), args.peak_n) for p in AMPS}
    print(f"L={args.layers}, batch {args.batch_size}, {args.steps} profiled steps per precision; matmul peak "
          f"({args.peak_n}^3): fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s "
          f"({peaks['bf16'] / peaks['fp32']:.2f}x)")
    print(f"{'d':>4} {'T':>4} {'objective':>11} {'embedder':>9} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>9} "
          f"{'mm share':>8} {'mm speed-up':>11} {'rest bf16/fp32':>14} {'Amdahl':>8}  bf16 adds most (ms/step)")
    for d, t, obj, emb in grid:
        res = profile_pair(ds, seqs, catalog, grid_model(d, args.layers, t, emb), TrainConfig(**OBJECTIVES[obj]),
                           args.batch_size, args.steps)
        (s32, t32), (s16, t16) = res["fp32"], res["bf16"]
        mm32, mm16 = matmul_seconds(t32), matmul_seconds(t16)
        added = ", ".join(f"{op.removeprefix('aten::')} {1e3 * s:.1f}" for op, s in added_ops(t32, t16, args.top))
        print(f"{d:>4} {t:>4} {obj:>11} {emb:>9} {1e3 * s32:>8.1f} {1e3 * s16:>8.1f} {s32 / s16:>8.2f}x "
              f"{100 * mm32 / s32:>7.0f}% {mm32 / mm16:>10.2f}x {(s16 - mm16) / (s32 - mm32):>13.2f}x "
              f"{amdahl_ratio(s32, mm32, mm16):>7.2f}x  {added}", flush=True)


if __name__ == "__main__":
    run(main)
