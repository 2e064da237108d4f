"""Analytic FLOPs per step vs torch.utils.flop_counter on a real forward + backward; parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.model.accounting import (StepShape, counted_flops, embedder_share, module_param_counts, param_counts,
                                       seed002_params, step_flops)
from bfmscale.model import embedder as embedder_mod
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import EventInputs, build_catalog
from bfmscale.train import fused_ce
from bfmscale.train.data import build_sequences, gather, train_windows
from bfmscale.train.loop import shape_of
from bfmscale.train.negatives import NegativeSampler
from bfmscale.train.step import Objective
from synthetic import make_prepared


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("acc")
    return {extras: make_prepared(root, n_users=16, n_items=50, min_len=10, max_len=60, event_extras=extras)
            for extras in (False, True)}


@pytest.fixture(scope="module")
def ds(datasets):
    return datasets[False]


CASES = [
    # (embedder, objective, frozen, max_len, extra model kwargs)
    ("id", "full", False, 16, {}),
    ("features", "full", False, 16, {}),
    ("features", "sampled", False, 16, {}),
    ("features", "sampled", True, 16, {}),
    ("id", "sampled", False, 40, {}),
    ("id", "inbatch", False, 40, {}),
    ("features", "inbatch", False, 40, {"id_buckets": 7}),
    ("features", "full", True, 40, {"id_buckets": 0, "mlp_layers": 3}),
]


@pytest.mark.parametrize("embedder,objective,frozen,max_len,extra,event_extras",
                         [(*case, False) for case in CASES] + [("features", "full", False, 16, {}, True),
                                                                ("features", "sampled", False, 40, {}, True)])
def test_step_flops_match_flop_counter(datasets, embedder, objective, frozen, max_len, extra, event_extras, monkeypatch):
    # The accounting counts model FLOPs: the objective's K+1 candidates per target, the embedder's MLP per lookup.
    # The gather and per-lookup routes execute exactly those; the dense route for small catalogs does more FLOPs in
    # less time (tests/test_fused_ce.py), the catalog route fewer (tests/test_model.py).
    monkeypatch.setattr(fused_ce, "DENSE_MAX_RATIO", 0)
    monkeypatch.setattr(embedder_mod, "CATALOG_ROUTE_RATIO", float("inf"))
    mc = ModelConfig(embedder=embedder, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=max_len, dropout=0.1,
                     mlp_hidden=48, **extra)
    tc = TrainConfig(objective=objective, n_negatives=8, freeze_embedder=frozen, sampler="popularity")
    torch.manual_seed(0)
    ds = datasets[event_extras]
    catalog = build_catalog(ds, mc.text_buckets)
    seqs = build_sequences(ds)
    model = BehaviorModel(mc, catalog, seqs.event_inputs)
    if frozen:
        model.freeze_embedder()
    win = train_windows(seqs, max_len)
    idx = np.arange(min(6, len(win)))
    shape = shape_of(win, idx, seqs)
    items, feats = gather(seqs, win.subset(idx))
    obj = Objective(tc, NegativeSampler("popularity", catalog.n_items, catalog.popularity), torch.Generator().manual_seed(0))
    n = []

    def step():
        loss, count = obj.loss(model, items, feats)
        loss.backward()
        n.append(count)

    counted = counted_flops(step)
    analytic = step_flops(mc, tc, catalog, shape, seqs.event_inputs)
    assert n == [shape.targets]
    assert analytic["total"] == pytest.approx(counted, rel=0.02), analytic
    # Attention is a real share of it (the CPU SDPA mapping is in effect, not silently zero).
    assert analytic["attention"] > 0.01 * analytic["total"]


def test_counted_flops_include_cpu_flash_attention():
    """The flop counter alone counts CPU flash attention as 0; counted_flops maps it to SDPA's formulas: forward
    4·B·H·T²·Dh, backward 2.5x that (STACK-NOTES)."""
    B, H, T, Dh = 2, 4, 16, 8
    q, k, v = (torch.randn(B, H, T, Dh, requires_grad=True) for _ in range(3))
    attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    assert counted_flops(attend) == 4 * B * H * T * T * Dh
    assert counted_flops(lambda: attend().sum().backward()) == 3.5 * 4 * B * H * T * T * Dh


def test_frozen_embedder_gets_no_gradient(ds):
    mc = ModelConfig(embedder="features", d_model=32, n_heads=4, max_len=16)
    catalog = build_catalog(ds, mc.text_buckets)
    seqs = build_sequences(ds)
    model = BehaviorModel(mc, catalog, seqs.event_inputs)
    model.freeze_embedder()
    win = train_windows(seqs, 16)
    items, feats = gather(seqs, win.subset(np.arange(4)))
    tc = TrainConfig(objective="sampled", n_negatives=8, freeze_embedder=True)
    obj = Objective(tc, NegativeSampler("uniform", catalog.n_items), torch.Generator().manual_seed(0))
    loss, _ = obj.loss(model, items, feats)
    loss.backward()
    assert all(p.grad is None for p in model.embedder.parameters())
    assert any(p.grad is not None for p in model.contextualizer.parameters())


@pytest.mark.parametrize("embedder,extra", [("id", {}), ("features", {}), ("features", {"id_buckets": 0}),
                                            ("features", {"id_buckets": 11, "mlp_layers": 1}),
                                            ("features", {"use_event_features": False})])
@pytest.mark.parametrize("events", [EventInputs(), EventInputs(numeric=1), EventInputs(numeric=3, categorical=(4, 9)),
                                    EventInputs(categorical=(4,), multi=((6, 3), (11, 16)))])
def test_param_counts_match_built_model(ds, embedder, extra, events):
    mc = ModelConfig(embedder=embedder, d_model=32, n_heads=4, n_layers=3, d_ff=80, max_len=20, **extra)
    catalog = build_catalog(ds, mc.text_buckets)
    model = BehaviorModel(mc, catalog, events)
    assert param_counts(mc, catalog, events) == module_param_counts(model)
    assert module_param_counts(model)["total"] == sum(p.numel() for p in model.parameters())


def test_seed002_convention_and_share(ds):
    mc = ModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=256)
    assert seed002_params(mc) == 12 * 2 * 64 * 64
    counts = param_counts(mc, build_catalog(ds, mc.text_buckets))
    s = embedder_share(counts)
    assert s == counts["embedder"] / counts["total"]


def test_embedder_share_spans_half_percent_to_half(ds):
    """The split axis needs s from ~0.5% to ~50% at a fixed total: the feature embedder's width knobs reach both."""
    catalog = build_catalog(ds, 64)
    small = ModelConfig(embedder="features", d_model=256, n_heads=4, n_layers=4, d_ff=1024, id_buckets=0, d_feature=2,
                        text_buckets=64, mlp_hidden=8, mlp_layers=1)
    big = ModelConfig(embedder="features", d_model=64, n_heads=4, n_layers=1, d_ff=128, id_dim=256, d_feature=64,
                      text_buckets=64, mlp_hidden=512, mlp_layers=3)
    assert embedder_share(param_counts(small, catalog)) < 0.005
    assert embedder_share(param_counts(big, catalog)) > 0.5


def test_step_flops_scale_with_sequence_length_quadratically_in_attention(ds):
    mc = ModelConfig(d_model=32, n_heads=4)
    tc = TrainConfig()
    catalog = build_catalog(ds, mc.text_buckets)
    a = step_flops(mc, tc, catalog, StepShape(4, 10, 40))
    b = step_flops(mc, tc, catalog, StepShape(4, 20, 80))
    assert b["attention"] == pytest.approx(4 * a["attention"])
    assert b["transformer"] == pytest.approx(2 * a["transformer"])
