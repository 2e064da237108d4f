"""The sampled CE's routes on one device, forward + backward of one step's targets: gather (K+1 candidate vectors per
target), dense with dh from a [c, I] x [I, d] matmul, dense with dh from weighted bags of table rows; a frozen table
and a trainable one; fp32 and bf16 autocast. Rounds alternate the routes; each cell is the fastest round.

    .venv/bin/python bench/sampled_ce_routes.py [--device cpu|cuda] [--targets 6400] [--d-models 64,256]
        [--negatives 128,1024] [--items 3706] [--rounds 3]

`--items` takes a list: catalogs of several sizes show where the dense route stops beating the gather route.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from bench_args import comma_list, positive, provenance, run
from bfmscale.malloc import tune_malloc
from bfmscale.train.fused_ce import ROUTES, fused_sampled_cross_entropy, sampled_route
from train_throughput import sync


def step_seconds(h: torch.Tensor, table: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, amp: torch.dtype | None,
                 route: str) -> float:
    """Seconds of one forward + backward of the sampled CE on this route, synchronized on CUDA."""
    h.grad = table.grad = None
    sync(h.device)
    t = time.perf_counter()
    with torch.autocast(h.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        loss = fused_sampled_cross_entropy(h, table, pos, neg, None, route)
    loss.backward()
    sync(h.device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--targets", type=positive(int), default=6400)
    ap.add_argument("--items", type=comma_list(int), default=[3706], help="catalog sizes (ML-1M: 3706)")
    ap.add_argument("--d-models", type=comma_list(int), default=[64, 256])
    ap.add_argument("--negatives", type=comma_list(int), default=[128, 1024])
    ap.add_argument("--rounds", type=positive(int), default=3)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("argument --device: 'cuda': no CUDA device here; expected cpu")
    dev = torch.device(args.device)
    tune_malloc()  # as training does (train.tune_malloc): the routes' large chunk tensors reuse freed blocks
    gen = torch.Generator(device=dev).manual_seed(0)
    print(provenance(dev))
    print(f"sampled CE, fwd + bwd: {args.targets} targets; "
          f"best of {args.rounds} alternating rounds (ms); default = the route fused_sampled_cross_entropy picks")
    print(f"{'I':>7} {'I/(K+1)':>7} {'d':>5} {'K':>5} {'table':>9} {'prec':>5} {'gather':>8} {'matmul':>8} {'bag':>8}  "
          f"{'matmul/bag':>10} {'default':>8}")
    for n_items, d, k in itertools.product(args.items, args.d_models, args.negatives):
        for frozen, amp in itertools.product((True, False), (None, torch.bfloat16)):
            table = torch.randn(n_items + 1, d, device=dev, generator=gen).mul_(0.1).requires_grad_(not frozen)
            h = torch.randn(args.targets, d, device=dev, generator=gen).requires_grad_()
            pos = torch.randint(1, n_items + 1, (args.targets,), device=dev, generator=gen)
            neg = torch.randint(1, n_items + 1, (args.targets, k), device=dev, generator=gen)
            best = {r: float("inf") for r in ROUTES}
            for rnd in range(args.rounds + 1):  # round 0 warms up
                for r in ROUTES:
                    s = step_seconds(h, table, pos, neg, amp, r)
                    if rnd:
                        best[r] = min(best[r], s)
            default = sampled_route(n_items, k + 1, dev, amp is not None, table_grad=not frozen, d=d)
            ms = {r: 1e3 * s for r, s in best.items()}
            print(f"{n_items:>7} {n_items / (k + 1):>7.1f} {d:>5} {k:>5} {'frozen' if frozen else 'trainable':>9} "
                  f"{'bf16' if amp else 'fp32':>5} {ms['gather']:>8.2f} {ms['matmul']:>8.2f} {ms['bag']:>8.2f}  "
                  f"{ms['matmul'] / ms['bag']:>9.2f}x {default:>8}", flush=True)


if __name__ == "__main__":
    run(main)
