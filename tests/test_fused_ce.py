"""The fused chunked cross-entropies equal the plain ones in value and gradients, and in counted FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bfmscale.train import fused_ce
from bfmscale.train.fused_ce import fused_linear_cross_entropy, fused_sampled_cross_entropy
from bfmscale.train.negatives import NegativeSampler, sampled_softmax_loss, table_sampled_softmax_loss
from conftest import force_score_blocks


@pytest.fixture(params=[False, True], ids=["one-product", "blocked"])
def blocked_scores(request, monkeypatch):
    """Table scores as one product, or in small blocks of table rows forced (as large fp32 chunks run on AMD CPUs)."""
    if request.param:
        force_score_blocks(monkeypatch, 4)


def test_table_scores_in_blocks_equal_one_product(monkeypatch):
    """fp32 scores of enough rows on an AMD CPU come in blocks of SCORE_BLOCK table rows, the last one short; bf16,
    fewer rows, a table of at most two blocks and other CPUs take one product. Each way, h @ table.T."""
    force_score_blocks(monkeypatch, 5, min_rows=300)
    products = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **kw: products.append(a[1].shape) or mm(*a, **kw))
    torch.manual_seed(0)
    h, table = torch.randn(300, 8), torch.randn(23, 8)
    torch.testing.assert_close(fused_ce.table_scores(h, table), h @ table.T)
    assert products == [(8, 5)] * 4 + [(8, 3)]
    products.clear()
    for hh, tt in [(h[:299], table), (h.bfloat16(), table.bfloat16()), (h, table[:10])]:
        torch.testing.assert_close(fused_ce.table_scores(hh, tt), hh @ tt.T)
    assert products == []
    monkeypatch.setattr(fused_ce, "cpu_is_amd", lambda: False)
    torch.testing.assert_close(fused_ce.table_scores(h, table), h @ table.T)
    assert products == []


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("need_e", [True, False])
def test_matches_reference(chunk, need_e, device, blocked_scores):
    torch.manual_seed(0)
    h = torch.randn(50, 16).to(device).requires_grad_()
    e = torch.randn(33, 16).to(device).requires_grad_(need_e)
    y = torch.randint(0, 33, (50,)).to(device)
    ref = F.cross_entropy(h @ e.T, y)
    ref.backward()
    gh, ge = h.grad.clone(), e.grad.clone() if need_e else None
    h.grad = None
    if need_e:
        e.grad = None
    out = fused_linear_cross_entropy(h, e, y, chunk=chunk)
    (2.0 * out).backward()  # a non-unit upstream gradient is applied
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, 2 * gh, rtol=1e-4, atol=1e-6)
    if need_e:
        torch.testing.assert_close(e.grad, 2 * ge, rtol=1e-4, atol=1e-6)
    else:
        assert e.grad is None


@pytest.mark.parametrize("need_e,factor", [(True, 3), (False, 2)])
def test_flops_equal_plain_autograd(need_e, factor, blocked_scores):
    h = torch.randn(40, 8, requires_grad=True)
    e = torch.randn(20, 8, requires_grad=need_e)
    y = torch.randint(0, 20, (40,))
    with FlopCounterMode(display=False) as fc:
        fused_linear_cross_entropy(h, e, y, chunk=16).backward()
    assert fc.get_total_flops() == factor * 2 * 40 * 20 * 8


def test_bf16_inputs_give_close_loss():
    torch.manual_seed(1)
    h = torch.randn(64, 32)
    e = torch.randn(100, 32)
    y = torch.randint(0, 100, (64,))
    ref = F.cross_entropy(h @ e.T, y)
    out = fused_linear_cross_entropy(h.bfloat16().requires_grad_(), e.bfloat16().requires_grad_(), y)
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 0.05 * ref.item()


def test_under_autocast_matches_plain_autocast():
    """fp32 leaves under bf16 autocast (the training setting): same loss and gradients as plain autograd under the
    same autocast, gradients returned in the leaves' fp32."""
    torch.manual_seed(2)
    h = torch.randn(96, 32, requires_grad=True)
    e = torch.randn(200, 32, requires_grad=True)
    y = torch.randint(0, 200, (96,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ e.T).float(), y)
    ref.backward()
    gh, ge = h.grad.clone(), e.grad.clone()
    h.grad = e.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_linear_cross_entropy(h, e, y, chunk=40)
    out.backward()
    assert h.grad.dtype == e.grad.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h.grad, gh, rtol=0.05, atol=2e-4)
    torch.testing.assert_close(e.grad, ge, rtol=0.05, atol=2e-4)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest.mark.parametrize("logq", [True, False])
