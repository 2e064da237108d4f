"""Event embedder: item features (and the event's own features) -> a d_model vector.

Two modes. "id": a plain item-ID table (SASRec, seed 002). "features": optional exact or hashed ID embedding,
categorical and multi-hot embeddings (mean-pooled), numeric features, title text as a bag of hashed tokens,
concatenated and combined by an MLP to d_model. The same embedder embeds history events and candidates.
"""

from __future__ import annotations

import torch
from torch import nn

from bfmscale.config import ModelConfig
from bfmscale.model.catalog import EventInputs, ItemCatalog

# A feature embedder asked for more vectors than this many times the catalog's rows embeds every item once and
# gathers (same values and gradients: item vectors depend on the item alone). Sampled negatives ask for N*K vectors of
# at most I items; FLOP accounting still charges the model's per-lookup MLP (tests pin this to inf to count them).
CATALOG_ROUTE_RATIO = 1.0


class EventEmbedder(nn.Module):
    """Maps item codes [...] to vectors [..., d_model]; `events` adds the event's own features to history events."""

    def __init__(self, cfg: ModelConfig, catalog: ItemCatalog, events: EventInputs = EventInputs()) -> None:
        super().__init__()
        self.cfg = cfg
        self.mode = cfg.embedder
        self.n_items = catalog.n_items  # real items I (codes 1..I)
        n = catalog.n_items + 1
        d = cfg.d_model
        self.event_inputs = events = events.used_by(cfg)  # the layout events() reads
        self.event_proj = nn.Linear(events.numeric, d) if events.numeric else None
        self.event_tables = nn.ModuleList(nn.Embedding(rows, d, padding_idx=0) for rows in events.categorical)
        self.event_bags = nn.ModuleList(nn.EmbeddingBag(rows, d, mode="mean", padding_idx=0)
                                        for rows, _ in events.multi)
        for t in [*self.event_tables, *self.event_bags]:  # small, like the ID table: they add to the residual stream
            nn.init.normal_(t.weight, std=0.02)
            t.weight.data[0] = 0.0
        if self.mode == "id":
            self.item = nn.Embedding(n, d, padding_idx=0)
            nn.init.normal_(self.item.weight, std=0.02)
            return
        self.id_table = None
        if cfg.id_buckets != 0:
            rows = n if cfg.id_buckets == -1 else cfg.id_buckets + 1
            self.id_table = nn.Embedding(rows, cfg.id_dim, padding_idx=0)
        self.cat_names = sorted(catalog.categorical)
        self.multi_names = sorted(catalog.multi)
        self.text_names = sorted(catalog.text)
        self.cat_tables = nn.ModuleDict({k: nn.Embedding(catalog.categorical_sizes[k], cfg.d_feature, padding_idx=0)
                                         for k in self.cat_names})
        self.multi_tables = nn.ModuleDict({k: nn.EmbeddingBag(catalog.multi_sizes[k], cfg.d_feature, mode="mean",
                                                              padding_idx=0) for k in self.multi_names})
        self.text_tables = nn.ModuleDict({k: nn.EmbeddingBag(cfg.text_buckets + 1, cfg.d_feature, mode="mean",
                                                             padding_idx=0) for k in self.text_names})
        for k, t in catalog.categorical.items():
            self.register_buffer(f"cat_{k}", t, persistent=False)
        for k, t in catalog.multi.items():
            self.register_buffer(f"multi_{k}", t, persistent=False)
        for k, t in catalog.text.items():
            self.register_buffer(f"text_{k}", t, persistent=False)
        self.register_buffer("numeric", catalog.numeric if catalog.numeric is not None else torch.zeros(n, 0),
                             persistent=False)
        dims = mlp_dims(cfg, catalog)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)

    def items(self, codes: torch.Tensor) -> torch.Tensor:
        """Item vectors for codes of any shape [...] -> [..., d_model], one embedding per lookup."""
        if self.mode == "id":
            return self.item(codes)
        return self._embed(codes.reshape(-1)).reshape(*codes.shape, -1)

    def uses_table(self, n_lookups: int) -> bool:
        """Whether `n_lookups` item vectors are read from `table()`: always for IDs, by the catalog route for features."""
        return self.mode == "id" or n_lookups > CATALOG_ROUTE_RATIO * (self.n_items + 1)

    def table(self) -> torch.Tensor:
        """Every item's vector by code, row 0 the padding -> [I + 1, d_model]."""
        if self.mode == "id":
            return self.item.weight
        return self._embed(torch.arange(self.n_items + 1, device=self.numeric.device))

    def _embed(self, flat: torch.Tensor) -> torch.Tensor:
        """Run the feature tables and the MLP for 1-D item codes -> [n, d_model]."""
        parts = []
        if self.id_table is not None:
            ids = flat if self.cfg.id_buckets == -1 else torch.where(flat > 0, flat % self.cfg.id_buckets + 1, flat)
            parts.append(self.id_table(ids))
        for k in self.cat_names:
            parts.append(self.cat_tables[k](getattr(self, f"cat_{k}")[flat]))
        for k in self.multi_names:
            parts.append(self.multi_tables[k](getattr(self, f"multi_{k}")[flat]))
        for k in self.text_names:
            parts.append(self.text_tables[k](getattr(self, f"text_{k}")[flat]))
        if self.numeric.shape[1]:
            parts.append(self.numeric[flat])
        return self.mlp(torch.cat(parts, dim=-1))

    def events(self, item_vecs: torch.Tensor, event_features: torch.Tensor | None) -> torch.Tensor:
        """History-event vectors: item vector plus a projection of the event's numeric features, an embedding per
        categorical one and a mean embedding per list-valued one (if enabled; `EventInputs` gives the layout)."""
        if event_features is None:
            return item_vecs
        n = self.event_inputs.numeric
        if self.event_proj is not None:
            item_vecs = item_vecs + self.event_proj(event_features[..., :n])
        for table in self.event_tables:
            item_vecs = item_vecs + table(event_features[..., n].long())
            n += 1
        for bag, (_, w) in zip(self.event_bags, self.event_inputs.multi):  # mean over an event's codes; none: 0
            codes = event_features[..., n : n + w].long()
            item_vecs = item_vecs + bag(codes.reshape(-1, w)).reshape(*codes.shape[:-1], -1)
            n += w
        return item_vecs


def feature_input_dim(cfg: ModelConfig, catalog: ItemCatalog) -> int:
    """Width of the concatenated feature vector that enters the MLP."""
    dim = 0 if cfg.id_buckets == 0 else cfg.id_dim
    dim += cfg.d_feature * (len(catalog.categorical) + len(catalog.multi) + len(catalog.text))
    return dim + catalog.n_numeric_inputs


def mlp_dims(cfg: ModelConfig, catalog: ItemCatalog) -> list[int]:
    """Layer widths of the combining MLP, input first."""
    return [feature_input_dim(cfg, catalog)] + [cfg.mlp_hidden] * (cfg.mlp_layers - 1) + [cfg.d_model]


