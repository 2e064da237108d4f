"""Contextualizer: pre-norm decoder-only transformer with learned positions and causal attention (SDPA; explicit
bf16 math on CPU for short windows, see `causal_attention`; no cuDNN attention on CUDA, see `sdpa`).

Sequences are right-padded, so with causal attention a real position never attends to padding: a user's outputs do
not depend on batch composition or padding length. Attention has no dropout (SDPA stays on its fused kernel and the
FLOP accounting stays exact); dropout acts on the embeddings and the residual branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bfmscale.config import ModelConfig
from bfmscale.device import cpu_has_amx
from bfmscale.model.dropout import Dropout


# CPU bf16 attention: explicit bf16 math (see `causal_attention`) or fp32 flash, by the CPU kind it was measured on.
EXPLICIT_ATTENTION_MAX_RATIO = 4  # AMX: explicit while T <= this x d_head (Xeon: 0.90x of fp32 flash at d_head 32, T=200)
EXPLICIT_ATTENTION_MAX_T = 1024  # no AMX: explicit up to here (AMD AVX512-BF16: 1.2-2.3x at T=128..1024, d_head 32, 64)
EXPLICIT_ATTENTION_MAX_SCORES = 2**27  # and while a call's [B, heads, T, T] scores stay under 256 MiB of bf16
# CUDA: SDPA's own choice among these, never cuDNN attention (it builds an execution plan for each new shape, and
# our batches change width: bench/logs/2026-11-26-h100-ab-cudnn-attention.log)
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention, on CUDA without the cuDNN backend: torch 2.11 picks it first on an H100,
    and its per-shape plan costs 0.1-1.5 s for each batch width that length-bucketed training and length-sorted
    evaluation meet (a 2e13-FLOP SASRec run: 2.8-3.1x training time, 9-20x evaluation time; steady state equal)."""
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with sdpa_kernel(CUDA_SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def explicit_attention(rows: int, t: int, d_head: int) -> bool:
    """Whether CPU bf16 attention over `rows` (batch x heads) windows of T positions is explicit bf16 math on this
    CPU: with AMX while T <= 4 d_head, else while T <= 1024; either way while the scores fit 256 MiB."""
    longest = EXPLICIT_ATTENTION_MAX_RATIO * d_head if cpu_has_amx() else EXPLICIT_ATTENTION_MAX_T
    return t <= longest and rows * t * t <= EXPLICIT_ATTENTION_MAX_SCORES


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over [B, heads, T, d_head]: SDPA's fused kernel, except for bf16 on CPU. There torch's flash
    kernel is slower in bf16 than in fp32 (1.2x at T=200, 2-4x at T=50), so fp32 flash runs on the bf16 inputs,
    unless `explicit_attention` says that explicit bf16 attention (scaled, masked QK^T in one baddbmm, softmax, PV) is
    faster on this CPU (bench/logs/2026-11-26-xeon-amx-ab-explicit-attention.log, and
    2026-11-27-amd-ab-explicit-attention-no-amx.log). Its scores are rounded to bf16 like any autocast matmul output;
    the softmax accumulates in fp32."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return sdpa(q, k, v, is_causal=True)
    b, h, t, dh = q.shape
    with torch.autocast("cpu", enabled=False):
        if not explicit_attention(b * h, t, dh):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
        future = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        q3, k3, v3 = (z.reshape(b * h, t, dh) for z in (q, k, v))
        scores = torch.baddbmm(future.expand(b * h, t, t), q3, k3.transpose(1, 2), alpha=dh**-0.5)
        return torch.bmm(torch.softmax(scores, dim=-1), v3).view(b, h, t, dh)


class Block(nn.Module):
    """LayerNorm -> causal self-attention -> residual; LayerNorm -> GELU MLP -> residual."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, d] -> [B, T, d]; with `last` ([B, Q] positions), only those rows' outputs -> [B, Q, d] (keys and
        values still come from every position up to each query's position)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        if last is not None:
            rows = torch.arange(b, device=x.device).unsqueeze(1)
            x, q = x[rows, last], q[rows, last]
        q = q.view(b, -1, self.n_heads, d // self.n_heads).transpose(1, 2)
        k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (k, v))
        if last is None:
            y = causal_attention(q, k, v)
        else:  # Q queries per row: query j attends to keys 0..last[:, j]
            seen = torch.arange(t, device=x.device) <= last.unsqueeze(-1)
            y = sdpa(q, k, v, attn_mask=seen[:, None])
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, -1, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


def layer_dropouts(cfg: ModelConfig) -> list[float]:
    """Per-layer dropout: constant, or (seed 002) falling linearly from `dropout` to `dropout_min` with depth."""
    if not cfg.layerwise_dropout or cfg.n_layers == 1:
        return [cfg.dropout] * cfg.n_layers
    step = (cfg.dropout - cfg.dropout_min) / (cfg.n_layers - 1)
    return [cfg.dropout - i * step for i in range(cfg.n_layers)]


class Contextualizer(nn.Module):
    """Positions + blocks + final LayerNorm: [B, T, d] event vectors -> [B, T, d] context vectors."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.d_ff, p) for p in layer_dropouts(cfg))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, x: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, d] -> [B, T, d]; with `last` ([B] or [B, Q] positions), the context vectors at those positions only,
        [B, d] or [B, Q, d]: the final block then runs its queries, MLP and output for those rows alone (evaluation)."""
        x = self.drop(x + self.pos(torch.arange(x.shape[1], device=x.device)))
        queries = None if last is None else last.reshape(x.shape[0], -1)
        for i, block in enumerate(self.blocks):
            x = block(x, queries if i == len(self.blocks) - 1 else None)
        x = self.ln_f(x)
        return x if last is None else x.reshape(*last.shape, x.shape[-1])