@pytest.mark.parametrize("route", fused_ce.ROUTES)
def test_frozen_sampled_matches_reference(chunk, logq, route, device, blocked_scores):
    """Fused sampled CE over a frozen cache, any route: same loss and dh as the plain path, accidental hits
    still masked, repeated negatives counted once each."""
    torch.manual_seed(0)
    cache = torch.randn(13, 8).to(device)  # codes 0..12, row 0 = padding
    h = torch.randn(30, 8).to(device).requires_grad_()
    pos = torch.randint(1, 13, (30,)).to(device)
    sampler = NegativeSampler("popularity", 12, torch.arange(13.0))
    neg = sampler.sample(30, 6, torch.Generator(device).manual_seed(1))
    neg[0, 0] = pos[0]  # an accidental hit
    neg[2, 4:] = pos[2]  # two in another row
    neg[1, :3] = neg[1, 3]  # the same negative four times for one target
    log_q = sampler.log_q(neg) if logq else None
    ref = sampled_softmax_loss(h, cache[pos], cache[neg], pos, neg, log_q, temperature=0.5)
    ref.backward()
    gh = h.grad.clone()
    h.grad = None
    out = fused_sampled_cross_entropy(h / 0.5, cache, pos, neg, log_q, route, chunk=chunk)
    (3.0 * out).backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, 3 * gh, rtol=1e-4, atol=1e-6)
    h.grad = None
    table_sampled_softmax_loss(h, cache, pos, neg, log_q, temperature=0.5).backward()
    torch.testing.assert_close(h.grad, gh, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("route", fused_ce.ROUTES)
def test_table_sampled_gradient_matches_reference(chunk, route, device, blocked_scores):
    """With a trainable item table, any route gives the plain path's loss and the gradients of h and of every
    table row (positives, repeated negatives and accidental hits included; the padding row gets none)."""
    torch.manual_seed(0)
    table = torch.randn(13, 8).to(device).requires_grad_()
    h = torch.randn(30, 8).to(device).requires_grad_()
    pos = torch.randint(1, 13, (30,)).to(device)
    sampler = NegativeSampler("popularity", 12, torch.arange(13.0))
    neg = sampler.sample(30, 6, torch.Generator(device).manual_seed(1))
    neg[0, 0] = pos[0]
    neg[2, 4:] = pos[2]
    neg[1, :3] = neg[1, 3]
    log_q = sampler.log_q(neg)
    sampled_softmax_loss(h, table[pos], table[neg], pos, neg, log_q, temperature=0.5).backward()
    gh, gt = h.grad.clone(), table.grad.clone()
    h.grad = table.grad = None
    out = fused_sampled_cross_entropy(h / 0.5, table, pos, neg, log_q, route, chunk=chunk)
    (2.0 * out).backward()
    torch.testing.assert_close(h.grad, 2 * gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(table.grad, 2 * gt, rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(table.grad[0]) == 0 and torch.count_nonzero(gt[1:]) > 0


def test_frozen_sampled_routes_agree_under_autocast(device):
    """Under bf16 autocast every route reads the bf16 cache: losses and dh agree with fp32 to bf16 precision, and
    the gradient comes back in h's fp32."""
    torch.manual_seed(0)
    cache = torch.randn(41, 16).to(device)
    h = torch.randn(50, 16).to(device).requires_grad_()
    pos = torch.randint(1, 41, (50,)).to(device)
    neg = torch.randint(1, 41, (50, 7)).to(device)
    ref = fused_sampled_cross_entropy(h, cache, pos, neg, None, "gather")
    ref.backward()
    gh = h.grad.clone()
    for route in fused_ce.ROUTES:
        h.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = fused_sampled_cross_entropy(h, cache, pos, neg, None, route)
        out.backward()
        assert h.grad.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(h.grad, gh, rtol=5e-2, atol=2e-3)


@pytest.mark.parametrize("bf16", [False, True])
def test_frozen_sampled_default_route_follows_catalog_size(monkeypatch, bf16):
    """The dense route is taken while I <= ratio * (K + 1), the gather route beyond; the ratio is DENSE_MAX_RATIO in
    fp32 and DENSE_MAX_RATIO_HALF under bf16 autocast on the CPU (a GPU takes it only for a trainable table of
    d >= HALF_GPU_MIN_D)."""
    routes = []
    real = fused_ce._FusedSampledCE.apply
    monkeypatch.setattr(fused_ce._FusedSampledCE, "apply", lambda *a: routes.append(a[5] != "gather") or real(*a))
    h, pos = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    ratio = fused_ce.DENSE_MAX_RATIO_HALF if bf16 else fused_ce.DENSE_MAX_RATIO
    assert fused_ce.DENSE_MAX_RATIO_HALF > fused_ce.DENSE_MAX_RATIO  # so the two cases differ
    for n_items in (fused_ce.DENSE_MAX_RATIO * 5, ratio * 5, ratio * 5 + 1):
        cache = torch.randn(n_items + 1, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fused_sampled_cross_entropy(h, cache, pos, torch.randint(1, n_items + 1, (4, 4)), None)
    assert routes == [True, True, False]
    n_items, wide = fused_ce.DENSE_MAX_RATIO_HALF * 5, fused_ce.HALF_GPU_MIN_D  # only the device's type is read
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert fused_ce.dense_route(n_items, 5, cpu, True, table_grad=True, d=64)
    assert not fused_ce.dense_route(n_items, 5, cpu, False, table_grad=True, d=wide)
    assert fused_ce.dense_route(n_items, 5, gpu, True, table_grad=True, d=wide)  # a GPU: trainable and wide only
    assert not fused_ce.dense_route(n_items, 5, gpu, True, table_grad=True, d=wide - 1)
    assert not fused_ce.dense_route(n_items, 5, gpu, True, table_grad=False, d=wide)
    assert not fused_ce.dense_route(n_items, 5, gpu, False, table_grad=True, d=wide)


def test_default_bag_route_follows_device_table_and_catalog_size(monkeypatch):
    """On the CPU the dense route forms dh by bags for a frozen table always, for a trainable one while
    I >= BAG_MIN_RATIO * (K + 1); GPUs and the gather route never."""
    cpu, gpu, ratio = torch.device("cpu"), torch.device("cuda"), fused_ce.BAG_MIN_RATIO  # only the type is read
    assert fused_ce.bag_route(cpu, 3706, 1025, table_grad=False)
    assert fused_ce.bag_route(cpu, ratio * 129, 129, table_grad=True)
    assert not fused_ce.bag_route(cpu, ratio * 129 - 1, 129, table_grad=True)
    assert not fused_ce.bag_route(gpu, 3706, 1025, table_grad=False)
    bags = []
    real = fused_ce._FusedSampledCE.apply
    monkeypatch.setattr(fused_ce._FusedSampledCE, "apply", lambda *a: bags.append(a[5] == "bag") or real(*a))
    h, pos, n_items, k = torch.randn(4, 8), torch.tensor([1, 2, 3, 4]), ratio * 5 - 1, 4
    neg = torch.randint(1, n_items + 1, (4, k))
    assert n_items <= fused_ce.DENSE_MAX_RATIO * (k + 1)  # the default is a dense route for both tables
    for table in (torch.randn(n_items + 1, 8), torch.randn(n_items + 1, 8, requires_grad=True)):
        fused_sampled_cross_entropy(h, table, pos, neg, None)
    fused_sampled_cross_entropy(h, torch.randn(n_items + 1, 8), pos, neg, None, "gather")
    assert bags == [True, False, False]


def test_default_chunks_follow_the_device(monkeypatch):
    """Both CEs take CHUNK_BYTES of their widest per-row tensor per chunk on CPU; a GPU gets GPU_CHUNK_BYTES
    (fewer launches), never fewer than one row."""
    chunks = []
    for fn in (fused_ce._FusedLinearCE, fused_ce._FusedSampledCE):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, real=real: chunks.append(a[-1]) or real(*a))
    h, table = torch.randn(5, 8), torch.randn(1001, 8)
    fused_linear_cross_entropy(h, table, torch.arange(5))
    fused_sampled_cross_entropy(h, table, torch.arange(1, 6), torch.randint(1, 1001, (5, 3)), None, "gather")
    assert chunks == [fused_ce.CHUNK_BYTES // (4 * 1001), fused_ce.CHUNK_BYTES // (4 * 8 * 4)]
    gpu = torch.device("cuda")  # only the device's type is read: no GPU needed
    assert fused_ce.chunk_rows(4 * 1001, gpu) == fused_ce.GPU_CHUNK_BYTES // (4 * 1001) > chunks[0]
    assert fused_ce.chunk_rows(2 * fused_ce.GPU_CHUNK_BYTES, gpu) == 1


def test_chunks_that_score_the_whole_table_keep_a_minimum_of_rows(monkeypatch):
    """Past 65,536 items a CPU chunk of CHUNK_BYTES would hold under 64 rows, each re-reading the whole table for
    its products: the catalog CE and the sampled CE's dense routes keep TABLE_MIN_ROWS; the gather route, whose
    chunks read only their own candidates, and the memory estimate follow the same rule."""
    cpu = torch.device("cpu")
    big = 4 * 1_000_000  # fp32 logits of a million-item catalog: 4 rows per 16 MiB
    assert fused_ce.chunk_rows(big, cpu) == fused_ce.CHUNK_BYTES // big == 4
    assert fused_ce.chunk_rows(big, cpu, whole_table=True) == fused_ce.TABLE_MIN_ROWS
    assert fused_ce.chunk_rows(4 * 3706, cpu, whole_table=True) == fused_ce.CHUNK_BYTES // (4 * 3706)  # ML-1M: as before
    assert fused_ce.working_bytes(10_000, big, cpu, whole_table=True) == 3 * fused_ce.TABLE_MIN_ROWS * big
    chunks = []
    for fn in (fused_ce._FusedLinearCE, fused_ce._FusedSampledCE):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, real=real: chunks.append(a[-1]) or real(*a))
    n_items = 70_000  # CHUNK_BYTES // (4 * 70,000) = 59 rows
    h, table = torch.randn(100, 8), torch.randn(n_items + 1, 8)
    neg = torch.randint(1, n_items + 1, (100, 3))
    fused_linear_cross_entropy(h, table[1:], torch.arange(100))
    fused_sampled_cross_entropy(h, table, torch.arange(1, 101), neg, None, "matmul")
    fused_sampled_cross_entropy(h, table, torch.arange(1, 101), neg, None, "gather")
    assert chunks == [fused_ce.TABLE_MIN_ROWS, fused_ce.TABLE_MIN_ROWS, fused_ce.CHUNK_BYTES // (4 * 8 * 4)]


@pytest.mark.parametrize("embedder", ["id", "features"])
def test_sampled_objective_through_the_table_equals_per_candidate_vectors(tmp_path, embedder, monkeypatch):
    """The training objective's sampled loss read from the item table (ID always; features by the catalog route)
    gives the per-candidate path's loss and the same gradient for every parameter (real targets of padded windows
    taken by boolean mask here, by index in the step)."""
    import numpy as np

    from bfmscale.config import ModelConfig, TrainConfig
    from bfmscale.model import embedder as embedder_mod
    from bfmscale.model.bfm import BehaviorModel
    from bfmscale.model.catalog import build_catalog
    from bfmscale.train.data import build_sequences, gather, train_windows
    from bfmscale.train.step import Objective
    from synthetic import make_prepared

    ds = make_prepared(tmp_path, n_users=12, n_items=40, min_len=10, max_len=30)
    mc = ModelConfig(embedder=embedder, d_model=16, n_heads=2, d_ff=32, max_len=20, dropout=0.0, mlp_hidden=24)
    tc = TrainConfig(objective="sampled", n_negatives=9, sampler="popularity")
    catalog, seqs = build_catalog(ds, mc.text_buckets), build_sequences(ds)
    torch.manual_seed(0)
    model = BehaviorModel(mc, catalog, seqs.event_inputs)
    win = train_windows(seqs, mc.max_len)
    items, feats = gather(seqs, win.subset(np.arange(6)))
    assert (items[:, 1:] == 0).any()  # padded windows: the step's target rows must match the boolean-mask reference
    sampler = NegativeSampler("popularity", catalog.n_items, catalog.popularity)
    loss, _ = Objective(tc, sampler, torch.Generator().manual_seed(3)).loss(model, items, feats)
    loss.backward()
    routed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    monkeypatch.setattr(embedder_mod, "CATALOG_ROUTE_RATIO", float("inf"))  # features: per-lookup vectors again
    vecs = model.item_vectors(items)
    h = model.context(vecs[:, :-1], feats[:, :-1] if feats is not None else None)
    mask = items[:, 1:] != 0
    tgt = items[:, 1:][mask]
    neg = sampler.sample(len(tgt), tc.n_negatives, torch.Generator().manual_seed(3))
    ref = sampled_softmax_loss(h[mask], vecs[:, 1:][mask], model.item_vectors(neg), tgt, neg, sampler.log_q(neg))
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert len(routed) > 5
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(routed[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_confidently_wrong_targets_exact_then_saturating():
    """CE read as -log p[target] stays exact for tiny p (a 60-nat loss) and saturates at -log(fp32 tiny) only
    where p underflows (a 200-nat loss); the gradients are exact in both cases."""
    logits = torch.zeros(2, 5)
    logits[0, 1], logits[1, 1] = 60.0, 200.0  # target 0 of each row is that far below the top logit
    e = torch.eye(5, requires_grad=True)
    h = logits.clone().requires_grad_()
    y = torch.zeros(2, dtype=torch.long)
    out = fused_linear_cross_entropy(h, e, y)
    out.backward()
    per_target = F.cross_entropy(logits, y, reduction="none")
    tiny_cap = -torch.log(torch.tensor(torch.finfo(torch.float32).tiny))
    torch.testing.assert_close(out, (per_target[0] + tiny_cap) / 2, rtol=1e-6, atol=1e-6)
    hr = logits.clone().requires_grad_()
    F.cross_entropy(hr, y).backward()
    torch.testing.assert_close(h.grad, hr.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_uniform_log_q_is_one_value_equal_to_per_code(chunk):
    """The uniform sampler's log q is one value, -log I, expanded to the codes' shape (no gather); chunked or not,
    the fused and plain sampled CEs give what an explicit [N, K] log q gives."""
    torch.manual_seed(0)
    table, h = torch.randn(13, 8), torch.randn(30, 8)
    pos = torch.randint(1, 13, (30,))
    sampler = NegativeSampler("uniform", 12)
    neg = sampler.sample(30, 6, torch.Generator().manual_seed(1))
    neg[0, 0] = pos[0]  # an accidental hit
    log_q = sampler.log_q(neg)
    assert log_q.shape == neg.shape and log_q.stride() == (0, 0)  # one stored value
    assert log_q[0, 0].item() == pytest.approx(-math.log(12))
    per_code = torch.full(neg.shape, -math.log(12))
    ref = sampled_softmax_loss(h, table[pos], table[neg], pos, neg, per_code)
    torch.testing.assert_close(sampled_softmax_loss(h, table[pos], table[neg], pos, neg, log_q), ref)
    for route in fused_ce.ROUTES:
        out = fused_sampled_cross_entropy(h, table, pos, neg, log_q, route, chunk=chunk)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_sampled_ce_refuses_an_unknown_route():
    """A route outside ROUTES is named in a one-line error instead of silently taking another."""
    h, table = torch.randn(3, 4), torch.randn(11, 4)
    with pytest.raises(ValueError, match="route 'dense': expected one of gather, matmul, bag"):
        fused_sampled_cross_entropy(h, table, torch.tensor([1, 2, 3]), torch.randint(1, 11, (3, 2)), None, "dense")
