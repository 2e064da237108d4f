"""The SASRec-size configuration the benches share, and the throughput calibration that turns minutes into FLOPs.

d=64, 2 layers, 2 heads, d_ff 256, T=200, dropout 0.2, full-softmax CE, lr 1e-3, batch 128, ID-only, ML-1M; later
overrides win, e.g. `SASREC + ["model.max_len=50"]`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bfmscale.config import RunConfig, load_run_config
from bfmscale.data.dataset import PreparedDataset
from bfmscale.eval.ranking import evaluate
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import build_catalog
from bfmscale.train.data import build_sequences
from bfmscale.train.loop import train_run

SASREC = ["model.embedder=id", "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.d_ff=256",
          "model.max_len=200", "model.dropout=0.2", "train.objective=full", "train.lr=1e-3", "train.batch_size=128",
          "train.n_evals=0", "data.dataset=ml-1m"]


def flops_per_second(overrides: list[str], ds: PreparedDataset) -> float:
    """Analytic training FLOPs per second of this config on this machine, over the second half of a ~1e12-FLOP run.

    The first steps run at about half speed (12.7k tokens/s over the first 9 steps at L=50 on the AVX2 EPYC, 24k
    after), so the whole probe's mean sized 10- and 25-minute schedules that trained 8.4 and 20.1 minutes."""
    curve = train_run(load_run_config(None, overrides + ["train.flops=1e12"]), ds).curve
    half = curve.iloc[len(curve) // 2 - 1]
    last = curve.iloc[-1]
    return float((last["flops"] - half["flops"]) / (last["train_time"] - half["train_time"]))


def checkpoint_test_metrics(cfg: RunConfig, ds: PreparedDataset, checkpoint: Path,
                            exclude_seen: bool) -> dict[str, float]:
    """Reload a trained model (`train.save_checkpoint=true`) and rank the full catalog for each user's test target."""
    seqs = build_sequences(ds)
    model = BehaviorModel(cfg.model, build_catalog(ds, cfg.model.text_buckets), seqs.event_inputs)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    return evaluate(model, seqs, "test", cfg.model.max_len, torch.device("cpu"), exclude_seen=exclude_seen).metrics
