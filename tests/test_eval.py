"""Full-catalog ranking: pessimistic ties, metric formulas, eval-batch-size independence, seen-item exclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.eval.ranking import evaluate, evaluate_splits, pessimistic_ranks, ranking_metrics
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import build_catalog
from bfmscale.train.data import build_sequences
from bfmscale.train.negatives import NegativeSampler
from bfmscale.train.step import Objective
from conftest import force_score_blocks
from synthetic import make_prepared


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    # target column 0 scores 0.5: one item higher, two tied -> rank 4 (not 2)
    assert pessimistic_ranks(scores, torch.tensor([0])).item() == 4
    assert pessimistic_ranks(scores, torch.tensor([1])).item() == 1
    assert pessimistic_ranks(torch.zeros(1, 7), torch.tensor([3])).item() == 7  # all tied -> last


def test_metric_formulas_by_hand():
    m = ranking_metrics(np.array([1, 3, 11]), ks=(1, 10))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = make_prepared(tmp_path_factory.mktemp("eval"), n_users=30, n_items=40)
    mc = ModelConfig(embedder="features", d_model=32, n_heads=4, max_len=8, dropout=0.0)
    torch.manual_seed(0)
    seqs = build_sequences(ds)
    model = BehaviorModel(mc, build_catalog(ds, mc.text_buckets), seqs.event_inputs)
    return model, seqs


def test_results_independent_of_eval_batch_size(setup):
    model, seqs = setup
    a = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=1)
    b = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=7)
    c = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=1000)
    assert (a.per_user["rank"].to_numpy() == b.per_user["rank"].to_numpy()).all()
    assert (a.per_user["rank"].to_numpy() == c.per_user["rank"].to_numpy()).all()
    np.testing.assert_allclose(a.per_user["ce"], c.per_user["ce"], rtol=1e-5)
    assert a.metrics["ndcg@10"] == pytest.approx(c.metrics["ndcg@10"])


def test_scores_in_blocks_of_table_rows_rank_the_same(setup, monkeypatch):
    """Ranking through fp32 CPU scores taken in blocks of table rows (small blocks forced) gives the same ranks and
    CE as one product."""
    model, seqs = setup
    a = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=16)
    force_score_blocks(monkeypatch, 3)
    b = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=16)
    assert (a.per_user["rank"].to_numpy() == b.per_user["rank"].to_numpy()).all()
    np.testing.assert_allclose(a.per_user["ce"], b.per_user["ce"], rtol=1e-6)


def test_batches_go_by_window_length_and_rows_keep_the_users_order(tmp_path, monkeypatch):
    """Users are batched shortest window first (less padding); the rows come back in the order asked for, with the
    ranks of one-user batches."""
    from bfmscale.eval import ranking

    ds = make_prepared(tmp_path, n_users=30, n_items=40, min_len=4, max_len=14)
    seqs = build_sequences(ds)
    torch.manual_seed(0)
    model = BehaviorModel(ModelConfig(embedder="id", d_model=16, n_heads=2, max_len=8, dropout=0.0),
                          build_catalog(ds, 64))
    widths = []
    real = ranking.gather
    monkeypatch.setattr(ranking, "gather", lambda s, w: widths.append(int(w.lengths.max())) or real(s, w))
    users = np.random.default_rng(0).permutation(seqs.n_users)
    res = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=4, users=users)
    assert res.per_user["user"].tolist() == (users + 1).tolist()
    assert widths == sorted(widths) and widths[0] < widths[-1]
    one = evaluate(model, seqs, "test", 8, torch.device("cpu"), batch_size=1, users=users)
    assert (one.per_user["rank"].to_numpy() == res.per_user["rank"].to_numpy()).all()


def test_targets_are_the_users_last_events(setup):
    model, seqs = setup
    res = evaluate(model, seqs, "valid", 8, torch.device("cpu"))
    last = [int(seqs.items[seqs.offsets[u + 1] - 2]) for u in range(seqs.n_users)]
    assert res.per_user["target"].tolist() == last
    assert len(res.per_user) == seqs.n_users


def test_exclude_seen_never_worsens_rank_and_keeps_target(setup):
    model, seqs = setup
    all_items = evaluate(model, seqs, "test", 8, torch.device("cpu"))
    excl = evaluate(model, seqs, "test", 8, torch.device("cpu"), exclude_seen=True)
    r_all, r_ex = all_items.per_user["rank"].to_numpy(), excl.per_user["rank"].to_numpy()
    assert (r_ex <= r_all).all() and (r_ex < r_all).any()
    # with every history item removed, the rank is at most the catalog size minus the distinct seen items (+1)
    for u in range(seqs.n_users):
        hist = set(seqs.items[seqs.offsets[u] : seqs.offsets[u + 1] - 1].tolist())
        target = int(seqs.items[seqs.offsets[u + 1] - 1])
        assert r_ex[u] <= 40 - len(hist - {target})


@pytest.fixture(scope="module")
def shared_setup(tmp_path_factory):
    """Users of whom some share one pass for validation and test (history fits the window) and some do not; a
    2-layer model, so that sharing is exact through more than the final block."""
    ds = make_prepared(tmp_path_factory.mktemp("shared"), n_users=40, n_items=40, min_len=4, max_len=14)
    seqs = build_sequences(ds)
    torch.manual_seed(0)
    catalog = build_catalog(ds, 64)
    model = BehaviorModel(ModelConfig(embedder="id", d_model=16, n_heads=2, n_layers=2, max_len=8, dropout=0.0),
                          catalog)
    return model, seqs, catalog


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_validation_and_test_in_shared_passes_equal_separate_ones(shared_setup, monkeypatch, exclude_seen):
    """Users whose whole history fits the window are read once for both splits (validation from the position before
    the last); every rank, CE and objective equals the one-split evaluations, in the order of `users`."""
    from bfmscale.eval import ranking

    model, seqs, _ = shared_setup
    fits = seqs.lengths - 1 <= 8  # test window starts at the first event
    assert fits.any() and (~fits).any()
    users = np.random.default_rng(1).permutation(seqs.n_users)
    objective = lambda scores, tgt, keys: scores.amax(1) - scores.mean(1)  # noqa: E731  a per-row function
    kw = dict(exclude_seen=exclude_seen, users=users, objective=objective, batch_size=5)
    rows = []
    real = ranking.gather
    monkeypatch.setattr(ranking, "gather", lambda s, w: rows.append(len(w)) or real(s, w))
    both = evaluate_splits(model, seqs, ("valid", "test"), 8, torch.device("cpu"), **kw)
    assert sum(rows) == seqs.n_users + (~fits).sum()  # one pass for those that fit, two for the others
    for which in ("valid", "test"):
        one = evaluate(model, seqs, which, 8, torch.device("cpu"), **kw)
        a, b = both[which].per_user, one.per_user
        assert a["user"].tolist() == b["user"].tolist() == (users + 1).tolist()
        assert a["target"].tolist() == b["target"].tolist() and a["history"].tolist() == b["history"].tolist()
        assert (a["rank"].to_numpy() == b["rank"].to_numpy()).all()
        np.testing.assert_allclose(a["ce"], b["ce"], rtol=1e-5)
        np.testing.assert_allclose(a["objective"], b["objective"], rtol=1e-5, atol=1e-6)
        assert both[which].metrics == pytest.approx(one.metrics)


@pytest.mark.parametrize("splits", [(), ("train",), ("test", "test")])
def test_unknown_or_repeated_splits_are_refused(setup, splits):
    model, seqs = setup
    with pytest.raises(ValueError, match="expected 'valid' and/or 'test'"):
        evaluate_splits(model, seqs, splits, 8, torch.device("cpu"))


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_objective_is_a_function_of_the_user_alone(shared_setup, sampler):
    """The sampled objective's fixed negatives go with the target, not the row's place: a user's value is the same
    at any batch size, in a shared or a one-split pass, among any users evaluated, and for any training seed."""
    model, seqs, catalog = shared_setup
    tc = TrainConfig(objective="sampled", n_negatives=16, sampler=sampler)

    def objective(seed: int):
        return Objective(tc, NegativeSampler(sampler, catalog.n_items, catalog.popularity),
                         torch.Generator().manual_seed(seed)).eval_loss()

    cpu = torch.device("cpu")
    users = np.random.default_rng(2).permutation(seqs.n_users)
    ref = evaluate_splits(model, seqs, ("valid", "test"), 8, cpu, batch_size=1, users=users, objective=objective(0))
    for which in ("valid", "test"):
        want = ref[which].per_user.set_index("user")["objective"]
        assert want.std() > 0
        for kw in (dict(batch_size=7), dict(batch_size=1000, users=users[::3])):
            got = evaluate(model, seqs, which, 8, cpu, objective=objective(5), **kw).per_user.set_index("user")
            np.testing.assert_allclose(got["objective"], want[got.index], rtol=1e-5)
    shared = evaluate_splits(model, seqs, ("valid", "test"), 8, cpu, batch_size=64, objective=objective(0))
    np.testing.assert_allclose(shared["valid"].per_user["objective"],
                               ref["valid"].per_user.set_index("user")["objective"][np.arange(1, seqs.n_users + 1)],
                               rtol=1e-5)


def test_inbatch_objective_sees_one_splits_rows_per_call(shared_setup):
    """In a shared pass the in-batch objective is called per query column: each call's candidates are at most a
    batch of one split's targets, as in a one-split pass (not twice as many, mixing both splits)."""
    model, seqs, catalog = shared_setup
    loss = Objective(TrainConfig(objective="inbatch"), NegativeSampler("uniform", catalog.n_items),
                     torch.Generator().manual_seed(0)).eval_loss()
    calls = []

    def recording(scores, targets, keys):
        calls.append(keys.numpy().copy())
        return loss(scores, targets, keys)

    res = evaluate_splits(model, seqs, ("valid", "test"), 8, torch.device("cpu"), batch_size=6, objective=recording)
    valid_idx = set((seqs.offsets[1:] - 2).tolist())  # each user's validation target event
    assert all(len(k) <= 6 and len({int(i) in valid_idx for i in k}) == 1 for k in calls)
    assert sum(len(k) for k in calls) == 2 * seqs.n_users
    assert np.isfinite(res["valid"].per_user["objective"]).all()


