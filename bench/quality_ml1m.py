"""Quality on ML-1M leave-last-out: SASRec-size ID-only model and the feature-based model of the same size.

d=64, 2 layers, 2 heads, d_ff=256, T=200, dropout 0.2, full-softmax CE, Adam(W) lr 1e-3, batch 128.
The FLOP budget of each run is set from a short throughput calibration so that training takes about --minutes.
Prints test HR@10, NDCG@10, MRR and the wall time, ranking the full catalog with the user's history items excluded
(the convention of the published anchors, e.g. HSTU's generative-recommenders, which drops each user's past ids;
ML-1M has no repeat ratings) and,
from the same trained model, with nothing excluded (the pipeline's default). Needs data/prepared/ml-1m.

    .venv/bin/python bench/quality_ml1m.py --minutes 30
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from bfmscale.config import load_run_config
from bfmscale.data.dataset import load_prepared
from bfmscale.logging_setup import setup_logging
from bfmscale.train.loop import train_run
from bench_args import comma_list, positive, provenance, run
from sasrec import SASREC, checkpoint_test_metrics, flops_per_second

QUALITY = SASREC + ["train.warmup_frac=0.01", "data.exclude_seen=true", "train.save_checkpoint=true"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=positive(float), default=30.0, help="training wall time per model")
    ap.add_argument("--models", type=comma_list(str, ("id", "features")), default="id,features")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--prepared", default="data/prepared")
    args = ap.parse_args()
    print(provenance(), flush=True)
    setup_logging(logging.INFO)
    ds = load_prepared(f"{args.prepared}/ml-1m")
    rows = []
    for emb in args.models:
        ov = QUALITY + [f"model.embedder={emb}", f"train.precision={args.precision}"]
        rate = flops_per_second(ov, ds)
        budget = rate * args.minutes * 60
        cfg = load_run_config(None, ov + [f"train.flops={budget:.6g}"])
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = train_run(cfg, ds, out_dir=tmp)
            wall = time.perf_counter() - t0
            m, i = res.metrics, res.info
            rows.append((emb, i["params"]["total"], budget, i["epochs"], i["precision"], i["train_time"], wall,
                         m["test_hr@10"], m["test_ndcg@10"], m["test_mrr"], m["test_ce"], "history excluded"))
            a = checkpoint_test_metrics(cfg, ds, Path(tmp) / "model.pt", exclude_seen=False)
            rows.append(("", "", "", "", "", "", "", a["hr@10"], a["ndcg@10"], a["mrr"], a["ce"], "nothing excluded"))
    print(f"\nML-1M leave-last-out, full ranking over {ds.n_items} items")
    print(f"{'embedder':<9} {'params':>9} {'FLOPs':>9} {'epochs':>7} {'prec':>5} {'train s':>8} {'wall s':>7} "
          f"{'HR@10':>7} {'NDCG@10':>8} {'MRR':>7} {'CE':>6}  ranking")
    for r in rows:
        head = (f"{r[0]:<9} {r[1]:>9,} {r[2]:>9.3g} {r[3]:>7.1f} {r[4]:>5} {r[5]:>8.0f} {r[6]:>7.0f}" if r[1] != ""
                else " " * 58)
        print(f"{head} {r[7]:>7.4f} {r[8]:>8.4f} {r[9]:>7.4f} {r[10]:>6.3f}  {r[11]}")


if __name__ == "__main__":
    run(main)
