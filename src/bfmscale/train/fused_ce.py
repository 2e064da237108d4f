"""Fused cross-entropies, computed chunk by chunk over target rows with the gradients formed in the forward.

Catalog: loss = CE(h @ E.T, y).
The [N, I] logits are never materialized whole: for each chunk the forward computes logits, their softmax and the
loss, and also the gradient of the summed loss w.r.t. the logits (softmax - onehot), from which it forms dh and dE
at once; backward only scales them (by 1/N and the incoming gradient). Same three matmuls as plain autograd
(2·N·I·d each; dE is skipped when E needs no gradient), so the FLOP accounting is unchanged; less memory traffic and
peak memory O(chunk·I).

Sampled: CE of the positive against K per-target negatives read by code from an item table (a frozen embedder's
cache, or the trainable ID weight / feature embedder's table). The [N, K+1, d] candidate tensor is never
materialized whole (at K=1024 it is gigabytes); dh, and d(table) when the table needs it, are formed per chunk.
Same logits and gradients as `sampled_softmax_loss`, with the same logQ correction and hit mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bfmscale.device import cpu_is_amd

# A sampled negative equal to the positive gets this logit: large, finite (no inf - inf = nan in the softmax).
HIT_MASK = -1e9


def correct_sampled_logits(raw: torch.Tensor, pos_codes: torch.Tensor, neg_codes: torch.Tensor,
                           neg_log_q: torch.Tensor | None, hits_masked: bool = False) -> torch.Tensor:
    """fp32 [N, 1 + K] logits from raw dot products (positive first): logQ correction and accidental-hit
    mask, applied in place (on raw itself when it is fp32 already). `hits_masked`: raw already holds HIT_MASK
    where a negative is the positive (the dense fused route writes it into the scores before gathering)."""
    logits = raw.float()
    neg_logits = logits[:, 1:]
    if neg_log_q is not None:
        neg_logits.sub_(neg_log_q).sub_(math.log(neg_codes.shape[1]))
    if not hits_masked:
        neg_logits.masked_fill_(neg_codes == pos_codes.unsqueeze(1), HIT_MASK)
    return logits


def _matmul_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in here: autocast's when it is on (inside a custom Function it still is), else h's."""
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


# AMD CPUs, fp32: table rows per product in `table_scores` (see there).
SCORE_BLOCK = 256
SCORE_BLOCK_MIN_ROWS = 256


