"""Model properties: padding / batch independence, causal masking, freezing cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.model import embedder as embedder_mod
from bfmscale.model import transformer
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import EventInputs, build_catalog, build_event_features, hash_tokens, zscore
from bfmscale.model.transformer import causal_attention, layer_dropouts
from bfmscale.train.negatives import NegativeSampler
from bfmscale.train.step import Objective
from synthetic import make_prepared


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("model"), n_users=10, n_items=30)


@pytest.mark.parametrize("embedder", ["id", "features"])
def test_outputs_do_not_depend_on_padding_or_batch(ds, embedder):
    mc = ModelConfig(embedder=embedder, d_model=32, n_heads=4, max_len=20, dropout=0.0)
    torch.manual_seed(0)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets), EventInputs(numeric=1)).eval()
    user = torch.tensor([[3, 7, 1, 9, 4]])
    feats = torch.tensor([[[0.5], [-1.0], [0.0], [1.5], [0.2]]])
    alone = model.context(model.item_vectors(user), feats if embedder == "features" else None)
    # The same user right-padded to 12 positions, next to two other users of different lengths.
    batch = torch.zeros(3, 12, dtype=torch.long)
    batch[0, :11] = torch.arange(1, 12)
    batch[1, :5] = user[0]
    batch[2, :2] = torch.tensor([5, 6])
    bfeats = torch.randn(3, 12, 1)
    bfeats[1, :5] = feats[0]
    bfeats[1, 5:] = 99.0  # garbage on padding must not leak into the real positions
    out = model.context(model.item_vectors(batch), bfeats if embedder == "features" else None)
    torch.testing.assert_close(out[1, :5], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers,amp", [(1, None), (2, None), (3, torch.bfloat16)])
def test_context_at_last_positions_equals_the_full_pass(ds, layers, amp):
    """`context(..., last)` (evaluation: the final block only for each row's last position, or for Q positions per
    row) gives the full pass's context vectors at those positions, for rows of different lengths, in fp32 and under
    bf16 autocast."""
    mc = ModelConfig(embedder="features", d_model=32, n_heads=4, n_layers=layers, max_len=20, dropout=0.0)
    torch.manual_seed(0)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets), EventInputs(numeric=1)).eval()
    items = torch.zeros(3, 12, dtype=torch.long)
    items[0, :11], items[1, :5], items[2, :1] = torch.arange(1, 12), torch.tensor([3, 7, 1, 9, 4]), 6
    last = torch.tensor([10, 4, 0])
    feats = torch.randn(3, 12, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        full = model.context(model.item_vectors(items), feats)
        at_last = model.context(model.item_vectors(items), feats, last)
        pairs = torch.tensor([[9, 10], [3, 4], [0, 0]])  # two queries per row (shared validation and test pass)
        at_pairs = model.context(model.item_vectors(items), feats, pairs)
    assert at_last.shape == (3, 32) and at_pairs.shape == (3, 2, 32)
    tol = dict(rtol=1e-5, atol=1e-5) if amp is None else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(at_last.float(), full[torch.arange(3), last].float(), **tol)
    torch.testing.assert_close(at_pairs.float(), full[torch.arange(3)[:, None], pairs].float(), **tol)


def test_causal_future_does_not_change_past(ds):
    mc = ModelConfig(d_model=32, n_heads=4, max_len=20, dropout=0.0)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets)).eval()
    a = torch.tensor([[1, 2, 3, 4, 5]])
    b = torch.tensor([[1, 2, 3, 9, 8]])
    ha, hb = model.context(model.item_vectors(a)), model.context(model.item_vectors(b))
    torch.testing.assert_close(ha[0, :3], hb[0, :3])
    assert not torch.allclose(ha[0, 3], hb[0, 3])


def test_frozen_cache_equals_embedder(ds):
    mc = ModelConfig(embedder="features", d_model=32, n_heads=4, dropout=0.0)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets)).eval()
    codes = torch.tensor([[1, 5, 30], [2, 0, 7]])
    before = model.item_vectors(codes).detach()
    model.freeze_embedder()
    after = model.item_vectors(codes)
    torch.testing.assert_close(after[codes != 0], before[codes != 0])
    assert torch.count_nonzero(after[1, 1]) == 0  # padding row of the cache is zero
    assert not any(p.requires_grad for p in model.embedder.parameters())


def test_feature_embedder_uses_features(ds):
    """Without an ID table, two items differ only through their features; identical features -> identical vectors."""
    mc = ModelConfig(embedder="features", d_model=16, n_heads=2, id_buckets=0)
    catalog = build_catalog(ds, mc.text_buckets)
    model = BehaviorModel(mc, catalog).eval()
    vecs = model.catalog_vectors()
    assert vecs.shape == (catalog.n_items, 16)
    assert torch.unique(vecs.round(decimals=5), dim=0).shape[0] > 1


def test_hash_tokens_stable_and_in_range():
    assert hash_tokens("The Matrix (1999)", 100) == hash_tokens("the MATRIX 1999", 100)
    assert all(1 <= t <= 100 for t in hash_tokens("a b c d e f g", 100))


def test_layerwise_dropout_falls_with_depth():
    mc = ModelConfig(n_layers=3, dropout=0.3, dropout_min=0.1, layerwise_dropout=True)
    assert layer_dropouts(mc) == pytest.approx([0.3, 0.2, 0.1])
    assert layer_dropouts(ModelConfig(n_layers=3, dropout=0.3)) == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("extra", [{}, {"id_buckets": 7, "mlp_layers": 3}])
def test_catalog_route_equals_per_lookup_embedding(ds, extra, monkeypatch):
    """Embedding every item once and gathering gives the per-lookup vectors and the same parameter gradients."""
    mc = ModelConfig(embedder="features", d_model=16, n_heads=2, mlp_hidden=24, **extra)
    torch.manual_seed(0)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets))
    codes = torch.randint(0, 31, (40, 9))  # 360 lookups of 31 rows (padding included), many repeated
    weights = torch.randn(40, 9, 16)
    results = []
    for ratio in (float("inf"), 1.0):  # per lookup, then the catalog route
        monkeypatch.setattr(embedder_mod, "CATALOG_ROUTE_RATIO", ratio)
        model.zero_grad()
        out = model.item_vectors(codes)
        (out * weights).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.embedder.named_parameters()}))
    (per_lookup, g_lookup), (routed, g_routed) = results
    torch.testing.assert_close(routed, per_lookup, rtol=1e-5, atol=1e-6)
    assert g_routed.keys() == g_lookup.keys() and len(g_lookup) > 3
    for name in g_lookup:
        torch.testing.assert_close(g_routed[name], g_lookup[name], rtol=1e-4, atol=1e-5, msg=name)


def test_catalog_route_only_for_many_lookups(ds, monkeypatch):
    """Few lookups run the MLP on them alone; more lookups than catalog rows run it once per item."""
    mc = ModelConfig(embedder="features", d_model=16, n_heads=2)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets))
    seen = []
    model.embedder.mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    model.item_vectors(torch.tensor([[1, 2, 3]]))
    model.item_vectors(torch.randint(1, 31, (10, 10)))
    assert seen == [3, 31]


@pytest.mark.parametrize("embedder", ["id", "features"])
def test_item_table_rows_are_item_vectors(ds, embedder):
    """The table the sampled CE reads is every item's vector by code, frozen or not."""
    mc = ModelConfig(embedder=embedder, d_model=16, n_heads=2)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets)).eval()
    codes = torch.tensor([1, 5, 30])
    torch.testing.assert_close(model.item_table()[codes], model.item_vectors(codes))
    assert model.item_table().shape[0] == 31 and model.item_table().requires_grad


