"""Pre-tensorized sequences: one flat tensor of items (and event features) for all users, windows into it.

Training windows cover each user's leave-last-out training events with T + 1 tokens (T inputs, every position
predicting the next), cut from the end with stride T so that each training transition is a target exactly once
per epoch. Evaluation windows are the up-to-T events before the validation (or test) target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bfmscale.data.dataset import PreparedDataset
from bfmscale.model.catalog import EventInputs, build_event_features


@dataclass
class Sequences:
    """All users' chronological events, concatenated; `offsets[u]` is where user u (0-based row) starts."""

    items: torch.Tensor  # [E] int64 item codes
    features: torch.Tensor | None  # [E, F] float32 event features, laid out as `event_inputs` says, or None
    offsets: np.ndarray  # [U + 1]
    event_inputs: EventInputs

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def build_sequences(ds: PreparedDataset) -> Sequences:
    """Flatten the prepared events (already sorted by user, time, source order)."""
    ev = ds.events
    users = ev["user"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=ds.n_users + 1)[1:])])
    feats, inputs = build_event_features(ds)
    return Sequences(items=torch.from_numpy(ev["item"].to_numpy().astype(np.int64)), features=feats,
                     offsets=offsets.astype(np.int64), event_inputs=inputs)


@dataclass
class Windows:
    """Spans of the flat sequence: start index and length (tokens) per window."""

    starts: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def subset(self, idx: np.ndarray) -> Windows:
        return Windows(self.starts[idx], self.lengths[idx])


def train_windows(seqs: Sequences, max_len: int) -> Windows:
    """Windows of up to max_len + 1 tokens over each user's training events (all but the last two), from the end."""
    starts, lengths = [], []
    for u in range(seqs.n_users):
        begin, n_train = seqs.offsets[u], seqs.offsets[u + 1] - seqs.offsets[u] - 2
        end = begin + n_train
        while end - begin >= 2:
            s = max(begin, end - (max_len + 1))
            starts.append(s)
            lengths.append(end - s)
            end = s + 1  # overlap one token: the next window's last input is this window's first
    return Windows(np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64))


def eval_windows(seqs: Sequences, max_len: int, which: str) -> tuple[Windows, torch.Tensor]:
    """Input windows (up to max_len events before the target) and targets for 'valid' or 'test', one per user."""
    back = {"valid": 2, "test": 1}[which]
    target_idx = seqs.offsets[1:] - back
    begin = seqs.offsets[:-1]
    starts = np.maximum(begin, target_idx - max_len)
    return Windows(starts, target_idx - starts), seqs.items[torch.from_numpy(target_idx)]


def gather(seqs: Sequences, win: Windows, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-padded [B, width] item codes (0 = pad) and [B, width, F] features (0 = pad, also for codes)."""
    width = int(win.lengths.max()) if width is None else width
    pos = torch.arange(width)
    starts = torch.from_numpy(win.starts).unsqueeze(1)
    lengths = torch.from_numpy(win.lengths).unsqueeze(1)
    valid = pos.unsqueeze(0) < lengths
    idx = torch.where(valid, starts + pos, torch.zeros_like(starts))
    items = torch.where(valid, seqs.items[idx], torch.zeros((), dtype=torch.long))
    feats = None
    if seqs.features is not None:
        feats = seqs.features[idx] * valid.unsqueeze(-1)
    return items, feats


def plan_epoch(win: Windows, batch_size: int, rng: np.random.Generator, bucket: int = 64) -> list[np.ndarray]:
    """Shuffled batches of window indices; within chunks of `bucket` batches windows are sorted by length
    (little padding), then the batch order is shuffled."""
    order = rng.permutation(len(win))
    batches = []
    chunk = batch_size * bucket
    for c in range(0, len(order), chunk):
        part = order[c : c + chunk]
        part = part[np.argsort(win.lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
