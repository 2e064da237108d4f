"""Fused cross-entropies, computed chunk by chunk over target rows with the gradients formed in the forward.

Catalog: loss = CE(h @ E.T, y).
The [N, I] logits are never materialized whole: for each chunk the forward computes logits, log-sum-exp and the loss,
and also the gradient of the mean loss w.r.t. the logits (softmax - onehot) / N, from which it forms dh and dE at
once; backward only scales them. Same three matmuls as plain autograd (2·N·I·d each; dE is skipped when E needs no
gradient), so the FLOP accounting is unchanged; less memory traffic and peak memory O(chunk·I).

Sampled, frozen embedder: CE of the positive against K per-target negatives read from the cache. The [N, K+1, d]
candidate tensor is never materialized whole (at K=1024 it is gigabytes); only dh is needed (the cache has no
gradient). Same logits and gradients as `sampled_softmax_loss`, from the same `sampled_logits`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _matmul_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in here: autocast's when it is on (inside a custom Function it still is), else h's."""
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, catalog: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = h.shape[0]
        need_h, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(h) if need_h else None
        de = torch.zeros(catalog.shape, dtype=torch.float32, device=catalog.device) if need_e else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_dtype = _matmul_dtype(h)
        for s in range(0, n, chunk):
            hc, yc = h[s : s + chunk], targets[s : s + chunk]
            logits = (hc @ catalog.T).float()
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits.gather(1, yc.unsqueeze(1)).squeeze(1)).sum()
            grad = torch.exp(logits.sub_(lse.unsqueeze(1)))  # softmax, in place
            grad[torch.arange(len(yc), device=grad.device), yc] -= 1.0
            grad.div_(n)
            grad = grad.to(grad_dtype)  # once, not once per matmul under autocast
            if need_h:
                dh[s : s + chunk] = grad @ catalog
            if need_e:
                de += (grad.T @ hc).float()
        ctx.save_for_backward(dh if need_h else torch.empty(0), de if need_e else torch.empty(0))
        ctx.flags = (need_h, need_e, catalog.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dh, de = ctx.saved_tensors
        need_h, need_e, e_dtype = ctx.flags
        return (dh * grad_out if need_h else None, (de * grad_out).to(e_dtype) if need_e else None, None, None)


CHUNK_BYTES = 16 * 2**20  # fp32 logits per chunk: stays under glibc's mmap threshold (see bfmscale.malloc)


def fused_linear_cross_entropy(h: torch.Tensor, catalog: torch.Tensor, targets: torch.Tensor,
                               chunk: int | None = None) -> torch.Tensor:
    """Mean CE of logits h @ catalog.T against 0-based `targets`, without materializing all logits.
    `chunk` rows at a time (default: as many as fit CHUNK_BYTES of fp32 logits)."""
    chunk = chunk or max(1, CHUNK_BYTES // (4 * catalog.shape[0]))
    return _FusedLinearCE.apply(h, catalog, targets, chunk)


class _FusedSampledCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, cache: torch.Tensor, pos_codes: torch.Tensor, neg_codes: torch.Tensor,
                log_q: torch.Tensor | None, logits_fn: Callable, chunk: int) -> torch.Tensor:
        n = h.shape[0]
        dh = torch.empty_like(h)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, n, chunk):
            hc, pc, nc = h[s : s + chunk], pos_codes[s : s + chunk], neg_codes[s : s + chunk]
            cand = torch.cat([cache[pc].unsqueeze(1), cache[nc]], dim=1)  # [c, 1+K, d]
            logits = logits_fn(hc, cand[:, 0], cand[:, 1:], pc, nc, None if log_q is None else log_q[s : s + chunk])
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits[:, 0]).sum()
            grad = torch.exp(logits.sub_(lse.unsqueeze(1)))
            grad[:, 0] -= 1.0
            grad.div_(n)
            dh[s : s + chunk] = torch.bmm(grad.to(cand.dtype).unsqueeze(1), cand).squeeze(1).to(h.dtype)
        ctx.save_for_backward(dh)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (dh,) = ctx.saved_tensors
        return dh * grad_out, None, None, None, None, None, None


def fused_sampled_cross_entropy(h: torch.Tensor, cache: torch.Tensor, pos_codes: torch.Tensor,
                                neg_codes: torch.Tensor, log_q: torch.Tensor | None, logits_fn: Callable,
                                chunk: int | None = None) -> torch.Tensor:
    """Mean sampled CE with candidates gathered from a frozen `cache` (row = item code), `chunk` targets at a time
    (default: CHUNK_BYTES of candidate vectors); `logits_fn` is `negatives.sampled_logits`."""
    chunk = chunk or max(1, CHUNK_BYTES // (cache.element_size() * cache.shape[1] * (neg_codes.shape[1] + 1)))
    return _FusedSampledCE.apply(h, cache, pos_codes, neg_codes, log_q, logits_fn, chunk)
