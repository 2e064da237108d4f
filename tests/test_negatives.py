"""Objectives: accidental-hit masking, logQ correction, in-batch candidates, sampler distributions, keyed draws."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bfmscale.train import negatives
from bfmscale.train.fused_ce import HIT_MASK
from bfmscale.train.negatives import (DRAW_BLOCKS, NegativeSampler, alias_table, catalog_inbatch_loss,
                                      catalog_sampled_loss, full_softmax_loss, inbatch_logits, inbatch_loss,
                                      keyed_uniforms, sampled_logits, sampled_softmax_loss)


def test_accidental_hits_are_masked():
    h = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[2.0, 0.0]])
    neg = torch.tensor([[[2.0, 0.0], [0.5, 0.0]]])  # first negative IS the positive item
    logits = sampled_logits(h, pos, neg, torch.tensor([7]), torch.tensor([[7, 3]]), None)
    assert logits[0, 1] == HIT_MASK
    assert logits[0, 2] == pytest.approx(0.5)
    loss = sampled_softmax_loss(h, pos, neg, torch.tensor([7]), torch.tensor([[7, 3]]), None)
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + math.exp(0.5))), rel=1e-6)
    assert torch.isfinite(loss)


def test_logq_correction_is_minus_log_k_q():
    h = torch.tensor([[1.0]])
    pos, neg = torch.tensor([[1.0]]), torch.tensor([[[2.0], [3.0]]])
    log_q = torch.log(torch.tensor([[0.1, 0.4]]))
    plain = sampled_logits(h, pos, neg, torch.tensor([1]), torch.tensor([[2, 3]]), None)
    corr = sampled_logits(h, pos, neg, torch.tensor([1]), torch.tensor([[2, 3]]), log_q)
    assert corr[0, 0] == plain[0, 0]
    torch.testing.assert_close(corr[0, 1:], plain[0, 1:] - (math.log(2) + log_q[0]))


def test_logq_sampled_softmax_approaches_full_softmax():
    """With logQ, the sampled loss (many negatives, popularity sampler) estimates the full softmax CE; without, it is
    far off. This is the property the correction exists for."""
    torch.manual_seed(0)
    n_items, d = 200, 8
    catalog = torch.randn(n_items, d)
    h = torch.randn(64, d)
    targets = torch.randint(1, n_items + 1, (64,))
    full = full_softmax_loss(h, catalog, targets).item()
    pop = torch.cat([torch.zeros(1), torch.rand(n_items) * 50])
    sampler = NegativeSampler("popularity", n_items, pop)
    gen = torch.Generator().manual_seed(1)
    neg = sampler.sample(64, 4000, gen)
    est = sampled_softmax_loss(h, catalog[targets - 1], catalog[neg - 1], targets, neg, sampler.log_q(neg)).item()
    raw = sampled_softmax_loss(h, catalog[targets - 1], catalog[neg - 1], targets, neg, None).item()
    assert abs(est - full) < 0.1 * full
    assert abs(raw - full) > 3 * abs(est - full)


def test_samplers_distributions():
    gen = torch.Generator().manual_seed(0)
    uni = NegativeSampler("uniform", 10)
    s = uni.sample(1000, 10, gen)
    assert s.min() >= 1 and s.max() <= 10
    pop = torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 999])  # item 10 dominates (counts + 1 smoothing)
    ps = NegativeSampler("popularity", 10, pop)
    draws = ps.sample(2000, 5, gen)
    assert (draws == 10).float().mean() > 0.95
    assert ps.log_q(torch.tensor([10])).exp().item() == pytest.approx(1000 / 1009, rel=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_cpu_draw_is_the_same_on_any_number_of_threads(kind, monkeypatch):
    """A CPU draw is DRAW_BLOCKS row blocks from generators seeded by the caller's: on two threads, on one, or
    without a pool, the same codes; the blocks are not copies of one another, and the caller's generator moves on."""
    sampler = NegativeSampler(kind, 50, torch.arange(51.0))
    pools = []

    class CountingPool(negatives.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(negatives, "ThreadPoolExecutor", CountingPool)
    monkeypatch.setattr(negatives, "PARALLEL_DRAW_MIN", 1)
    draw = lambda: sampler.sample(40, 300, torch.Generator().manual_seed(5))  # noqa: E731
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = draw()
        torch.set_num_threads(1)
        one = draw()
    finally:
        torch.set_num_threads(threads)
    assert pools == [2]  # the pool ran on two threads only
    monkeypatch.setattr(negatives, "PARALLEL_DRAW_MIN", 2**62)
    assert torch.equal(two, one) and torch.equal(two, draw())
    assert two.min() >= 1 and two.max() <= 50
    rows = 40 // DRAW_BLOCKS
    assert not torch.equal(two[:rows], two[rows : 2 * rows])
    gen = torch.Generator().manual_seed(5)
    assert not torch.equal(sampler.sample(40, 300, gen), sampler.sample(40, 300, gen))


def test_uniform_cpu_draw_is_uniform_in_every_block(monkeypatch):
    """Each block's codes are uniform over 1..I: every item's frequency within 5 standard errors of 1/I."""
    monkeypatch.setattr(negatives, "PARALLEL_DRAW_MIN", 1)
    draws = NegativeSampler("uniform", 10).sample(DRAW_BLOCKS, 20_000, torch.Generator().manual_seed(0))
    freq = torch.stack([torch.bincount(row, minlength=11)[1:] for row in draws]).double() / draws.shape[1]
    assert (freq - 0.1).abs().max() < 5 * math.sqrt(0.1 * 0.9 / draws.shape[1])


@pytest.mark.parametrize("probs", [[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.05, 0.05], [1e-9, 1 - 2e-9, 1e-9]])
def test_alias_table_encodes_the_distribution_exactly(probs):
    """An outcome's probability under the table, (accept[j] + sum of 1 - accept[i] over buckets aliased to j) / n,
    is the distribution's, to float64 rounding (1e-9 included)."""
    p = torch.tensor(probs, dtype=torch.float64)
    accept, alias = alias_table(p)
    assert ((accept >= 0) & (accept <= 1)).all()
    implied = accept.clone().index_add_(0, alias, 1 - accept) / len(p)
    torch.testing.assert_close(implied, p, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("keyed", [False, True])
def test_popularity_draw_frequencies_follow_q(device, keyed):
    """Alias-method popularity draws, from a generator or keyed, on its device: each item's frequency within 5
    standard errors of q = (count + 1) / sum, over probabilities from 0.1% to 86%; log q is their log."""
    pop = torch.tensor([0.0, 0, 2, 8, 26, 80, 728])  # weights 1, 3, 9, 27, 81, 729
    sampler = NegativeSampler("popularity", 6, pop)
    if keyed:
        draws = sampler.sample_keyed(torch.arange(40, device=device) * 1_000_003, 10_000)
    else:
        draws = sampler.sample(40, 10_000, torch.Generator(device).manual_seed(0))
    assert draws.device.type == device.type and draws.shape == (40, 10_000)
    q = (pop[1:].double() + 1) / (pop[1:].double() + 1).sum()
    freq = torch.bincount(draws.view(-1).cpu(), minlength=7)[1:].double() / draws.numel()
    assert ((freq - q).abs() < 5 * (q * (1 - q) / draws.numel()).sqrt()).all(), (freq, q)
    torch.testing.assert_close(sampler.log_q(torch.arange(1, 7).to(device)).double().cpu(), q.log(), rtol=1e-6,
                               atol=1e-6)


def test_inbatch_uses_distinct_targets_and_logq():
    h = torch.eye(3)
    pos = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    codes = torch.tensor([4, 2, 4])
    log_q = torch.log(torch.tensor([1.0, 0.1, 0.2, 0.3, 0.4]))
    logits, label = inbatch_logits(h, pos, codes, log_q)
    assert logits.shape == (3, 2)  # two distinct items: 2 and 4
    assert label.tolist() == [1, 0, 1]
    expected = h @ torch.stack([pos[1], pos[0]]).T - log_q[torch.tensor([2, 4])]
    torch.testing.assert_close(logits, expected)
    F.cross_entropy(logits, label)  # a valid distribution over the candidates


def test_sampler_draws_on_the_generators_device_and_copies_tables_once():
    pop = torch.tensor([0.0, 5, 1, 0, 3])
    sampler = NegativeSampler("popularity", 4, pop)
    draws = sampler.sample(3, 7, torch.Generator(torch.device("cpu")).manual_seed(0))
    assert draws.device.type == "cpu" and draws.shape == (3, 7)
    meta = torch.device("meta")  # stands in for a GPU: the tables are copied there once and reused
    first = sampler.on("log_probs", meta)
    assert first.device == meta and sampler.on("log_probs", meta) is first
    assert sampler.on("log_probs", torch.device("cpu")) is sampler.log_probs
    assert sampler.log_q(torch.tensor([1, 4])).device.type == "cpu"


def _splitmix64(n: int, skip: int = 0) -> list[int]:
    """Outputs skip + 1 .. skip + n of SplitMix64 seeded with 0, in Python's unbounded integers (the published
    algorithm: the state advances by the golden-ratio increment, each output is its mix)."""
    mask, out = 2**64 - 1, []
    state = skip * 0x9E3779B97F4A7C15 & mask
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_keyed_uniforms_are_splitmix64_outputs(device):
    """Row key, column j holds output key * k + j + 1 of SplitMix64 (its top 53 bits over 2**53), in int64 tensor ops
    on any device: long rows (vectorized loops) and a key whose counters pass 2**32 (wrapping products)."""
    k = 70
    ref = _splitmix64(3 * k)
    u = keyed_uniforms(torch.tensor([2, 0, 1], device=device), k).cpu()
    assert u.dtype == torch.float64
    assert (u * 2.0**53).long().flatten().tolist() == [x >> 11 for x in ref[2 * k :] + ref[:k] + ref[k : 2 * k]]
    big = 2**32 // k + 5
    u = keyed_uniforms(torch.tensor([big], device=device), k).cpu()
    assert (u * 2.0**53).long().flatten().tolist() == [x >> 11 for x in _splitmix64(k, skip=big * k)]


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_keyed_draws_depend_on_each_rows_key_alone(kind):
    """A row's negatives are the same whatever rows come with it (any batch, order or subset); other keys differ;
    codes stay in 1..I and a uniform sampler covers every item evenly."""
    sampler = NegativeSampler(kind, 10, torch.arange(11.0))
    keys = torch.tensor([5, 17, 3, 900, 41])
    draws = sampler.sample_keyed(keys, 64)
    for i, key in enumerate(keys.tolist()):
        assert torch.equal(sampler.sample_keyed(torch.tensor([key]), 64)[0], draws[i])
    assert torch.equal(sampler.sample_keyed(keys.flip(0), 64), draws.flip(0))
    assert len({tuple(r) for r in draws.tolist()}) == len(keys)
    assert draws.min() >= 1 and draws.max() <= 10
    if kind == "uniform":
        many = sampler.sample_keyed(torch.arange(20), 10_000).view(-1)
        freq = torch.bincount(many, minlength=11)[1:].double() / many.numel()
        assert (freq - 0.1).abs().max() < 5 * math.sqrt(0.1 * 0.9 / many.numel())


@pytest.mark.parametrize("logq", [False, True])
def test_losses_from_catalog_logits_equal_the_training_objectives(logq):
    """Evaluation's per-row sampled and in-batch losses, read from [N, I] catalog logits, equal the training
    objectives computed from h and candidate vectors (row by row; their means are the training losses), with
    accidental hits masked, repeated targets and logQ."""
    torch.manual_seed(0)
    n_items, d, temp = 30, 8, 0.7
    h, catalog = torch.randn(12, d), torch.randn(n_items, d)
    targets = torch.tensor([3, 7, 3, 1, 30, 7, 12, 5, 3, 9, 22, 1])
    sampler = NegativeSampler("popularity", n_items, torch.arange(n_items + 1.0))
    neg = sampler.sample_keyed(torch.arange(12), 40)
    neg[0, :3] = targets[0]  # accidental hits
    scores = (h / temp) @ catalog.T
    neg_log_q = sampler.log_q(neg) if logq else None
    per_row = catalog_sampled_loss(scores, targets, neg, neg_log_q)
    one = [slice(i, i + 1) for i in range(12)]
    rows = [sampled_softmax_loss(h[r], catalog[targets[r] - 1], catalog[neg[r] - 1], targets[r], neg[r],
                                 None if neg_log_q is None else neg_log_q[r], temp) for r in one]
    torch.testing.assert_close(per_row, torch.stack(rows))
    log_q = sampler.log_probs if logq else None
    per_row = catalog_inbatch_loss(scores, targets, log_q)
    assert per_row.shape == (12,)
    torch.testing.assert_close(per_row.mean(), inbatch_loss(h, catalog[targets - 1], targets, log_q, temp))
    logits, label = inbatch_logits(h, catalog[targets - 1], targets, log_q, temp)
    torch.testing.assert_close(per_row, F.cross_entropy(logits, label, reduction="none"))