def test_batches_on_a_large_catalog_hold_under_the_score_bytes(setup, monkeypatch):
    """Users per batch shrink so a batch's [rows, I] scores stay under EVAL_SCORE_BYTES (forced small here: 6 query
    rows over 40 items, i.e. 3 users of a shared valid-and-test pass or 6 of a one-split pass); results unchanged."""
    from bfmscale.eval import ranking

    model, seqs = setup
    ref = evaluate_splits(model, seqs, ("valid", "test"), 8, torch.device("cpu"))
    rows = []  # query rows of each batch: the positions handed to the final block
    real = model.context
    monkeypatch.setattr(model, "context", lambda *a: rows.append(a[2].numel()) or real(*a))
    monkeypatch.setattr(ranking, "EVAL_SCORE_BYTES", 6 * 4 * 40)
    small = evaluate_splits(model, seqs, ("valid", "test"), 8, torch.device("cpu"))
    assert max(rows) == 6 and sum(rows) == 2 * seqs.n_users  # each user: one validation and one test query
    for split in ("valid", "test"):
        assert (small[split].per_user["rank"].to_numpy() == ref[split].per_user["rank"].to_numpy()).all()
        assert small[split].metrics["ndcg@10"] == pytest.approx(ref[split].metrics["ndcg@10"])
