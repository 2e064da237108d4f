"""Quality on ML-1M leave-last-out: SASRec-size ID-only model and the feature-based model of the same size.

d=64, 2 layers, 2 heads, d_ff=256, T=200, dropout 0.2, full-softmax CE, Adam(W) lr 1e-3, batch 128.
The FLOP budget of each run is set from a short throughput calibration so that training takes about --minutes.
Prints test HR@10, NDCG@10, MRR and the wall time. Needs data/prepared/ml-1m (`dvc repro prepare`).

    .venv/bin/python bench/quality_ml1m.py --minutes 30
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import time

import torch

from bfmscale.config import load_run_config
from bfmscale.data.dataset import load_prepared
from bfmscale.logging_setup import setup_logging
from bfmscale.train.loop import train_run

SASREC = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.d_ff=256", "model.max_len=200",
          "model.dropout=0.2", "train.objective=full", "train.lr=1e-3", "train.batch_size=128", "train.n_evals=0",
          "train.warmup_frac=0.01", "data.dataset=ml-1m"]


def calibrate(overrides: list[str], ds) -> float:
    """Analytic FLOPs per second of this config on this machine, from a ~1e12-FLOP run."""
    res = train_run(load_run_config(None, overrides + ["train.flops=1e12"]), ds)
    return res.info["flops_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall time per model")
    ap.add_argument("--models", default="id,features")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--prepared", default="data/prepared")
    args = ap.parse_args()
    setup_logging(logging.INFO)
    ds = load_prepared(f"{args.prepared}/ml-1m")
    rows = []
    for emb in args.models.split(","):
        ov = SASREC + [f"model.embedder={emb}", f"train.precision={args.precision}"]
        rate = calibrate(ov, ds)
        budget = rate * args.minutes * 60
        t0 = time.perf_counter()
        res = train_run(load_run_config(None, ov + [f"train.flops={budget:.6g}"]), ds)
        m, i = res.metrics, res.info
        rows.append((emb, i["params"]["total"], budget, i["epochs"], i["precision"], i["train_time"],
                     time.perf_counter() - t0, m["test_hr@10"], m["test_ndcg@10"], m["test_mrr"], m["test_ce"]))
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ML-1M leave-last-out, full ranking over {ds.n_items} items, no exclusion")
    print(f"{'embedder':<9} {'params':>9} {'FLOPs':>9} {'epochs':>7} {'prec':>5} {'train s':>8} {'wall s':>7} "
          f"{'HR@10':>7} {'NDCG@10':>8} {'MRR':>7} {'CE':>6}")
    for r in rows:
        print(f"{r[0]:<9} {r[1]:>9,} {r[2]:>9.3g} {r[3]:>7.1f} {r[4]:>5} {r[5]:>8.0f} {r[6]:>7.0f} {r[7]:>7.4f} "
              f"{r[8]:>8.4f} {r[9]:>7.4f} {r[10]:>6.3f}")


if __name__ == "__main__":
    main()
