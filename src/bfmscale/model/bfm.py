"""The behavioral model: event embedder + contextualizer; score = dot(context, embedder(candidate)) / temperature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bfmscale.config import ModelConfig
from bfmscale.model.catalog import EventInputs, ItemCatalog
from bfmscale.model.embedder import EventEmbedder
from bfmscale.model.transformer import Contextualizer


class BehaviorModel(nn.Module):
    """Embedder and contextualizer; after `freeze_embedder()` item vectors come from a cache of the whole catalog."""

    def __init__(self, cfg: ModelConfig, catalog: ItemCatalog, events: EventInputs = EventInputs()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedder = EventEmbedder(cfg, catalog, events)
        self.contextualizer = Contextualizer(cfg)
        self.cache: torch.Tensor | None = None

    @property
    def frozen(self) -> bool:
        return self.cache is not None

    @torch.no_grad()
    def freeze_embedder(self) -> None:
        """Stop the embedder's gradients and cache every item's vector once (row 0 = padding)."""
        self.embedder.requires_grad_(False)
        was_training = self.embedder.training
        self.embedder.eval()
        self.cache = self.embedder.table().detach().clone()
        self.cache[0] = 0.0  # padding
        self.embedder.train(was_training)

    def item_vectors(self, codes: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate/item vectors for codes of any shape: read from `table` (one a training step shares), from the
        table `item_table` picks for this many lookups, or embedded per lookup."""
        table = table if table is not None else self.item_table(codes.numel())
        # Row 0 is read like any row (padding positions never reach the loss), as per-lookup embedding would.
        return F.embedding(codes, table) if table is not None else self.embedder.items(codes)

    def item_table(self, n_lookups: int | None = None) -> torch.Tensor | None:
        """[I + 1, d] vectors by item code (row 0 padding): the frozen cache, or the embedder's table with gradients;
        None where `n_lookups` vectors are cheaper embedded one by one (`EventEmbedder.uses_table`)."""
        if self.cache is not None:
            return self.cache
        return self.embedder.table() if n_lookups is None or self.embedder.uses_table(n_lookups) else None

    def catalog_vectors(self) -> torch.Tensor:
        """Vectors of items 1..I -> [I, d]."""
        return self.item_table()[1:]

    def context(self, item_vecs: torch.Tensor, event_features: torch.Tensor | None = None,
                last: torch.Tensor | None = None) -> torch.Tensor:
        """History item vectors [B, T, d] (+ event features) -> context vectors [B, T, d], or only at the positions
        `last`, [B] -> [B, d] or [B, Q] -> [B, Q, d] (evaluation: the final block skips the other positions)."""
        return self.contextualizer(self.embedder.events(item_vecs, event_features), last)