def test_cpu_bf16_attention_is_explicit_and_causal():
    """Under CPU bf16 autocast and T <= 4 d_head (explicit on any CPU kind), attention is explicit bf16 math: as
    close to fp64 as torch's own bf16 kernel, causal, with bf16 gradients that match fp64's."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 40, 2, 16).bfloat16().requires_grad_() for _ in range(3))
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, heads, T, d_head] views, as the Block makes them
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).double()
    assert out.dtype == torch.bfloat16
    err, fused_err = ((out.double() - ref).norm() / ref.norm()).item(), ((fused - ref).norm() / ref.norm()).item()
    assert err < 2 * fused_err < 2e-2  # bf16 rounding, not a wrong mask or scale (those give errors of order 1)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g.bfloat16())
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    for got, want in zip(grads, grads_ref):
        assert got.dtype == torch.bfloat16
        assert ((got.double() - want).norm() / want.norm()).item() < 2e-2
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 25:], v2[:, :, 25:] = 100.0, -100.0  # the future of position 24
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out2 = causal_attention(q.detach(), k2, v2)
    assert torch.equal(out2[:, :, :25], out.detach()[:, :, :25]) and not torch.equal(out2[:, :, 25:], out[:, :, 25:])


def test_explicit_attention_rule_by_cpu_kind(monkeypatch):
    """With AMX, explicit bf16 attention while T <= 4 d_head; without, while T <= 1024; never once the [B, heads, T, T]
    scores would pass 2^27 elements."""
    monkeypatch.setattr(transformer, "cpu_has_amx", lambda: True)
    assert transformer.explicit_attention(8, 128, 32) and not transformer.explicit_attention(8, 129, 32)
    assert transformer.explicit_attention(8, 256, 64) and not transformer.explicit_attention(8, 257, 64)
    monkeypatch.setattr(transformer, "cpu_has_amx", lambda: False)
    assert transformer.explicit_attention(8, 200, 32) and transformer.explicit_attention(8, 1024, 16)
    assert not transformer.explicit_attention(8, 1025, 512)
    assert transformer.explicit_attention(2**27 // 200**2, 200, 32)
    assert not transformer.explicit_attention(2**27 // 200**2 + 1, 200, 32)


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_bf16_attention_past_the_explicit_rule_is_fp32_flash(monkeypatch, amx):
    """Where the rule says no (longer windows; AMX or not) CPU bf16 attention is fp32 flash on the bf16 inputs:
    exactly fp32 SDPA."""
    monkeypatch.setattr(transformer, "cpu_has_amx", lambda: amx)
    t = transformer.EXPLICIT_ATTENTION_MAX_RATIO * 8 + 1 if amx else transformer.EXPLICIT_ATTENTION_MAX_T + 1
    q, k, v = (torch.randn(2, 2, t, 8).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_matches_fp64_attention_without_cudnn(device, masked):
    """`sdpa` is attention (causal, or one query per row under a boolean mask) within bf16 rounding of fp64, and on
    CUDA it launches no cuDNN attention kernel and leaves the process's backend switches as they were."""
    torch.manual_seed(0)
    t = 37
    q = torch.randn(4, 2, 1 if masked else t, 32, device=device, dtype=torch.bfloat16)
    k, v = (torch.randn(4, 2, t, 32, device=device, dtype=torch.bfloat16) for _ in range(2))
    kw = {"is_causal": True}
    if masked:
        seen = torch.arange(t, device=device) <= torch.tensor([0, 5, 20, 36], device=device).unsqueeze(1)
        kw = {"attn_mask": seen[:, None, None, :]}
    flags = torch.backends.cuda.cudnn_sdp_enabled()
    with torch.profiler.profile() as prof:
        out = transformer.sdpa(q, k, v, **kw)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), **kw)
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert out.dtype == torch.bfloat16 and err < 1e-2  # a wrong mask or scale gives errors of order 1
    assert not any("cudnn" in e.name.lower() for e in prof.events())
    assert torch.backends.cuda.cudnn_sdp_enabled() == flags


