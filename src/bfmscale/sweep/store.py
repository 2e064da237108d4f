"""Content-addressed run store: results/runs/<key>/ with config.json, metrics.json, curve.parquet, per_user.parquet,
status.json and run.log, every file written atomically. A directory whose status is not `done` is never read as a
result; `status.json` is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bfmscale.atomic import atomic_path, write_json
from bfmscale.config import RunConfig

# Bump whenever training or evaluation semantics change, so that stale results are never mixed with new ones.
RUN_FORMAT = 15  # 2: CPU dropout masks from raw random bits, fp32 attention under CPU bf16 autocast;
# 3: fused CE softmax in the logits dtype (bf16 gradients rounded once), sampled per-item gradients summed in bf16;
# 4: explicit bf16 attention under CPU bf16 autocast while T <= 4 d_head;
# 5: dense sampled CE sums per-code gradients in fp32 (bf16: rounded once); CPU negatives drawn in seeded row
# blocks; popularity negatives by the alias method; 6: evaluation batches users by window length and runs the
# final block for each user's last position only (float-level differences); fused CEs' chunks of 256 MiB off the CPU
# (not bumped for CUDA attention without cuDNN: a kernel choice, like a torch upgrade; CPU results bit-identical)
# 7: the final validation and test share one pass where the user's history fits the window (float-level)
# 8: CPU bf16 attention without AMX is explicit bf16 math up to T=1024 (was fp32 flash past T = 4 d_head)
# 9: evaluation's sampled negatives keyed by the target event (were a seed-0 draw per batch); the in-batch
# objective of a shared pass is computed per split (its candidates had mixed both splits' targets); both are read
# from the catalog logits that ranking computes
# 10: the dense sampled CE's dh on the CPU is a weighted embedding_bag of the K+1 candidates' rows for a frozen
# table, and for a trainable one while I >= 10 (K+1) (fp32: float-level; bf16: each candidate's weight is rounded,
# where the per-code sum was rounded once)
# 11: under bf16 autocast the sampled CE takes the dense route while I <= 64 (K+1) (was 32; float-level) on the CPU,
# and on a GPU for a trainable table of d >= 512
# 12: the bag route's dh is a bag of the K negatives' rows plus the positive's row, whose weight stays fp32 (bf16:
# float-level; it was rounded with the others)
# 13: fp32 table scores on the CPU (both fused CEs, ranking) in products of 256 table rows for >= 256 rows
# (float-level)
# 14: those blocks on AMD CPUs only; elsewhere one product again (float-level)
# 15: a feature model reads categorical and list-valued event features (were ignored; lists had been categories of
# their string form), and a numeric event feature with gaps as 0 plus a missing flag (was nan: every loss nan);
# datasets with none of these, ML-1M and ML-100k among them, train bit-identically

STATES = ("pending", "running", "done", "failed")


def canonical(obj: Any) -> Any:
    """Numbers normalized (1e12 == 1000000000000.0 == 1000000000000), dict keys sorted by json.dumps."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, float)):
        f = float(obj)
        return int(f) if f.is_integer() and abs(f) < 2**63 else repr(f)
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    raise TypeError(f"cannot canonicalize {type(obj).__name__}")


def run_key(cfg: RunConfig | dict[str, Any]) -> str:
    """16 hex digits of sha256 over RUN_FORMAT and the canonical JSON of the resolved config."""
    raw = cfg.to_dict() if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg).to_dict()
    text = json.dumps(canonical(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"run_format={RUN_FORMAT};{text}".encode()).hexdigest()[:16]


@dataclass
class RunStore:
    """The directory that holds every run, keyed by run_key."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def dir(self, key: str) -> Path:
        return self.root / key

    def status(self, key: str) -> dict[str, Any] | None:
        """The run's status record, or None when it has none (missing or half-written)."""
        path = self.dir(key) / "status.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def state(self, key: str) -> str:
        """done / failed / running / pending; `missing` when no status exists."""
        st = self.status(key)
        if st is None:
            return "missing"
        if st.get("state") == "done" and not (self.dir(key) / "metrics.json").is_file():
            return "missing"
        return st.get("state", "missing")

    def is_done(self, key: str) -> bool:
        return self.state(key) == "done"

    def _write_status(self, key: str, state: str, **extra: Any) -> None:
        record = {"state": state, "run_format": RUN_FORMAT, "host": socket.gethostname(), "pid": os.getpid(),
                  "time": time.time(), **extra}
        write_json(self.dir(key) / "status.json", record)

    def start(self, cfg: RunConfig, sweep: str = "") -> str:
        """Create the run directory with its config and a `running` status; returns the key."""
        key = run_key(cfg)
        self.dir(key).mkdir(parents=True, exist_ok=True)
        write_json(self.dir(key) / "config.json", cfg.to_dict())
        self._write_status(key, "running", started=time.time(), sweep=sweep)
        return key

    def finish(self, key: str, result: Any) -> None:
        """Write metrics, curve and per-user results, then mark done (last)."""
        write_result(self.dir(key), result)
        st = self.status(key) or {}
        self._write_status(key, "done", started=st.get("started"), finished=time.time(), sweep=st.get("sweep", ""),
                           device=result.info.get("device"), machine=result.info.get("machine"),
                           wall_time=result.info.get("wall_time"), flops=result.info.get("flops"))

    def fail(self, key: str, exc: BaseException) -> None:
        """Record the error and its traceback; the sweep goes on."""
        st = self.status(key) or {}
        self._write_status(key, "failed", started=st.get("started"), finished=time.time(), sweep=st.get("sweep", ""),
                           error=f"{type(exc).__name__}: {exc}",
                           traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def metrics(self, key: str) -> dict[str, Any]:
        """metrics.json of a done run (never read from a run that is not done)."""
        if not self.is_done(key):
            raise KeyError(f"run {key} is not done")
        return json.loads((self.dir(key) / "metrics.json").read_text())

    def config(self, key: str) -> dict[str, Any]:
        return json.loads((self.dir(key) / "config.json").read_text())

    def curve(self, key: str) -> pd.DataFrame:
        if not self.is_done(key):
            raise KeyError(f"run {key} is not done")
        return pd.read_parquet(self.dir(key) / "curve.parquet")

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if self.root.is_dir() else []


def write_result(directory: Path, result: Any) -> None:
    """A RunResult's files, each atomically: config.json, metrics.json, curve.parquet, per_user.parquet."""
    write_json(directory / "config.json", result.config)
    write_json(directory / "metrics.json", {"metrics": result.metrics, "info": result.info})
    for name, frame in (("curve", result.curve), ("per_user", result.per_user)):
        with atomic_path(directory / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)


class RunLog:
    """Context manager: while a run trains, INFO logs of bfmscale also go to `handler` (default: a file)."""

    def __init__(self, path: Path | None = None, handler: logging.Handler | None = None) -> None:
        self.handler = handler or logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.logger = logging.getLogger("bfmscale")
        self.level = self.logger.level

    def __enter__(self) -> RunLog:
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()


def execute(store: RunStore, cfg: RunConfig, ds: Any = None, sweep: str = "") -> str:
    """Train one config into the store (state running -> done | failed). Returns the final state."""
    from bfmscale.train.loop import train_run

    key = store.start(cfg, sweep)
    with RunLog(store.dir(key) / "run.log"):
        try:
            result = train_run(cfg, ds, out_dir=store.dir(key))
        except Exception as exc:  # a failing run is recorded and the sweep goes on
            logging.getLogger("bfmscale").error("run %s failed: %s", key, exc)
            store.fail(key, exc)
            return "failed"
    store.finish(key, result)
    return "done"
