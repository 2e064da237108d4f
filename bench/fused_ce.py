"""Before/after of the fused chunked catalog cross-entropy: one ML-1M training step (SASRec size, T=200, B=128,
full softmax) with the fused kernel vs plain autograd (h @ E.T then F.cross_entropy), interleaved in one run.

    .venv/bin/python bench/fused_ce.py [--reps 6] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from bench_args import positive, provenance, run
from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.data.dataset import load_prepared
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import build_catalog
import bfmscale.train.step as step_mod
from bfmscale.train import negatives
from bfmscale.train.data import build_sequences, gather, plan_epoch, train_windows
from bfmscale.train.loop import make_optimizer
from bfmscale.train.step import Objective, train_step


def plain_full_softmax(h, catalog, targets, temperature=1.0, reduction="mean"):
    return F.cross_entropy((h / temperature) @ catalog.T, targets - 1, reduction=reduction)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=positive(int), default=6)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--prepared", default="data/prepared/ml-1m")
    args = ap.parse_args()
    print(provenance(), flush=True)
    ds = load_prepared(args.prepared)
    mc, tc = ModelConfig(max_len=200), TrainConfig()
    catalog, seqs = build_catalog(ds, 2048), build_sequences(ds)
    win = train_windows(seqs, 200)
    full = np.flatnonzero(win.lengths == 201)
    batch = plan_epoch(win.subset(full), 128, np.random.default_rng(0))[0]
    items, feats = gather(seqs, win.subset(full).subset(batch))
    amp = torch.bfloat16 if args.precision == "bf16" else None
    times = {"fused": [], "plain": []}
    model = BehaviorModel(mc, catalog)
    opt = make_optimizer(model, 1e-3, tc)
    obj = Objective(tc, negatives.NegativeSampler("uniform", catalog.n_items), torch.Generator().manual_seed(0))
    losses = {"fused": negatives.full_softmax_loss, "plain": plain_full_softmax}
    for rep in range(args.reps + 1):
        for name, fn in losses.items():
            with mock.patch.object(step_mod, "full_softmax_loss", fn):
                t = time.perf_counter()
                train_step(model, obj, opt, items, feats, amp, 1.0)
                if rep:
                    times[name].append(time.perf_counter() - t)
    tokens = int((items[:, 1:] != 0).sum())
    print(f"ML-1M step: B=128, T=200, {tokens} targets x {catalog.n_items} items, {args.precision}, "
          f"{torch.get_num_threads()} threads; median of {args.reps}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<6} {v * 1000:8.0f} ms/step  {tokens / v:10,.0f} tokens/s")
    print(f"fused / plain speed-up: {med['plain'] / med['fused']:.2f}x")


if __name__ == "__main__":
    run(main)
