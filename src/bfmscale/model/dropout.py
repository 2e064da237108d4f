"""Dropout whose CPU mask comes from raw random bits instead of `bernoulli_`.

On CPU, `bernoulli_` draws one random number per element through a slow per-element path (measured ≈ 11 ns per
element, ≈ 14% of a d=128 bf16 training step). Here one 64-bit draw yields four 16-bit uniforms, each compared with
a threshold: the keep probability is rounded to a multiple of 2**-16 (≤ 8e-6 off), the scale is exactly 1 / (1 - p).
The mask is applied as a multiply by 0 / 1 (fwd + bwd 1.2-1.4x faster than `masked_fill`, whose CPU kernel is
scalar), then the exact scale. Elsewhere (CUDA's fused dropout is fast) and for p ≥ 1 it is `F.dropout`. Uses the
default generator, like nn.Dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool CPU mask of `shape`, True where an element is kept, each dropped with probability round(p, 2**-16)."""
    threshold = round((1.0 - p) * 2**16) - 2**15  # keep where bits < threshold
    if threshold >= 2**15:  # keep everything (the comparison would wrap in int16)
        return torch.ones(shape, dtype=torch.bool)
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None, generator=generator)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-2**15, 2**15)
    return bits < threshold


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    keep = keep_mask(x.shape, p).to(x.dtype)  # 0 / 1: a multiply, unlike CPU masked_fill, is vectorized
    return (x * keep).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """nn.Dropout with the fast CPU mask of `dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