@pytest.mark.parametrize("objective", ["full", "sampled"])
def test_feature_step_embeds_items_once(ds, objective, monkeypatch):
    """A window shorter than the catalog still takes one embedder pass when its candidates need the whole table
    (the full softmax's catalog, or K negatives per target): the history is read from that table, not embedded apart."""
    mc = ModelConfig(embedder="features", d_model=16, n_heads=2, max_len=20, dropout=0.0)
    catalog = build_catalog(ds, mc.text_buckets)
    model = BehaviorModel(mc, catalog)
    calls = []
    embed = model.embedder._embed
    monkeypatch.setattr(model.embedder, "_embed", lambda flat: calls.append(len(flat)) or embed(flat))
    items = torch.tensor([[1, 4, 9, 2, 7, 0]])  # 6 lookups < 31 table rows
    tc = TrainConfig(objective=objective, n_negatives=8)
    obj = Objective(tc, NegativeSampler("uniform", catalog.n_items), torch.Generator().manual_seed(0))
    loss, _ = obj.loss(model, items, None)
    loss.backward()
    assert calls == [catalog.n_items + 1]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("rich"), n_users=10, n_items=30, event_extras=True)


def test_event_features_layout_gaps_and_codes(rich):
    """Numeric event features z-scored on training events (0 where missing), a missing flag for the one with gaps,
    the categorical codes (0 where missing), then the list-valued feature's codes padded with 0, checked against
    pandas."""
    feats, inputs = build_event_features(rich)
    ev = rich.events
    assert inputs == EventInputs(numeric=3, categorical=(len(rich.vocab["event.channel"]) + 1,),
                                 multi=((len(rich.vocab["event.tags"]) + 1, 3),))
    assert rich.features["event"]["tags"] == "multi_categorical" and len(rich.vocab["event.tags"]) == 4
    assert feats.shape == (len(ev), 7) and torch.isfinite(feats).all()
    train = ev["loo"] == "train"
    numeric = [c for c, t in rich.features["event"].items() if t == "numeric"]  # the layout's order
    assert sorted(numeric) == ["amount", "rating"]
    for j, col in enumerate(numeric):
        x = ev[col].astype("float64")
        expected = ((x - x[train].mean()) / x[train].std(ddof=0)).fillna(0.0)
        assert np.allclose(feats[:, j].numpy(), expected.to_numpy(), atol=1e-5)
    assert ev["amount"].isna().any() and not ev["rating"].isna().any()
    assert feats[:, 2].numpy().tolist() == ev["amount"].isna().astype(float).tolist()
    assert feats[:, 3].numpy().tolist() == ev["channel"].astype(float).tolist()
    assert (ev["channel"] == 0).any()  # the gaps became code 0
    tags = [sorted(int(t) for t in row[row > 0]) for row in feats[:, 4:].numpy()]
    assert tags == [sorted(v) for v in ev["tags"]] and [] in tags  # a gap is an empty list