def table_scores(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """h @ table.T. On an AMD CPU in fp32 for at least SCORE_BLOCK_MIN_ROWS rows of h, in products of SCORE_BLOCK
    table rows each: there one sgemm over the wide [rows, I] output with a short inner dimension (d) ran 1.05-1.9x
    slower than the blocked products (AMD EPYC, 256-1,131 rows x 3,707 items, d=64-1024; 1.2-2.2x on an AVX2-only
    EPYC). Elsewhere one product: on an Intel Xeon the blocks ran 0.6-0.9x of it (AVX-512 or AVX2 code paths
    alike). In bf16 blocks gained nothing consistent on the AMD (0.7-1.2x) and lost on the Xeon (0.1-0.9x); at 64
    rows they lose; a table of at most two blocks is one product anyway."""
    n, i = h.shape[0], table.shape[0]
    if (h.device.type != "cpu" or h.dtype != torch.float32 or n < SCORE_BLOCK_MIN_ROWS or i <= 2 * SCORE_BLOCK
            or not cpu_is_amd()):
        return h @ table.T
    out = torch.empty((n, i), dtype=h.dtype)
    for s in range(0, i, SCORE_BLOCK):
        torch.mm(h, table[s : s + SCORE_BLOCK].T, out=out[:, s : s + SCORE_BLOCK])
    return out


def _softmax_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(logits) - onehot(targets) in the logits' dtype, and the summed CE in fp32, from one fused softmax
    (bf16 logits: accumulated in fp32 and rounded once, so the gradient is ready for the bf16 matmuls; the logits'
    own bf16 rounding outweighs that of p). A target's CE is -log p[target]; it saturates at -log(fp32 tiny) =
    87.3 nats where p underflows, and the gradient stays exact there."""
    grad = torch.softmax(logits, dim=1)
    rows = torch.arange(len(targets), device=grad.device)
    p_target = grad[rows, targets].float()
    loss = -p_target.clamp_min(torch.finfo(torch.float32).tiny).log().sum()
    grad[rows, targets] = (p_target - 1.0).to(grad.dtype)
    return grad, loss


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, catalog: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = h.shape[0]
        need_h, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(h) if need_h else None
        de = torch.zeros(catalog.shape, dtype=torch.float32, device=catalog.device) if need_e else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        mm_dtype = _matmul_dtype(h)
        hm, cat = h.to(mm_dtype), catalog.to(mm_dtype)  # cast once, not once per chunk and matmul under autocast
        for s in range(0, n, chunk):
            hc, yc = hm[s : s + chunk], targets[s : s + chunk]
            grad, loss = _softmax_grad(table_scores(hc, cat), yc)
            total += loss
            if need_h:
                dh[s : s + chunk] = grad @ cat
            if need_e:
                de += (grad.T @ hc).float()
        ctx.save_for_backward(dh if need_h else torch.empty(0), de if need_e else torch.empty(0))
        ctx.flags = (need_h, need_e, catalog.dtype, n)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dh, de = ctx.saved_tensors
        need_h, need_e, e_dtype, n = ctx.flags
        scale = grad_out / n  # the gradients were formed for the summed loss; the output is its mean
        return (dh * scale if need_h else None, (de * scale).to(e_dtype) if need_e else None, None, None)


# Bytes of a chunk's widest per-row tensor. CPU: stays under glibc's mmap threshold (see bfmscale.malloc). GPU:
# each chunk is a dozen kernel launches, so larger chunks (H200 training steps: 1.1-3.3x over 16 MiB; 1 GiB no
# better than 256 MiB; bench/logs/2026-11-26-h200-ab-ce-chunk-and-sampled-route.log).
CHUNK_BYTES = 16 * 2**20
GPU_CHUNK_BYTES = 256 * 2**20
# Rows a chunk that scores the whole table keeps at least, past the chunk bytes: each such chunk re-reads the table
# for its [chunk, d] x [d, I] products, so a few rows per chunk make them memory-bound. Catalog CE forward + backward,
# d=64, 3,200 targets, Xeon (AMX): I = 1M items, 4 rows 64.5 s, 64 rows 12.4 s in fp32 (5.2x), 9.2x in bf16;
# I = 200k 1.6-2.2x; 32 or 128 rows no better than 64 (bench/logs/2026-11-28-xeon-amx-catalog-ce-large-catalogs.log).
# Binds only past 65,536 items on the CPU (a million on a GPU).
TABLE_MIN_ROWS = 64


def chunk_rows(row_bytes: int, device: torch.device, whole_table: bool = False) -> int:
    """Rows per chunk on `device` when one row of the chunk's widest tensor takes `row_bytes`; at least
    TABLE_MIN_ROWS when each chunk scores the `whole_table`."""
    rows = (CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES) // row_bytes
    return max(TABLE_MIN_ROWS if whole_table else 1, rows)


def working_bytes(n_rows: int, row_bytes: int, device: torch.device, whole_table: bool = False) -> int:
    """Peak bytes of a fused CE's per-chunk tensors for n_rows targets: about three of [chunk, row_bytes]."""
    return 3 * min(n_rows, chunk_rows(row_bytes, device, whole_table)) * row_bytes


def fused_linear_cross_entropy(h: torch.Tensor, catalog: torch.Tensor, targets: torch.Tensor,
                               chunk: int | None = None) -> torch.Tensor:
    """Mean CE of logits h @ catalog.T against 0-based `targets`, without materializing all logits.
    `chunk` rows at a time (default: as many as fit the device's chunk bytes of fp32 logits, at least
    TABLE_MIN_ROWS)."""
    chunk = chunk or chunk_rows(4 * catalog.shape[0], h.device, whole_table=True)
    return _FusedLinearCE.apply(h, catalog, targets, chunk)


DENSE_MAX_RATIO = 32  # sampled CE scores the whole catalog when I <= this x (K + 1) (see below)
DENSE_MAX_RATIO_HALF = 64  # the same with 16-bit matmuls (bf16 autocast), on the CPU (see dense_route)
HALF_GPU_MIN_D = 512  # on a GPU the 16-bit ratio holds only for a trainable table at least this wide
BAG_MIN_RATIO = 10  # CPU: a trainable table's dh from bags of its rows when I >= this x (K + 1) (see below)


class _FusedSampledCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, pos_codes: torch.Tensor, neg_codes: torch.Tensor,
                log_q: torch.Tensor | None, route: str, chunk: int) -> torch.Tensor:
        n = h.shape[0]
        dense, bag = route != "gather", route == "bag"
        dh = torch.empty_like(h)
        dtable = torch.zeros(table.shape, dtype=torch.float32, device=h.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        mm = table.to(_matmul_dtype(h))  # once: gathers move half the bytes under bf16 autocast
        rows = torch.arange(min(chunk, n), device=h.device)
        for s in range(0, n, chunk):
            hc, pc, nc = h[s : s + chunk].to(mm.dtype), pos_codes[s : s + chunk], neg_codes[s : s + chunk]
            lq = None if log_q is None else log_q[s : s + chunk]
            r = rows[: len(hc)]
            if dense:  # [c, I+1] scores of every row of the table (column = code), then the candidates' columns
                scores = table_scores(hc, mm)
                raw = torch.empty((len(hc), nc.shape[1] + 1), dtype=scores.dtype, device=h.device)
                raw[:, 0] = scores[r, pc]  # the positive first
                # accidental hits: a negative drawn equal to the positive gathers the mask (c writes instead of a
                # compare and a fill over [c, K]: training steps 1.02-1.06x at K=1024, the same values bit for bit)
                scores[r, pc] = HIT_MASK
                torch.gather(scores, 1, nc, out=raw[:, 1:])
                del scores  # freed before any [c, I+1] gradient buffer: malloc hands that the same, cache-warm block
            else:  # [c, 1+K, d] candidate vectors
                codes = torch.cat([pc.unsqueeze(1), nc], dim=1)  # [c, 1+K], positive first
                cand = mm[codes]
                raw = torch.bmm(cand, hc.unsqueeze(-1)).squeeze(-1)
            grad, loss = _softmax_grad(correct_sampled_logits(raw, pc, nc, lq, hits_masked=dense), torch.zeros_like(pc))
            total += loss  # the positive is column 0
            if not dense:
                g = grad.to(mm.dtype).unsqueeze(1)
                dh[s : s + chunk] = torch.bmm(g, cand).squeeze(1)
                if dtable is not None:  # [c, 1+K, d] candidate gradients, added into their rows
                    dcand = torch.bmm(g.transpose(1, 2), hc.unsqueeze(1))
                    dtable.index_add_(0, codes.reshape(-1), dcand.reshape(-1, dcand.shape[-1]).float())
                continue
            if bag:  # dh as one weighted bag of each target's K negatives' table rows (no matmul; the table stays in
                # cache), plus its positive's row: no [c, 1+K] codes to build (K=1024, bf16: 1.08-1.29x on this part)
                dhc = dh[s : s + chunk]
                dhc[:] = F.embedding_bag(nc, mm, per_sample_weights=grad[:, 1:].to(mm.dtype).contiguous(), mode="sum")
                dhc.addcmul_(grad[:, :1], mm[pc])
            if not bag or dtable is not None:  # candidate gradients summed per code in fp32, cast once
                per_code = torch.zeros((len(hc), mm.shape[0]), dtype=torch.float32, device=h.device)
                per_code.scatter_add_(1, nc, grad[:, 1:])  # repeated negatives add up
                per_code.index_put_((r, pc), grad[:, 0], accumulate=True)
                per_code = per_code.to(mm.dtype)
                if not bag:
                    dh[s : s + chunk] = per_code @ mm
                if dtable is not None:  # column 0 (padding) is no candidate: its row gets exact zeros
                    dtable += per_code.T @ hc
        ctx.save_for_backward(dh, dtable)
        ctx.table_dtype, ctx.n = table.dtype, n
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dh, dtable = ctx.saved_tensors
        scale = grad_out / ctx.n  # as in _FusedLinearCE.backward
        dt = None if dtable is None else (dtable * scale).to(ctx.table_dtype)
        return dh * scale, dt, None, None, None, None, None


def dense_route(n_items: int, k1: int, device: torch.device, half: bool, *, table_grad: bool, d: int) -> bool:
    """The sampled CE's default route for I items and K+1 candidates per target: dense while I <= ratio·(K+1), the
    ratio 32, or 64 with 16-bit matmuls (`half`) on the CPU and on a GPU for a trainable table of d >= 512.
    Training steps on ML-1M at K=64 (I/(K+1) = 57), bf16, dense over gather: AMD CPU 0.96-1.06x at d=64, 1.10-1.31x
    at d=128-256 (the CE alone at 48-64 (K+1): 1.22-2.19x, but 0.84x for a trainable d=64 table at 64); H200,
    trainable table, 1.25-1.49x at d=512, 1.73-1.99x at d=1024, 0.80-1.24x at d <= 256; frozen 0.78-1.05x
    (bench/README.md)."""
    wide = half and (device.type == "cpu" or (table_grad and d >= HALF_GPU_MIN_D))
    return n_items <= (DENSE_MAX_RATIO_HALF if wide else DENSE_MAX_RATIO) * k1


def bag_route(device: torch.device, n_items: int, k1: int, table_grad: bool) -> bool:
    """Whether the dense route forms dh by `embedding_bag` over the K+1 candidates' rows: on the CPU, always for a
    frozen table (no [c, I+1] buffer at all), for a trainable one while I >= BAG_MIN_RATIO·(K+1) (its buffer is still
    built for d(table); the bag replaces one [c, I] x [I, d] matmul). Training steps, AMD CPU, d=64-256, fp32 and
    bf16: frozen K=1024 1.02-1.21x; trainable 1.00-1.14x at K=128 (I/(K+1) = 29), 0.93-1.12x at K=256 (14),
    0.82-1.09x at K=512 (7), 0.92-1.01x at K=1024 (3.6). GPUs keep the matmul: on an H200 the bag ran 0.12-0.70x
    of it at K=1024 and 0.63-1.42x at K=128 (bench/sampled_ce_routes.py)."""
    return device.type == "cpu" and (not table_grad or n_items >= BAG_MIN_RATIO * k1)


ROUTES = ("gather", "matmul", "bag")  # the sampled CE's routes (see fused_sampled_cross_entropy)


def sampled_route(n_items: int, k1: int, device: torch.device, half: bool, *, table_grad: bool, d: int) -> str:
    """The route the sampled CE takes by default: gather beyond `dense_route`'s limit, else dh by bags
    (`bag_route`) or by a matmul."""
    if not dense_route(n_items, k1, device, half, table_grad=table_grad, d=d):
        return "gather"
    return "bag" if bag_route(device, n_items, k1, table_grad) else "matmul"


def sampled_row_bytes(n_items: int, k1: int, d: int, elem_bytes: int, dense: bool) -> int:
    """Bytes per target of the sampled CE's widest per-chunk tensor: fp32 [I+1] gradients on the dense route, else
    [K+1, d] candidate vectors of `elem_bytes` (the matmul dtype's)."""
    return 4 * (n_items + 1) if dense else elem_bytes * d * k1


def fused_sampled_cross_entropy(h: torch.Tensor, table: torch.Tensor, pos_codes: torch.Tensor,
                                neg_codes: torch.Tensor, log_q: torch.Tensor | None, route: str | None = None,
                                chunk: int | None = None) -> torch.Tensor:
    """Mean sampled CE with candidates read from `table` (row = item code: a frozen embedder's cache, or the item
    table, which then gets its gradient), `chunk` targets at a time, logits corrected by `correct_sampled_logits`.
    Three routes (ROUTES), same logits and gradients: "gather" each target's K+1 candidate vectors (memory-bound,
    N·K·d reads), or score the whole catalog with a matmul and take the candidates' columns (N·I·d FLOPs, far
    faster while the catalog is small), forming dh by a matmul with per-code gradients ("matmul") or by weighted
    bags of the candidates' rows ("bag"). Default: `sampled_route`. The FLOP accounting counts the objective's K+1
    candidates either way (model FLOPs, not hardware FLOPs)."""
    n_items, k1 = table.shape[0] - 1, neg_codes.shape[1] + 1
    elem_bytes = _matmul_dtype(h).itemsize
    route = route or sampled_route(n_items, k1, h.device, elem_bytes == 2, table_grad=table.requires_grad,
                                   d=table.shape[1])
    if route not in ROUTES:
        raise ValueError(f"route {route!r}: expected one of {', '.join(ROUTES)}")
    row_bytes = sampled_row_bytes(n_items, k1, table.shape[1], elem_bytes, route != "gather")
    chunk = chunk or chunk_rows(row_bytes, h.device, whole_table=route != "gather")
    return _FusedSampledCE.apply(h, table, pos_codes, neg_codes, log_q, route, chunk)
