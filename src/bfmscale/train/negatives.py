"""Objectives: full-catalog softmax, sampled softmax (uniform / popularity, logQ, accidental hits masked), in-batch.

Every position predicts its next event; h [N, d] are the context vectors of the N real target positions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from bfmscale.train.fused_ce import correct_sampled_logits, fused_linear_cross_entropy, fused_sampled_cross_entropy

# CPU negatives: row blocks with their own generators (torch's CPU generator is serial: 13 M codes took 70-100 ms),
# a fixed count so that the codes do not depend on the thread count; threads only for draws this large.
DRAW_BLOCKS = 8
PARALLEL_DRAW_MIN = 2**20


# SplitMix64's increment and finalizer multipliers (Steele, Lea & Flood, OOPSLA 2014) as int64 bit patterns: torch
# has no uint64 arithmetic, and int64 products wrap modulo 2**64 alike on CPU and CUDA.
_GAMMA, _MIX1, _MIX2 = (c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def keyed_uniforms(keys: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] float64 uniforms in [0, 1), each a function of (key, column) alone: output number key * k + column + 1
    of SplitMix64 seeded with 0 (keys >= 0), in vectorized int64 ops, so any device gives the same values."""
    z = (keys.long().unsqueeze(1) * k + torch.arange(1, k + 1, device=keys.device)) * _GAMMA
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    z = z ^ _shr(z, 31)
    return _shr(z, 11).double() * 2.0**-53


