"""Run a sweep: skip done runs, re-queue missing / half-written / (optionally) failed ones, largest budgets first,
show progress by FLOPs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bfmscale.config import RunConfig
from bfmscale.sweep.store import RunStore, run_key

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """Counts of a sweep's runs: done now, failed now, skipped (done before), failed before and not retried."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_before: int = 0
    failed_keys: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.total} runs: {self.done} done now, {self.skipped} already done, {self.failed} failed"
                + (f", {self.failed_before} failed earlier (use --retry-failed)" if self.failed_before else ""))


def run_sweep(name: str, configs: list[RunConfig], store: RunStore, executor, retry_failed: bool = False) -> SweepSummary:
    """Execute the runs of `configs` that the store lacks, largest FLOP budget first; the bar's ETA comes from
    FLOPs, not run counts."""
    summary = SweepSummary(total=len(configs))
    todo = []
    for cfg in configs:
        state = store.state(run_key(cfg))
        if state == "done":
            summary.skipped += 1
        elif state == "failed" and not retry_failed:
            summary.failed_before += 1
            summary.failed_keys.append(run_key(cfg))
        else:  # missing, pending, running (left by a killed sweep), or failed with retry
            todo.append(cfg)
    # Largest budgets first (longest-processing-time order): parallel workers then end together, instead of one
    # worker finishing the design's biggest runs alone while the others idle (designs list budgets ascending).
    todo.sort(key=lambda c: -c.train.flops)
    total_flops = sum(c.train.flops for c in todo)
    log.info("sweep %s: %d runs, %d to do (%.3g FLOPs), %d done already", name, len(configs), len(todo), total_flops,
             summary.skipped)
    bar = tqdm(total=total_flops, unit="FLOP", unit_scale=True, desc=f"sweep {name}", dynamic_ncols=True)
    bar.set_postfix_str(f"runs 0/{len(todo)}")

    def on_finished(cfg: RunConfig, state: str) -> None:
        if state == "done":
            summary.done += 1
        else:
            summary.failed += 1
            summary.failed_keys.append(run_key(cfg))
        bar.update(cfg.train.flops)
        bar.set_postfix_str(f"runs {summary.done + summary.failed}/{len(todo)}, failed {summary.failed}")

    try:
        if todo:
            with logging_redirect_tqdm():  # in-process runs log above the bar, not into it
                executor.run(store, todo, name, on_finished)
    finally:
        bar.close()
        log.info("sweep %s: %s", name, summary.line())
    return summary
