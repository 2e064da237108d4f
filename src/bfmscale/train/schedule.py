"""Learning-rate schedule: linear warmup, then cosine decay that ends exactly at the last step of the budget."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, lr: float, warmup_frac: float, min_lr_ratio: float) -> float:
    """LR for 0-based `step` of `total_steps`; the last step gets lr * min_lr_ratio."""
    warmup = max(1, int(round(warmup_frac * total_steps))) if warmup_frac > 0 else 0
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
