"""Full-catalog ranking: HR@K, NDCG@K, MRR, full-softmax CE, per user.

rank = 1 + #items scoring strictly higher + #other items tied with the target (pessimistic ties).
By default every item is ranked (`exclude_seen=False`); with `exclude_seen=True` the items of the user's history
(except the target itself) are removed from the ranking. The full-softmax CE is always over the whole catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bfmscale.model.bfm import BehaviorModel
from bfmscale.train.data import Sequences, Windows, eval_windows, gather
from bfmscale.train.fused_ce import table_scores

KS = (1, 5, 10, 20, 50)
# Bytes of one batch's [rows, I] fp32 scores that evaluation aims under: it caps the users per batch on large
# catalogs, where each score tensor has temporaries of its size (the CE's exp, the ranking's compares). Ranking 1,024
# queries over 1M items (d=64, Xeon): 512 rows per batch 6.7 GiB peak RSS and 62-66 rows/s, 64 rows 1.3 GiB and 78-83
# rows/s (bench/logs/2026-11-28-xeon-amx-eval-large-catalog-batch.log). Binds past 131,072 items at 256 users
# with two queries each; ML-1M and ML-20M batches are unchanged.
EVAL_SCORE_BYTES = 256 * 2**20


def pessimistic_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) of each row's target column among all columns; ties count against the target."""
    t = scores.gather(1, targets.unsqueeze(1))
    higher = (scores > t).sum(1)
    ties = (scores == t).sum(1) - 1
    return 1 + higher + ties


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR@K, NDCG@K (one relevant item: 1/log2(rank+1) if rank <= K) and MRR averaged over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


@dataclass
class EvalResult:
    """Averaged metrics and the per-user rows they come from (user row, target, rank, ce, objective loss)."""

    metrics: dict[str, float]
    per_user: pd.DataFrame


@dataclass
class QueryGroup:
    """Windows read in one pass each, with Q query positions per window and the split each query scores."""

    users: np.ndarray  # [R] 0-based user rows
    windows: Windows  # [R]
    pos: np.ndarray  # [R, Q] positions in the window whose next event is a target
    split: tuple[int, ...]  # [Q] the split (index into those asked for) that each query column scores


def query_groups(seqs: Sequences, max_len: int, splits: tuple[str, ...], users: np.ndarray) -> list[QueryGroup]:
    """One query per (user, split), grouped into passes. With both 'valid' and 'test', a user whose test window
    starts at the first event (history <= max_len) gets one pass over it: its valid window is that window minus its
    last event, so under causal attention the position before the last gives the validation query exactly."""
    if not splits or len(set(splits)) != len(splits) or not set(splits) <= {"valid", "test"}:
        raise ValueError(f"evaluation splits {splits!r}: expected 'valid' and/or 'test', each once")
    wins = {s: eval_windows(seqs, max_len, s)[0] for s in splits}
    shared = np.zeros(len(users), dtype=bool)
    groups = []
    if "valid" in wins and "test" in wins:
        shared = wins["valid"].starts[users] == wins["test"].starts[users]
        tw = wins["test"].subset(users[shared])
        groups.append(QueryGroup(users[shared], tw, np.stack([tw.lengths - 2, tw.lengths - 1], 1),
                                 (splits.index("valid"), splits.index("test"))))
    rest = users[~shared]
    for i, s in enumerate(splits):
        w = wins[s].subset(rest)
        groups.append(QueryGroup(rest, w, (w.lengths - 1)[:, None], (i,)))
    return [g for g in groups if len(g.users)]


# objective(scores [N, I] catalog logits, targets [N] codes, keys [N] target event indices, all on one device)
# -> per-row loss [N]
RowLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_query(objective: RowLoss, scores: torch.Tensor, targets: torch.Tensor, target_idx: np.ndarray,
              q: int) -> torch.Tensor:
    """The objective's per-row loss on a batch's [R * Q] query rows (row-major), called once per query column so
    that each call sees one split's rows, as in a pass without sharing (in-batch candidates stay one split's)."""
    keys = torch.from_numpy(target_idx).to(scores.device)
    cols = [objective(scores[i::q], targets[i::q], keys[i::q]) for i in range(q)]
    return torch.stack(cols, 1).ravel()


