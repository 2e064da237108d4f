"""Exact parameter counts per part and analytic training FLOPs per step per part.

Conventions (those of torch.utils.flop_counter, so that the two can be compared): a matmul of [m, k] @ [k, n] is
2·m·k·n forward; its backward is 2x forward when both inputs need gradients and 1x when only one does; SDPA forward is
4·B·T²·d per layer (causal counted as full T×T) and its backward 2.5x forward; embeddings, gathers, LayerNorm, GELU,
softmax and cross-entropy count 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter as fcm
from torch.utils.flop_counter import FlopCounterMode

from bfmscale.config import ModelConfig, TrainConfig
from bfmscale.model.catalog import EventInputs, ItemCatalog
from bfmscale.model.embedder import mlp_dims


_aten = torch.ops.aten
# FlopCounterMode counts CPU flash attention as 0; map it to the library's own SDPA formulas (STACK-NOTES Fix A).
SDPA_CPU_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *a, out_shape=None, **kw: fcm.sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, out_shape=None, **kw: fcm.sdpa_backward_flop_count(g, q, k, v),
}


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch.utils.flop_counter counts while `fn` runs, CPU flash attention included: what the hardware
    executes, where `step_flops` gives the model FLOPs that the study charges."""
    with FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


@dataclass(frozen=True)
class StepShape:
    """What one training step processes: B sequences of T input positions, N real targets, M distinct targets."""

    batch: int
    seq_len: int
    targets: int
    unique_targets: int = 0


def param_counts(cfg: ModelConfig, catalog: ItemCatalog, events: EventInputs = EventInputs()) -> dict[str, int]:
    """Analytic parameter counts: embedder, transformer (non-embedding), positions, head (tied: 0), total."""
    d, ff, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    n = catalog.n_items + 1
    if cfg.embedder == "id":
        embedder = n * d
    else:
        embedder = 0 if cfg.id_buckets == 0 else (n if cfg.id_buckets == -1 else cfg.id_buckets + 1) * cfg.id_dim
        embedder += cfg.d_feature * (sum(catalog.categorical_sizes.values()) + sum(catalog.multi_sizes.values())
                                     + len(catalog.text) * (cfg.text_buckets + 1))
        dims = mlp_dims(cfg, catalog)
        embedder += sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
        events = events.used_by(cfg)
        tables = sum(events.categorical) + sum(rows for rows, _ in events.multi)
        embedder += (events.numeric * d + d if events.numeric else 0) + tables * d
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d)
    transformer = L * block + 2 * d
    positions = cfg.max_len * d
    return {"embedder": embedder, "transformer": transformer, "positions": positions, "head": 0,
            "total": embedder + transformer + positions}


def embedder_share(counts: dict[str, int]) -> float:
    """s = N_embedder / (N_embedder + N_contextualizer), the contextualizer being transformer + positions."""
    ctx = counts["transformer"] + counts["positions"]
    return counts["embedder"] / (counts["embedder"] + ctx)


def seed002_params(cfg: ModelConfig) -> int:
    """Seed 002's (and Kaplan's) non-embedding convention N = 12·L·d²."""
    return 12 * cfg.n_layers * cfg.d_model**2


def module_param_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts of a built BehaviorModel, by part (to check the analytic ones)."""
    emb = sum(p.numel() for p in model.embedder.parameters())
    pos = model.contextualizer.pos.weight.numel()
    ctx = sum(p.numel() for p in model.contextualizer.parameters()) - pos
    return {"embedder": emb, "transformer": ctx, "positions": pos, "head": 0, "total": emb + ctx + pos}


def step_flops(cfg: ModelConfig, train: TrainConfig, catalog: ItemCatalog, shape: StepShape,
               events: EventInputs = EventInputs()) -> dict[str, float]:
    """Analytic FLOPs of one training step (forward + backward) by part: embedder, transformer, attention, scoring."""
    d, ff, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    B, T, N = shape.batch, shape.seq_len, shape.targets
    P = B * T
    frozen = train.freeze_embedder
    K = train.n_negatives
    features = cfg.embedder == "features"

    # Embedder: the MLP runs for every item vector it produces (history window incl. the shifted positives,
    # then the candidates); an ID table is a gather (0). A frozen embedder reads a cache (0) and has no backward.
    emb_fwd = emb_bwd = 0.0
    if features:
        dims = mlp_dims(cfg, catalog)
        mlp = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
        first = 2 * dims[0] * dims[1]
        apps = B * (T + 1)
        if train.objective == "full":
            apps += catalog.n_items
        elif train.objective == "sampled":
            apps += N * K
        has_tables = cfg.id_buckets != 0 or bool(catalog.categorical or catalog.multi or catalog.text)
        if not frozen:
            emb_fwd += apps * mlp
            emb_bwd += 2 * apps * mlp - (0 if has_tables else apps * first)
        n_numeric = events.used_by(cfg).numeric  # categorical and list-valued event features: gathers (0)
        if n_numeric:
            proj = 2 * P * n_numeric * d
            emb_fwd += proj
            emb_bwd += 0 if frozen else proj  # weight gradient only: the event features need none

    tr_fwd = L * 2 * P * (4 * d * d + 2 * d * ff)
    att_fwd = L * 4 * B * T * T * d

    if train.objective == "full":
        cands = catalog.n_items
    elif train.objective == "sampled":
        cands = K + 1
    else:
        cands = shape.unique_targets
    sc_fwd = 2 * N * cands * d
    sc_bwd = sc_fwd * (1 if frozen else 2)

    parts = {
        "embedder_fwd": emb_fwd, "embedder_bwd": emb_bwd,
        "transformer_fwd": tr_fwd, "transformer_bwd": 2 * tr_fwd,
        "attention_fwd": att_fwd, "attention_bwd": 2.5 * att_fwd,
        "scoring_fwd": sc_fwd, "scoring_bwd": sc_bwd,
    }
    for part in ("embedder", "transformer", "attention", "scoring"):
        parts[part] = parts[f"{part}_fwd"] + parts[f"{part}_bwd"]
    parts["total"] = sum(parts[p] for p in ("embedder", "transformer", "attention", "scoring"))
    return parts


def forward_flops_per_position(cfg: ModelConfig, seq_len: int) -> float:
    """Transformer + attention forward FLOPs per input position (for evaluation cost and throughput tables)."""
    d, ff = cfg.d_model, cfg.d_ff
    return cfg.n_layers * (2 * (4 * d * d + 2 * d * ff) + 4 * seq_len * d)
