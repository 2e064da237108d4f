"""Run configuration: ModelConfig, TrainConfig, DataConfig, RunConfig; a resolved config is plain JSON."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bfmscale.errors import BfmError


def fail(name: str, value: Any, expected: str) -> None:
    """Raise the one-line error for a bad setting: its name, its value, what was expected."""
    raise BfmError(f"{name} is {value!r}; expected {expected}")


def check(cond: bool, name: str, value: Any, expected: str) -> None:
    """`fail` unless `cond`."""
    if not cond:
        fail(name, value, expected)


@dataclass(frozen=True)
class ModelConfig:
    """Event embedder + decoder-only transformer."""

    embedder: str = "id"  # "id": item-ID table only (SASRec / seed 002); "features": feature-based event embedder
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    max_len: int = 200  # history window T
    dropout: float = 0.2  # embedding and residual dropout (attention itself has none: keeps SDPA on its fused kernel)
    layerwise_dropout: bool = False  # seed 002: dropout falls linearly from `dropout` (first layer) to `dropout_min` (last)
    dropout_min: float = 0.0
    temperature: float = 1.0  # score = dot(context, candidate) / temperature
    # Feature embedder (embedder == "features"); the size knobs are d_feature, mlp_hidden, mlp_layers, id_dim.
    id_buckets: int = -1  # -1: exact item-ID table; 0: no ID embedding; >0: hashed IDs into this many buckets
    id_dim: int = 32
    d_feature: int = 16  # width of each categorical / multi-hot / text embedding
    text_buckets: int = 2048  # hashed title tokens
    mlp_hidden: int = 128
    mlp_layers: int = 2  # Linear layers in the combining MLP (>= 1)
    use_event_features: bool = True  # add a projection of the event's own features (rating) to history events

    def __post_init__(self) -> None:
        check(self.embedder in ("id", "features"), "model.embedder", self.embedder, "'id' or 'features'")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_len", "id_dim", "d_feature", "text_buckets",
                     "mlp_hidden", "mlp_layers"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"model.{name}", value, "an integer >= 1")
        check(self.d_model % self.n_heads == 0, "model.d_model", self.d_model,
              f"a multiple of model.n_heads={self.n_heads}")
        check(isinstance(self.id_buckets, int) and self.id_buckets >= -1, "model.id_buckets", self.id_buckets,
              "-1 (exact), 0 (none) or a positive bucket count")
        for name in ("dropout", "dropout_min"):
            check(0.0 <= getattr(self, name) < 1.0, f"model.{name}", getattr(self, name), "a number in [0, 1)")
        check(self.temperature > 0, "model.temperature", self.temperature, "a positive number")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


OBJECTIVES = ("full", "sampled", "inbatch")


@dataclass(frozen=True)
class TrainConfig:
    """Training to a FLOP budget."""

    flops: float = 1e13  # compute budget C (training FLOPs, analytic, forward + backward)
    batch_size: int = 128  # sequences per step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio exactly at the budget
    warmup_frac: float = 0.02
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    objective: str = "full"  # full softmax over the catalog, sampled softmax, or in-batch negatives
    n_negatives: int = 128  # K for the sampled objective
    sampler: str = "uniform"  # or "popularity" (proportional to training frequency ** sampler_alpha)
    sampler_alpha: float = 1.0
    logq: bool = True  # logQ correction of sampled / in-batch logits
    freeze_embedder: bool = False  # stage 2 (seed 000): embedder frozen, candidate embeddings cached
    init_from: str | None = None  # checkpoint (model state) to start from, e.g. a stage-1 run's model.pt
    save_checkpoint: bool = False
    sgd_switch_frac: float | None = None  # seed 002: switch Adam -> SGD after this fraction of the budget
    sgd_lr: float = 0.1
    precision: str = "auto"  # auto: bf16 on CUDA or a CPU with native bf16, else fp32
    device: str = "auto"  # auto: CUDA when present, else CPU
    threads: int | None = None  # torch CPU threads (None: torch's default)
    tune_malloc: bool = True  # glibc: keep freed large blocks for reuse (see bfmscale.malloc); no effect on results
    compile: bool = False  # torch.compile the contextualizer (inductor; on CPU it needs a C++ compiler)
    n_evals: int = 4  # validation evaluations along the run (plus the final one)
    # Validation curve on a fixed random subset of this many users (None: all); final metrics always use all. At
    # ML-1M's 6,040 users a curve over all of them was a quarter of an IsoFLOP sweep's wall time (bench/envelope.py).
    eval_users: int | None = 1024
    log_every_frac: float = 0.1

    def __post_init__(self) -> None:
        check(isinstance(self.flops, (int, float)) and self.flops > 0, "train.flops", self.flops, "a positive number")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "train.batch_size", self.batch_size,
              "an integer >= 1")
        check(self.lr > 0, "train.lr", self.lr, "a positive number")
        check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        check(0 <= self.warmup_frac < 1, "train.warmup_frac", self.warmup_frac, "a number in [0, 1)")
        check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas", list(self.betas),
              "two numbers in [0, 1)")
        check(self.objective in OBJECTIVES, "train.objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        check(isinstance(self.n_negatives, int) and self.n_negatives >= 1, "train.n_negatives", self.n_negatives,
              "an integer >= 1")
        check(self.sampler in ("uniform", "popularity"), "train.sampler", self.sampler, "'uniform' or 'popularity'")
        check(self.sampler_alpha >= 0, "train.sampler_alpha", self.sampler_alpha, "a number >= 0")
        check(self.precision in ("auto", "fp32", "bf16"), "train.precision", self.precision, "auto, fp32 or bf16")
        check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "auto, cpu or cuda")
        check(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1), "train.threads",
              self.threads, "null or an integer >= 1")
        check(self.sgd_switch_frac is None or 0 < self.sgd_switch_frac < 1, "train.sgd_switch_frac",
              self.sgd_switch_frac, "null or a number in (0, 1)")
        check(self.sgd_lr > 0, "train.sgd_lr", self.sgd_lr, "a positive number")
        check(0 < self.log_every_frac <= 1, "train.log_every_frac", self.log_every_frac, "a number in (0, 1]")
        check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0 (0 disables clipping)")
        check(isinstance(self.n_evals, int) and self.n_evals >= 0, "train.n_evals", self.n_evals, "an integer >= 0")
        check(self.eval_users is None or (isinstance(self.eval_users, int) and self.eval_users >= 1),
              "train.eval_users", self.eval_users, "null (all users) or an integer >= 1")


@dataclass(frozen=True)
class DataConfig:
    """Which prepared dataset and split; evaluation options."""

    dataset: str = "ml-1m"
    prepared_dir: str = "data/prepared"
    split: str = "loo"  # leave-last-out (per user: last event test, second-to-last validation)
    exclude_seen: bool = False  # rank among all items (default) or drop the user's history items from the ranking

    def __post_init__(self) -> None:
        check(self.split == "loo", "data.split", self.split, "'loo' (the temporal split is used by the hard-tasks axis)")


@dataclass(frozen=True)
class RunConfig:
    """One training run: model, training, data and seed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from nested dicts; an unknown key or a mistyped value is an error naming it."""
        return section_from_dict(cls, raw or {})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


T = TypeVar("T")


def section_from_dict(cls: type[T], raw: Any, prefix: str = "", source: str | None = None) -> T:
    """A config dataclass from a YAML mapping; an unknown or missing key, or a value not of the field's type, is a
    one-line error naming `prefix + key` (after `source: `, the file, when given)."""
    if source is not None:
        try:
            return section_from_dict(cls, raw, prefix)
        except BfmError as exc:
            raise BfmError(f"{source}: {exc}") from None
    check(isinstance(raw, dict), prefix.rstrip(".") or "config", raw, "a mapping")
    _no_unknown(raw, cls, prefix)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        hint = hints[f.name]
        section = dataclasses.is_dataclass(hint) or typing.get_origin(hint) in (dict, list)
        if f.name in raw and not (section and raw[f.name] is None):  # YAML reads an empty `model:` as null
            values[f.name] = _conform(prefix + f.name, raw[f.name], hint)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise BfmError(f"{prefix}{f.name} is missing")
    return cls(**values)


def _conform(name: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint` (YAML 1.1 reads `1e12` as a string: it becomes a float; lists become tuples), or a
    one-line error."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return section_from_dict(hint, value, f"{name}.")
    if origin in (list, tuple):
        size = len(args) if origin is tuple and Ellipsis not in args else None
        ok = isinstance(value, (list, tuple)) and (len(value) == size if size else len(value) > 0)
        check(ok, name, value, f"a list of {size} values" if size else "a non-empty list")
        items = [_conform(name, v, args[0] if args else Any) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        check(isinstance(value, dict) and all(isinstance(k, str) for k in value), name, value,
              "a mapping with names as keys")
        return {k: _conform(f"{name}.{k}", v, args[1]) for k, v in value.items()}
    if hint is bool:
        check(isinstance(value, bool), name, value, "true or false")
    elif hint is int:
        check(isinstance(value, int) and not isinstance(value, bool), name, value, "an integer")
    elif hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                fail(name, value, "a number")
        check(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, "a number")
        return float(value)
    elif hint is str:
        check(isinstance(value, str), name, value, "a string")
    return value


def _no_unknown(raw: dict[str, Any], cls: type, prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise BfmError(f"{prefix}{key} is not a setting; expected one of {', '.join(sorted(known))}")


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set `a.b.c` in a nested dict in place, creating sections as needed."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BfmError(f"{where or key}: {part} is not a section")
    node[parts[-1]] = value


def apply_values(raw: dict[str, Any], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of `raw` with each (dotted key, value) set."""
    out = yaml.safe_load(yaml.safe_dump(raw or {}))
    for key, value in pairs:
        set_dotted(out, key, value)
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BfmError(f"override {item!r}: expected key=value, e.g. model.d_model=128")
        pairs.append((key, yaml.safe_load(value)))
    return apply_values(raw, pairs)


def read_mapping(path: Path | str, what: str, fmt: str = "yaml") -> dict[str, Any]:
    """A YAML (or, with fmt="json", JSON) file holding a mapping (empty: {}); a missing file, a parse error or another
    top level is a one-line error naming the file and `what` was expected."""
    path = Path(path)
    if not path.is_file():
        raise BfmError(f"{path}: file not found; expected {what}")
    load, error = (json.loads, json.JSONDecodeError) if fmt == "json" else (yaml.safe_load, yaml.YAMLError)
    try:
        raw = load(path.read_text())
    except error as exc:
        raise BfmError(f"{path}: not valid {fmt.upper()} ({str(exc).splitlines()[0]}); expected {what}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BfmError(f"{path}: the top level is a {type(raw).__name__}; expected a mapping: {what}")
    return raw


def load_run_config(path: Path | str | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults), apply overrides, validate."""
    if path is None:
        return RunConfig.from_dict(apply_overrides({}, list(overrides)))
    raw = read_mapping(path, "a YAML run config with model / train / data / seed")
    try:
        return RunConfig.from_dict(apply_overrides(raw, list(overrides)))
    except BfmError as exc:
        raise BfmError(f"{path}{' + overrides' if overrides else ''}: {exc}") from None