def _scaled(h: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the context vectors, not the [N, candidates] logits, by the temperature (same logits, far cheaper)."""
    return h if temperature == 1.0 else h / temperature


def alias_table(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Walker's alias table (Vose's construction) of a distribution over n outcomes: a uniform bucket i keeps
    itself with probability accept[i], else it becomes alias[i]; draws then cost O(1) each."""
    n = len(probs)
    scaled = (probs.double() * n).tolist()
    accept, alias = [1.0] * n, list(range(n))
    small = [i for i, x in enumerate(scaled) if x < 1.0]
    large = [i for i, x in enumerate(scaled) if x >= 1.0]
    while small and large:
        lo, hi = small.pop(), large.pop()
        accept[lo], alias[lo] = scaled[lo], hi
        scaled[hi] -= 1.0 - scaled[lo]
        (small if scaled[hi] < 1.0 else large).append(hi)
    return torch.tensor(accept, dtype=torch.float64), torch.tensor(alias)  # leftovers (rounding) keep themselves


class NegativeSampler:
    """Samples item codes in 1..I uniformly or proportional to (training count + 1) ** alpha; knows log q."""

    def __init__(self, kind: str, n_items: int, popularity: torch.Tensor | None = None, alpha: float = 1.0) -> None:
        self.kind = kind
        self.n_items = n_items
        if kind == "uniform":
            probs = torch.full((n_items,), 1.0 / n_items, dtype=torch.float64)
        else:
            if popularity is None:
                raise ValueError("a popularity sampler needs item counts")
            weights = (popularity[1:].double() + 1.0) ** alpha
            probs = weights / weights.sum()
            self.accept, self.alias = alias_table(probs)  # the uniform draw needs no table
        self.log_probs = torch.cat([torch.zeros(1), probs.log().float()])  # indexed by code; row 0 unused
        self._copies: dict[tuple[str, torch.device], torch.Tensor] = {}

    def on(self, name: str, device: torch.device) -> torch.Tensor:
        """`accept`, `alias` or `log_probs` on `device`, copied there once."""
        t = getattr(self, name)
        if t.device == device:
            return t
        return self._copies.setdefault((name, device), t.to(device))

    def sample(self, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
        """[n, k] item codes (with replacement), drawn on the generator's device: a CUDA generator keeps the
        [n, k] draw and its copy off the host (at K=1024 the host draw was the GPU step's bottleneck). On CPU,
        whose generator is serial, DRAW_BLOCKS row blocks are drawn from generators seeded by `generator`, on
        torch's threads when the draw is large: the same codes at any thread count."""
        out = torch.empty((n, k), dtype=torch.long, device=generator.device)
        if generator.device.type != "cpu":
            self._draw(out, generator)
            return out
        seeds = torch.randint(0, 2**62, (DRAW_BLOCKS,), generator=generator).tolist()
        edges = [n * i // DRAW_BLOCKS for i in range(DRAW_BLOCKS + 1)]

        def draw_block(i: int) -> None:
            self._draw(out[edges[i] : edges[i + 1]], torch.Generator().manual_seed(seeds[i]))

        threads = min(torch.get_num_threads(), DRAW_BLOCKS) if n * k >= PARALLEL_DRAW_MIN else 1
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(draw_block, range(DRAW_BLOCKS)))
        else:
            for i in range(DRAW_BLOCKS):
                draw_block(i)
        return out

    def _draw(self, out: torch.Tensor, generator: torch.Generator) -> None:
        """Fill a contiguous code tensor on the generator's device from this sampler's distribution."""
        if out.numel() == 0:
            return
        if self.kind == "uniform":
            out.random_(1, self.n_items + 1, generator=generator)
        else:
            u = torch.rand(out.numel(), dtype=torch.float64, generator=generator, device=out.device)
            self.codes(u, out=out.view(-1))

    def codes(self, u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Item codes 1..I from float64 uniforms in [0, 1), one each: the integer part of u * I picks a bucket;
        for popularity (alias method) its fraction decides between the bucket and its alias."""
        x = u * self.n_items
        bucket = x.long()  # < n_items: a uniform below 1 times n rounds below n
        if self.kind == "uniform":
            return torch.add(bucket, 1, out=out)
        keep = x.frac_() < self.on("accept", u.device).index_select(0, bucket)
        return torch.where(keep, bucket, self.on("alias", u.device).index_select(0, bucket), out=out).add_(1)

    def sample_keyed(self, keys: torch.Tensor, k: int) -> torch.Tensor:
        """[n, k] item codes where row i depends on keys[i] alone (`keyed_uniforms`), on the keys' device:
        evaluation's fixed negatives, the same for a target at any batch size, grouping or device."""
        return self.codes(keyed_uniforms(keys, k).view(-1)).view(len(keys), k)

    def log_q(self, codes: torch.Tensor) -> torch.Tensor:
        """log sampling probability of each code, shaped like `codes`; uniform q: one value expanded (no gather)."""
        log_probs = self.on("log_probs", codes.device)
        return log_probs[1].expand(codes.shape) if self.kind == "uniform" else log_probs[codes]


def full_softmax_loss(h: torch.Tensor, catalog: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                      reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the whole catalog; targets are item codes 1..I (catalog row = code - 1).
    The training (mean, with gradients) path is the fused chunked kernel; per-row losses use plain autograd."""
    if reduction == "mean" and (h.requires_grad or catalog.requires_grad):
        return fused_linear_cross_entropy(_scaled(h, temperature), catalog, targets - 1)
    logits = (_scaled(h, temperature) @ catalog.T).float()
    return F.cross_entropy(logits, targets - 1, reduction=reduction)


def sampled_logits(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pos_codes: torch.Tensor,
                   neg_codes: torch.Tensor, neg_log_q: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """[N, 1 + K] logits, positive first. With neg_log_q, negatives are corrected by -log(K q) (sampled softmax);
    negatives that equal the positive are masked with a large finite negative."""
    cand = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [N, 1+K, d]
    raw = torch.bmm(cand, _scaled(h, temperature).unsqueeze(-1)).squeeze(-1)
    return correct_sampled_logits(raw, pos_codes, neg_codes, neg_log_q)


def table_sampled_softmax_loss(h: torch.Tensor, table: torch.Tensor, pos_codes: torch.Tensor,
                               neg_codes: torch.Tensor, neg_log_q: torch.Tensor | None,
                               temperature: float = 1.0) -> torch.Tensor:
    """Mean sampled CE with candidates read from an item table by code (a frozen cache, or trainable with its
    gradient), fused so [N, K+1, d] is never materialized."""
    return fused_sampled_cross_entropy(_scaled(h, temperature), table, pos_codes, neg_codes, neg_log_q)


def _positive_first_ce(logits: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy of [N, 1 + K] logits whose column 0 is each row's positive."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device),
                           reduction=reduction)


def sampled_softmax_loss(h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pos_codes: torch.Tensor,
                         neg_codes: torch.Tensor, neg_log_q: torch.Tensor | None,
                         temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of the positive against K sampled negatives."""
    return _positive_first_ce(sampled_logits(h, pos, neg, pos_codes, neg_codes, neg_log_q, temperature), "mean")


def catalog_sampled_loss(scores: torch.Tensor, pos_codes: torch.Tensor, neg_codes: torch.Tensor,
                         neg_log_q: torch.Tensor | None) -> torch.Tensor:
    """Per-row `sampled_softmax_loss` from [N, I] logits over the catalog (evaluation has them): the positive's and
    the negatives' columns are gathered, so no [N, K, d] candidate tensor is built."""
    raw = torch.cat([scores.gather(1, pos_codes.unsqueeze(1) - 1), scores.gather(1, neg_codes - 1)], dim=1)
    return _positive_first_ce(correct_sampled_logits(raw, pos_codes, neg_codes, neg_log_q), "none")


def _logq_corrected(logits: torch.Tensor, codes: torch.Tensor, log_q: torch.Tensor | None) -> torch.Tensor:
    """Logits of the candidate columns `codes`, less log q(code) when log_q is given."""
    return logits if log_q is None else logits - log_q[codes].unsqueeze(0)


def inbatch_logits(h: torch.Tensor, pos: torch.Tensor, pos_codes: torch.Tensor, log_q: torch.Tensor | None,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates are the batch's distinct target items (so no accidental hits); logQ subtracts log q(item).
    Returns logits [N, M] and the label (column of each row's own target)."""
    uniq, label = torch.unique(pos_codes, return_inverse=True)
    first = torch.full((len(uniq),), len(pos_codes), dtype=torch.long, device=h.device)
    first = first.scatter_reduce(0, label, torch.arange(len(pos_codes), device=h.device), reduce="amin")
    return _logq_corrected((_scaled(h, temperature) @ pos[first].T).float(), uniq, log_q), label


def inbatch_loss(h: torch.Tensor, pos: torch.Tensor, pos_codes: torch.Tensor, log_q: torch.Tensor | None,
                 temperature: float = 1.0) -> torch.Tensor:
    """Mean in-batch softmax loss over the distinct target items of the batch."""
    logits, label = inbatch_logits(h, pos, pos_codes, log_q, temperature)
    return F.cross_entropy(logits, label)


def catalog_inbatch_loss(scores: torch.Tensor, pos_codes: torch.Tensor, log_q: torch.Tensor | None) -> torch.Tensor:
    """Per-row `inbatch_loss` from [N, I] logits over the catalog: the columns of the batch's distinct targets."""
    uniq, label = torch.unique(pos_codes, return_inverse=True)
    return F.cross_entropy(_logq_corrected(scores[:, uniq - 1], uniq, log_q), label, reduction="none")
