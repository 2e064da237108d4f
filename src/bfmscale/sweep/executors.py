"""Executors: one interface (`run(store, configs, sweep, on_finished)`), same store, local or on a Ray cluster.

- LocalExecutor(workers=1): runs in this process, one run after another, with all torch threads.
- LocalExecutor(workers=N, threads=T): N spawned worker processes with T torch threads each.
- RayExecutor(address=None): one Ray task per run on an existing cluster (`address`) or a local instance; GPUs are
  requested for CUDA runs; a task whose worker dies is retried. Workers return results to this process, which writes
  the store, so the cluster needs no shared filesystem; the prepared dataset travels through Ray's object store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bfmscale.atomic import atomic_path
from bfmscale.config import RunConfig
from bfmscale.data.dataset import PreparedDataset, load_prepared
from bfmscale.model.catalog import EventInputs, ItemCatalog, build_catalog, build_event_features
from bfmscale.sweep.store import RunLog, RunStore, execute, run_key

log = logging.getLogger(__name__)
OnFinished = Callable[[RunConfig, str], None]
_DATASETS: dict[str, PreparedDataset] = {}
_MODEL_INPUTS: dict[tuple[str, int], tuple[ItemCatalog, EventInputs]] = {}
PARENT_POLL_S = 1.0  # how often a pool worker checks that the sweep process is alive


def dataset_path(cfg: RunConfig) -> str:
    """Where the run's prepared dataset lives (the key datasets are cached and shipped under)."""
    return str(Path(cfg.data.prepared_dir) / cfg.data.dataset)


def dataset_for(cfg: RunConfig) -> PreparedDataset:
    """The run's prepared dataset, loaded once per process."""
    path = dataset_path(cfg)
    if path not in _DATASETS:
        _DATASETS[path] = load_prepared(path)
    return _DATASETS[path]


def model_inputs_for(cfg: RunConfig) -> tuple[ItemCatalog, EventInputs]:
    """The item catalog and event-feature layout a run's model is built on, made once per process and dataset."""
    key = (dataset_path(cfg), cfg.model.text_buckets)
    if key not in _MODEL_INPUTS:
        ds = dataset_for(cfg)
        _MODEL_INPUTS[key] = build_catalog(ds, cfg.model.text_buckets), build_event_features(ds)[1]
    return _MODEL_INPUTS[key]


def _worker_init(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _pool_worker_init(threads: int | None, sweep_pid: int) -> None:
    """A pool worker's set-up: its torch threads, and a watch that ends it when the sweep process is gone (killed
    with SIGKILL or by the OOM killer): a spawned worker holds its own end of the task queue, so it would otherwise
    wait for work forever, or train on as an orphan beside the resumed sweep."""
    _worker_init(threads)

    def watch() -> None:
        while os.getppid() == sweep_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # the run in progress stays 'running' in the store; the resumed sweep redoes it

    threading.Thread(target=watch, name="bfmscale-sweep-watch", daemon=True).start()


def _worker_run(root: str, cfg_dict: dict[str, Any], sweep: str) -> tuple[str, str]:
    cfg = RunConfig.from_dict(cfg_dict)
    return run_key(cfg), execute(RunStore(Path(root)), cfg, dataset_for(cfg), sweep)


@dataclass
class LocalExecutor:
    """In-process (workers=1) or a pool of worker processes, each with `threads` torch threads."""

    workers: int = 1
    threads: int | None = None

    def run(self, store: RunStore, configs: list[RunConfig], sweep: str, on_finished: OnFinished) -> None:
        if self.workers <= 1:
            _worker_init(self.threads)
            for cfg in configs:
                on_finished(cfg, execute(store, cfg, dataset_for(cfg), sweep))
            return
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_pool_worker_init,
                                 initargs=(self.threads, os.getpid())) as pool:
            pending = {pool.submit(_worker_run, str(store.root), c.to_dict(), sweep): c for c in configs}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        cfg = pending.pop(fut)
                        try:
                            _, state = fut.result()
                        except Exception as exc:  # the worker process itself died
                            store.fail(run_key(cfg), exc)
                            state = "failed"
                        on_finished(cfg, state)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise


class _ListHandler(logging.Handler):
    """Keeps formatted log lines in memory (a Ray worker sends them back with the result)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _ray_train(cfg_dict: dict[str, Any], ds: PreparedDataset) -> tuple[Any, list[str]]:
    """Ray task: train one run, return its result and log lines (the driver writes the store)."""
    import torch

    from bfmscale.train.loop import train_run

    # Ray reuses worker processes across tasks of different num_cpus: set torch's threads per task.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    handler = _ListHandler()
    with RunLog(handler=handler):
        result = train_run(RunConfig.from_dict(cfg_dict), ds)
    return result, handler.lines


@dataclass
class RayExecutor:
    """One Ray task per run; `address` joins an existing cluster, None starts a local instance."""

    address: str | None = None
    num_cpus: int | None = None  # local instance only
    cpus_per_run: int = 1
    max_retries: int = 2

    def run(self, store: RunStore, configs: list[RunConfig], sweep: str, on_finished: OnFinished) -> None:
        import ray

        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus or os.cpu_count()
            ray.init(address=self.address, **kwargs)
            started = True
        try:
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            task = ray.remote(_ray_train)
            datasets: dict[str, Any] = {}
            pending = {}
            for cfg in configs:
                path = dataset_path(cfg)
                if path not in datasets:
                    datasets[path] = ray.put(dataset_for(cfg))
                gpu = 1 if cfg.train.device == "cuda" or (cfg.train.device == "auto" and has_gpu) else 0
                key = store.start(cfg, sweep)
                ref = task.options(num_cpus=self.cpus_per_run, num_gpus=gpu, max_retries=self.max_retries).remote(
                    cfg.to_dict(), datasets[path])
                pending[ref] = (cfg, key)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cfg, key = pending.pop(ref)
                    try:
                        result, lines = ray.get(ref)
                    except Exception as exc:  # the run raised (or its worker died past the retries)
                        cause = getattr(exc, "cause", None) or exc
                        store.fail(key, cause)
                        on_finished(cfg, "failed")
                        continue
                    with atomic_path(store.dir(key) / "run.log") as tmp:
                        tmp.write_text("\n".join(lines) + "\n")
                    store.finish(key, result)
                    on_finished(cfg, "done")
        finally:
            if started:
                ray.shutdown()


def make_executor(kind: str, workers: int | None = None, threads: int | None = None, address: str | None = None):
    """Executor by name: local or ray. Local default: one worker process per core, one thread each (measured the
    fastest layout on 2 cores, bench/executors.py); threads default to cores // workers (no oversubscription)."""
    if kind == "local":
        cores = os.cpu_count() or 1
        workers = workers or cores
        return LocalExecutor(workers=workers, threads=threads or max(1, cores // workers))
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=workers if address is None and workers else None,
                           cpus_per_run=threads or 1)
    from bfmscale.errors import BfmError

    raise BfmError(f"--executor {kind!r} is unknown; expected local or ray")


__all__ = ["LocalExecutor", "RayExecutor", "RunLog", "dataset_for", "make_executor"]
