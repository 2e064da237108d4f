"""Training throughput: tokens/s, analytic GFLOP/s and MFU against the matmul peak measured in this same run.

Grid: d_model x layers x T x objective (full softmax, sampled K=128, frozen embedder + K=1024) x embedder (id,
features) x precision (fp32, bf16 when the device has it natively). Timed steps run the loop's own `train_step`.
MFU divides the model FLOPs the study charges (`step_flops`: K+1 candidates per target, the feature MLP per lookup);
HFU the FLOPs the step executes, counted by torch.utils.flop_counter on one step (the dense sampled route scores
the whole catalog, the catalog route runs the MLP once per item; the CPU's bags of candidate rows for the sampled
CE's dh are lookups it does not count). The peak is measured in each precision right before
the configuration's timed steps (these boxes drift: one 2-core VM measured an fp32 peak of 196 GFLOP/s at the start
of one grid and 126 at the start of another), and at the start and the end of the grid, to show the drift. A
configuration's precisions are timed step by step in turn (fp32, bf16, fp32, ...), so that the bf16/fp32 column
compares them under the same load; with `--rounds R` that is done R times and each row keeps its fastest round
(with that round's peak). Also: evaluation throughput (users/s, full-catalog ranking over ML-1M) of one fixed
configuration.
Needs data/prepared/ml-1m.

    .venv/bin/python bench/train_throughput.py --quick      # a small subset, ~2 minutes on 2 cores
    .venv/bin/python bench/train_throughput.py              # the whole grid
    .venv/bin/python bench/train_throughput.py --rounds 3   # the whole grid, best of 3 rounds
    python bench/train_throughput.py --d-models 1024,256,64 --batch-size 128   # on a GPU (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from typing import NamedTuple

import numpy as np
import torch

from bench_args import comma_list, positive, provenance, run
from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.data.dataset import load_prepared
from bfmscale.device import cpu_has_native_bf16, resolve_device, resolve_precision
from bfmscale.errors import BfmError
from bfmscale.eval.ranking import evaluate
from bfmscale.model.accounting import counted_flops, step_flops
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import build_catalog
from bfmscale.train.data import build_sequences, gather, plan_epoch, train_windows
from bfmscale.train.loop import make_optimizer, ready_for_training, shape_of
from bfmscale.train.negatives import NegativeSampler
from bfmscale.train.step import Objective, train_step

OBJECTIVES = {"full": dict(objective="full"), "sampled128": dict(objective="sampled", n_negatives=128),
              "frozen1024": dict(objective="sampled", n_negatives=1024, freeze_embedder=True)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # each precision's matmul dtype (its peak's)
AMPS = {p: resolve_precision(p, torch.device("cpu")) for p in DTYPES}  # each precision's autocast dtype (fp32: none)


def grid_model(d: int, layers: int, t: int, embedder: str = "id") -> ModelConfig:
    """The grid's model at width d: heads of 64 dimensions, a 4d MLP, windows of T events, dropout 0.1."""
    return ModelConfig(embedder=embedder, d_model=d, n_layers=layers, n_heads=max(1, d // 64), d_ff=4 * d, max_len=t,
                       dropout=0.1)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul in `dtype` (the denominator of MFU)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that host clocks time it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timing(NamedTuple):
    """One configuration's timed steps: tokens/s, model and hardware FLOP/s, and the warm-up's seconds."""

    tokens_per_s: float
    model_flops_per_s: float
    hardware_flops_per_s: float
    warmup_s: float


class ConfigRun:
    """One configuration in one precision, built and ready: `step` times one training step on the next batch
    (the first 2 are warm-up; with `compile`, torch.compile of the contextualizer happens there)."""

    def __init__(self, ds, seqs, catalog, mc: ModelConfig, tc: TrainConfig, device, amp, batch_size: int,
                 steps: int, compile: bool = False):
        torch.manual_seed(0)
        self.seqs, self.mc, self.tc, self.catalog, self.device, self.amp = seqs, mc, tc, catalog, device, amp
        self.events = seqs.event_inputs
        self.model = BehaviorModel(mc, catalog, self.events).to(device)
        ready_for_training(self.model, dataclasses.replace(tc, compile=compile))
        win = train_windows(seqs, mc.max_len)
        full = np.flatnonzero(win.lengths == mc.max_len + 1)  # full-length windows: the steady state of a long run
        self.sub = win.subset(full)
        self.batches = [b for b in plan_epoch(self.sub, batch_size, np.random.default_rng(0))
                        if len(b) == batch_size][: steps + 2]  # fewer are taken in turn again
        if not self.batches:
            raise BfmError(f"--batch-size: no {batch_size} full-length windows of T={mc.max_len} in the data")
        sampler = NegativeSampler(tc.sampler, catalog.n_items, catalog.popularity)
        self.obj = Objective(tc, sampler, torch.Generator(device).manual_seed(0))
        self.opt = make_optimizer(self.model, tc.lr, tc)
        self.done = 0
        self.last: tuple = ()  # the last batch stepped on, on the device
        self.tokens = self.flops = self.elapsed = self.warmup = 0.0

    def _step(self, items, feats) -> None:
        train_step(self.model, self.obj, self.opt, items, feats, self.amp, self.tc.grad_clip)

    def step(self) -> None:
        """Time one training step on the next batch."""
        idx = self.batches[self.done % len(self.batches)]
        items, feats = gather(self.seqs, self.sub.subset(idx))
        items = items.to(self.device)
        feats = feats.to(self.device) if feats is not None else None
        sync(self.device)
        t = time.perf_counter()
        self._step(items, feats)
        sync(self.device)
        if self.done < 2:
            self.warmup += time.perf_counter() - t
        else:
            self.elapsed += time.perf_counter() - t
            shape = shape_of(self.sub, idx, self.seqs, count_unique=self.tc.objective == "inbatch")
            self.tokens += shape.targets
            self.flops += step_flops(self.mc, self.tc, self.catalog, shape, self.events)["total"]
        self.done += 1
        self.last = (items, feats)

    def timing(self) -> Timing:
        """The timed steps' rates; one more step of the last batch under the FLOP counter gives the HFU's FLOPs."""
        steps = self.done - 2
        executed = counted_flops(lambda: self._step(*self.last)) * steps
        return Timing(self.tokens / self.elapsed, self.flops / self.elapsed, executed / self.elapsed, self.warmup)


def bench_precisions(ds, seqs, catalog, mc: ModelConfig, tc: TrainConfig, device, amps: dict[str, torch.dtype | None],
                     batch_size: int, steps: int, compile: bool = False) -> tuple[dict[str, Timing], dict[str, str]]:
    """Time one configuration in each precision of `amps`, step by step in turn (fp32, bf16, fp32, ...), so that
    both see the same state of a noisy box: 2 warm-up and `steps` timed steps each (all batches are full-length
    windows: one shape). Returns the timings and, for a precision that raised a RuntimeError (e.g. a GPU grid up to
    d=1024 outgrowing the card), its one-line reason; the others go on."""
    runs: dict[str, ConfigRun] = {}
    failed: dict[str, str] = {}

    def fail(prec: str, e: RuntimeError) -> None:
        runs.pop(prec, None)
        failed[prec] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for prec, amp in amps.items():
        try:
            runs[prec] = ConfigRun(ds, seqs, catalog, mc, tc, device, amp, batch_size, steps, compile)
        except RuntimeError as e:
            fail(prec, e)
    for _ in range(steps + 2):
        for prec, run in list(runs.items()):
            try:
                run.step()
            except RuntimeError as e:
                fail(prec, e)
    timings: dict[str, Timing] = {}
    for prec, run in list(runs.items()):
        try:
            timings[prec] = run.timing()
        except RuntimeError as e:
            fail(prec, e)
    return timings, failed


def eval_throughput(seqs, catalog, d: int, device: torch.device) -> None:
    """Print users/s of full-catalog test ranking with one fixed configuration: ID embedder, L=2, T=200, fp32;
    timed after one warm-up batch."""
    model = BehaviorModel(grid_model(d, 2, 200), catalog, seqs.event_inputs).to(device)  # eval: no dropout
    # warm-up pass over the longest histories (first calls, allocator): on the Xeon of 2026-11-28 a cold pass ran
    # 433 users/s, the next three 544-582
    longest = np.argsort(seqs.lengths, kind="stable")[-512:]
    evaluate(model, seqs, "test", model.cfg.max_len, device, batch_size=512, users=longest)
    t0 = time.perf_counter()
    res = evaluate(model, seqs, "test", model.cfg.max_len, device, batch_size=512)
    el = time.perf_counter() - t0
    print(f"eval: {len(res.per_user):,} users ranked over {catalog.n_items:,} items in {el:.1f} s = "
          f"{len(res.per_user) / el:,.0f} users/s (id, d={d}, L=2, T=200, fp32)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=positive(int), default=4)
    ap.add_argument("--batch-size", type=positive(int), default=64)
    ap.add_argument("--prepared", default="data/prepared/ml-1m")
    ap.add_argument("--d-models", type=comma_list(int), default=None,
                    help="comma list, e.g. 64,128,256 (GPU: up to 1024)")
    ap.add_argument("--compile", action="store_true", help="also time each config with torch.compile")
    ap.add_argument("--precisions", type=comma_list(str, ("fp32", "bf16")), default=None,
                    help="comma list of fp32, bf16 (default: both where bf16 is native)")
    ap.add_argument("--peak-n", type=positive(int), default=None,
                    help="size n of the n^3 peak matmul (default 2048, GPU 8192)")
    ap.add_argument("--rounds", type=positive(int), default=1,
                    help="time each configuration R times (its precisions step by step in turn); each row keeps its "
                         "fastest round")
    args = ap.parse_args()
    device = resolve_device("auto")
    print(provenance(device), flush=True)
    ds = load_prepared(args.prepared)
    seqs = build_sequences(ds)
    catalog = build_catalog(ds, 2048)
    native_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    precisions = args.precisions or ["fp32"] + (["bf16"] if native_bf16 else [])
    if "bf16" in precisions and not native_bf16:
        raise SystemExit(f"--precisions: bf16 asked for, but {device} has no native bf16 (it would run ~20x slower)")
    n = args.peak_n or (8192 if device.type == "cuda" else 2048)  # a GPU needs the larger product to reach its peak
    peaks = {p: matmul_peak(DTYPES[p], device, n) for p in precisions}
    d_models = args.d_models or [64, 128, 256]
    grid = list(itertools.product(d_models, [2, 4], [50, 200], OBJECTIVES, ["id", "features"]))
    if args.quick:
        grid = [g for g in grid if g[1] == 2 and g[2] == 200 and g[3] in ("full", "frozen1024") and g[4] == "id"] + \
               [(128, 2, 200, "sampled128", "features")]
    print(f"device: {device}, batch {args.batch_size}, best of {args.rounds} round(s); matmul peak ({n}^3): " +
          ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    eval_throughput(seqs, catalog, max(d_models), device)
    print(f"{'d':>5} {'L':>2} {'T':>4} {'objective':>11} {'embedder':>9} {'prec':>5} {'tokens/s':>10} {'GFLOP/s':>8} "
          f"{'MFU':>6} {'HFU':>6} {'peak':>7} {'bf16/fp32':>9}" +
          (f" {'compiled tok/s':>15} {'speed-up':>9} {'compile s':>10}" if args.compile else ""))
    failed: list[str] = []
    for d, layers, t, obj, emb in grid:
        mc = grid_model(d, layers, t, emb)
        tc = TrainConfig(**OBJECTIVES[obj])
        best: dict[str, tuple[Timing, float]] = {}  # precision -> (fastest round, the peak measured right before it)
        live = {p: AMPS[p] for p in precisions}  # precisions that failed here are not retried in later rounds
        for _ in range(args.rounds):
            if not live:
                break
            row_peaks = {p: matmul_peak(DTYPES[p], device, n) for p in live}  # the denominators, next to the rows
            timings, errors = bench_precisions(ds, seqs, catalog, mc, tc, device, live, args.batch_size, args.steps)
            for prec, why in errors.items():  # say so, go on, fail at the end
                failed.append(f"{d} {layers} {t} {obj} {emb} {prec}: {why}")
                del live[prec]
                print(f"{d:>5} {layers:>2} {t:>4} {obj:>11} {emb:>9} {prec:>5}   failed: {failed[-1]}", flush=True)
            for prec, timed in timings.items():
                if prec not in best or timed.tokens_per_s > best[prec][0].tokens_per_s:
                    best[prec] = (timed, row_peaks[prec])
        for prec, (timed, peak) in best.items():
            extra = ""
            if args.compile:
                comps, errors = bench_precisions(ds, seqs, catalog, mc, tc, device, {prec: AMPS[prec]},
                                                 args.batch_size, args.steps, compile=True)
                if prec in errors:
                    failed.append(f"{d} {layers} {t} {obj} {emb} {prec} compiled: {errors[prec]}")
                    extra = f"   compiled: failed ({errors[prec]})"
                else:
                    comp = comps[prec]
                    speedup = comp.tokens_per_s / timed.tokens_per_s
                    extra = f" {comp.tokens_per_s:>15,.0f} {speedup:>8.2f}x {comp.warmup_s:>10.1f}"
            ratio = (f"{timed.tokens_per_s / best['fp32'][0].tokens_per_s:>8.2f}x" if prec == "bf16" and "fp32" in best
                     else f"{'-':>9}")
            mfu, hfu = (100 * f / 1e9 / peak for f in (timed.model_flops_per_s, timed.hardware_flops_per_s))
            print(f"{d:>5} {layers:>2} {t:>4} {obj:>11} {emb:>9} {prec:>5} {timed.tokens_per_s:>10,.0f} "
                  f"{timed.model_flops_per_s / 1e9:>8.1f} {mfu:>5.1f}% {hfu:>5.1f}% {peak:>7.0f} {ratio}" + extra,
                  flush=True)
    print(f"matmul peak ({n}^3) at the end: " +
          ", ".join(f"{p} {matmul_peak(DTYPES[p], device, n):.1f} GFLOP/s" for p in precisions), flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} configuration(s) failed: " + "; ".join(failed))


if __name__ == "__main__":
    run(main)