def test_event_embedder_adds_numeric_projection_and_code_embeddings(rich):
    feats, inputs = build_event_features(rich)
    mc = ModelConfig(embedder="features", d_model=16, n_heads=2)
    emb = BehaviorModel(mc, build_catalog(rich, mc.text_buckets), inputs).embedder
    v = torch.randn(2, 5, 16)
    f = feats[:10].reshape(2, 5, 7)
    table, bag = emb.event_tables[0].weight, emb.event_bags[0].weight
    assert torch.count_nonzero(table[0]) == 0 and torch.count_nonzero(bag[0]) == 0  # a missing code adds nothing
    codes = f[..., 4:].long()
    present = (codes > 0).unsqueeze(-1)
    tag_mean = (bag[codes] * present).sum(-2) / present.sum(-2).clamp(min=1)  # an empty list adds 0
    expected = v + f[..., :3] @ emb.event_proj.weight.T + emb.event_proj.bias + table[f[..., 3].long()] + tag_mean
    assert (codes.sum(-1) == 0).any()  # the rows include an event without tags
    assert torch.allclose(emb.events(v, f), expected, atol=1e-6)
    off = BehaviorModel(ModelConfig(embedder="features", d_model=16, n_heads=2, use_event_features=False),
                        build_catalog(rich, mc.text_buckets), inputs).embedder
    assert torch.equal(off.events(v, f), v)


def test_zscore_fits_on_given_rows_and_survives_empty_or_constant_columns():
    vals = np.array([[1.0, np.nan, 5.0], [3.0, np.nan, 5.0], [11.0, np.nan, np.nan]])
    z, missing = zscore(vals, np.array([True, True, False]))
    assert z[:, 0].tolist() == [-1.0, 1.0, 9.0]  # mean 2, std 1 from the first two rows only
    assert z[:, 1].tolist() == [0.0, 0.0, 0.0] and z[:, 2].tolist() == [0.0, 0.0, 0.0]
    assert missing.tolist() == [[False, True, False], [False, True, False], [False, True, True]]