@torch.no_grad()
def evaluate_splits(model: BehaviorModel, seqs: Sequences, splits: tuple[str, ...], max_len: int,
                    device: torch.device, batch_size: int = 256, exclude_seen: bool = False,
                    users: np.ndarray | None = None, objective: RowLoss | None = None,
                    autocast_dtype: torch.dtype | None = None) -> dict[str, EvalResult]:
    """Rank every item for each user's target in each of `splits` ('valid', 'test'); `objective` gives the
    training objective's own per-row loss (`RowLoss`). Passes are shared where exact (`query_groups`) and batched by
    window length (at T=200 on ML-1M, 54% of the positions of batches in user order are real, 97% sorted), at most
    `batch_size` users and about EVAL_SCORE_BYTES of scores per batch; each split's rows come back in `users` order."""
    was_training = model.training
    model.eval()
    users = np.arange(seqs.n_users) if users is None else np.asarray(users)
    catalog = model.catalog_vectors().float()
    temp = model.cfg.temperature
    rows = []
    for g in query_groups(seqs, max_len, splits, users):
        by_length = np.argsort(g.windows.lengths, kind="stable")
        users_per_batch = min(batch_size, max(1, EVAL_SCORE_BYTES // (4 * catalog.shape[0] * g.pos.shape[1])))
        for c in range(0, len(g.users), users_per_batch):
            b = by_length[c : c + users_per_batch]
            u, win, pos = g.users[b], g.windows.subset(b), g.pos[b]
            items, feats = gather(seqs, win)
            items = items.to(device)
            feats = feats.to(device) if feats is not None else None
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                h = model.context(model.item_vectors(items), feats, torch.from_numpy(pos).to(device))
            h = h.float().reshape(-1, h.shape[-1])  # [R * Q, d]: row by row, each row's Q queries in order
            target_idx = (win.starts[:, None] + pos + 1).ravel()
            u = np.repeat(u, pos.shape[1])
            tgt = seqs.items[torch.from_numpy(target_idx)].to(device)
            scores = table_scores(h / temp if temp != 1.0 else h, catalog)
            ce = torch.logsumexp(scores, 1) - scores.gather(1, (tgt - 1).unsqueeze(1)).squeeze(1)
            obj = ce if objective is None else per_query(objective, scores, tgt, target_idx, pos.shape[1])
            if exclude_seen:
                scores = mask_seen(scores, seqs, u, target_idx, tgt)
            ranks = pessimistic_ranks(scores, tgt - 1)
            rows.append(pd.DataFrame({"user": u + 1, "target": tgt.cpu().numpy(), "rank": ranks.cpu().numpy(),
                                      "ce": ce.cpu().numpy(), "objective": obj.float().cpu().numpy(),
                                      "history": target_idx - seqs.offsets[u], "split": np.tile(g.split, len(b))}))
    model.train(was_training)
    order = np.empty(seqs.n_users, dtype=np.int64)
    order[users] = np.arange(len(users))
    all_rows = pd.concat(rows, ignore_index=True)
    out = {}
    for i, s in enumerate(splits):
        part = all_rows[all_rows["split"] == i].drop(columns="split")
        per_user = part.iloc[np.argsort(order[part["user"].to_numpy() - 1])].reset_index(drop=True)
        metrics = ranking_metrics(per_user["rank"].to_numpy())
        metrics["ce"] = float(per_user["ce"].mean())
        metrics["objective"] = float(per_user["objective"].mean())
        out[s] = EvalResult(metrics=metrics, per_user=per_user)
    return out


def evaluate(model: BehaviorModel, seqs: Sequences, which: str, max_len: int, device: torch.device,
             **kwargs) -> EvalResult:
    """`evaluate_splits` for one split ('valid' or 'test')."""
    return evaluate_splits(model, seqs, (which,), max_len, device, **kwargs)[which]


def mask_seen(scores: torch.Tensor, seqs: Sequences, users: np.ndarray, ends: np.ndarray,
              targets: torch.Tensor) -> torch.Tensor:
    """Set the scores of every item in each user's history before the target to -inf (never the target itself)."""
    rows, cols = [], []
    for r, u in enumerate(users):
        hist = seqs.items[seqs.offsets[u] : ends[r]]
        rows.append(torch.full_like(hist, r))
        cols.append(hist - 1)
    rows_t, cols_t = torch.cat(rows).to(scores.device), torch.cat(cols).to(scores.device)
    keep = cols_t != (targets - 1)[rows_t]
    out = scores.clone()
    out[rows_t[keep], cols_t[keep]] = float("-inf")
    return out
