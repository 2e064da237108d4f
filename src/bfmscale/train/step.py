"""One training step's loss: all targets of every sequence in one pass, under the configured objective."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bfmscale.config import TrainConfig
from bfmscale.eval.ranking import RowLoss
from bfmscale.model.bfm import BehaviorModel
from bfmscale.train.negatives import (NegativeSampler, catalog_inbatch_loss, catalog_sampled_loss, full_softmax_loss,
                                      inbatch_loss, sampled_softmax_loss, table_sampled_softmax_loss)


def rows(x: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x[b, t] of a [B, T, d] tensor by index_select, whose backward is a row-wise index_add_ (a boolean mask's is an
    accumulating index_put_: on CPU 3-5x slower, fwd + bwd)."""
    return x.flatten(0, 1).index_select(0, b * x.shape[1] + t)


@dataclass
class Objective:
    """The training objective with its sampler and random generator."""

    cfg: TrainConfig
    sampler: NegativeSampler
    generator: torch.Generator

    def loss(self, model: BehaviorModel, items: torch.Tensor, feats: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Mean loss over the real targets of a right-padded [B, T+1] window batch, and their count."""
        # One embedder pass per step: the item table when the step's lookups are served from it (frozen cache, ID
        # weight, or the features' catalog route), shared by history, positives and candidates; else per lookup.
        table = model.item_table(self.lookups(model, items))
        vecs = model.item_vectors(items, table)  # [B, T+1, d]
        h = model.context(vecs[:, :-1], feats[:, :-1] if feats is not None else None)
        b, t = (items[:, 1:] != 0).nonzero(as_tuple=True)  # the real targets, in row-major order
        tgt = items[b, t + 1]
        hn = rows(h, b, t)
        temp = model.cfg.temperature
        if self.cfg.objective == "full":
            loss = full_softmax_loss(hn, model.catalog_vectors() if table is None else table[1:], tgt, temp)
        elif self.cfg.objective == "sampled":
            neg_codes = self.sampler.sample(len(tgt), self.cfg.n_negatives, self.generator).to(items.device)
            log_q = self.sampler.log_q(neg_codes) if self.cfg.logq else None
            if table is not None:
                loss = table_sampled_softmax_loss(hn, table, tgt, neg_codes, log_q, temp)
            else:
                loss = sampled_softmax_loss(hn, rows(vecs, b, t + 1), model.item_vectors(neg_codes), tgt, neg_codes,
                                            log_q, temp)
        else:
            log_q = self.sampler.on("log_probs", items.device) if self.cfg.logq else None
            loss = inbatch_loss(hn, rows(vecs, b, t + 1), tgt, log_q, temp)
        return loss, int(tgt.numel())

    def lookups(self, model: BehaviorModel, items: torch.Tensor) -> int:
        """Item vectors a step reads: the window's items plus the candidates (the catalog, K per target at most, or
        none for in-batch)."""
        candidates = {"full": model.embedder.n_items, "sampled": items.numel() * self.cfg.n_negatives}
        return items.numel() + candidates.get(self.cfg.objective, 0)

    def eval_loss(self) -> RowLoss | None:
        """The per-row training objective for evaluation, or None for the full softmax, whose per-row loss is the
        CE that evaluation computes anyway."""
        return None if self.cfg.objective == "full" else self._eval_loss

    def _eval_loss(self, scores: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Per-row sampled or in-batch loss from evaluation's catalog logits. Sampled negatives are fixed by each
        target's key (its event's index), so a user's value does not depend on the batch, the users evaluated or
        the run's seed."""
        if self.cfg.objective == "sampled":
            neg = self.sampler.sample_keyed(keys, self.cfg.n_negatives)
            return catalog_sampled_loss(scores, targets, neg, self.sampler.log_q(neg) if self.cfg.logq else None)
        log_q = self.sampler.on("log_probs", scores.device) if self.cfg.logq else None
        return catalog_inbatch_loss(scores, targets, log_q)


def train_step(model: BehaviorModel, objective: Objective, opt: torch.optim.Optimizer, items: torch.Tensor,
               feats: torch.Tensor | None, amp: torch.dtype | None, grad_clip: float) -> torch.Tensor:
    """Forward (autocast when `amp`), backward, clip, optimizer step; returns the detached loss."""
    with torch.autocast(items.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss, _ = objective.loss(model, items, feats)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()
