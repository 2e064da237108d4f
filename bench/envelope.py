"""What the default profile's 2-hour envelope holds: an IsoFLOP sweep on ML-1M, run the way a study stage runs it
(the default executor layout, the default run config), and the measured cost of one run at each budget.

Prints one row per run (shape, wall time split into training, final evaluation and the rest: set-up and the
validation curve), then per budget: the mean wall time of a run and how many such runs the default layout finishes
in the envelope. Run alone (other jobs spoil the timings). Needs data/prepared/ml-1m (`make reproduce` or
`bfmscale fetch && bfmscale prepare`).

    .venv/bin/python bench/envelope.py [--budgets 1e11,1e12,1e13] [--n-models 5] [--hours 2] [--eval-users all]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench_args import comma_list, positive, provenance, run
from bfmscale.sweep.collect import collect
from bfmscale.sweep.design import Design, expand
from bfmscale.sweep.executors import make_executor
from bfmscale.sweep.runner import run_sweep
from bfmscale.sweep.store import RunStore


def design(budgets: list[float], n_models: int, dataset: str, prepared: str, train: dict | None = None) -> Design:
    """The IsoFLOP design this bench times: the default run config but for the dataset, the budgets and `train`
    overrides (e.g. the validation curve's eval_users)."""
    return Design.from_dict({"name": "envelope", "isoflop": {"budgets": budgets, "n_models": n_models},
                             "base": {"data": {"dataset": dataset, "prepared_dir": prepared}, "train": train or {}}})


def run_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: budget, shape, parameters, wall time split into training / final evaluation / the rest."""
    out = pd.DataFrame({
        "budget": table["train.flops"], "d": table["model.d_model"], "L": table["model.n_layers"],
        "params": table["params.total"], "steps": table["steps"], "epochs": table["epochs"],
        "wall_s": table["wall_time"], "train_s": table["train_time"], "final_eval_s": table["eval_time"],
    })
    out["other_s"] = out["wall_s"] - out["train_s"] - out["final_eval_s"]  # set-up and the validation curve
    out["train_gflops"] = table["flops_per_s"] / 1e9
    out["precision"] = table["precision"]
    out["test_ndcg10"] = table["test_ndcg@10"]
    return out


def budget_table(runs: pd.DataFrame, workers: int, envelope_s: float) -> pd.DataFrame:
    """Per budget: runs, mean wall time of a run, training's share of it, and how many such runs `workers`
    parallel workers finish in `envelope_s` seconds."""
    g = runs.groupby("budget")
    out = pd.DataFrame({"runs": g.size(), "mean_wall_s": g["wall_s"].mean(),
                        "train_share": g["train_s"].sum() / g["wall_s"].sum()})
    out["runs_in_envelope"] = (workers * envelope_s / out["mean_wall_s"]).astype(int)
    return out.reset_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=comma_list(float), default="1e11,1e12,1e13",
                    help="comma-separated FLOP budgets")
    ap.add_argument("--n-models", type=positive(int), default=5,
                    help="model sizes per budget (the IsoFLOP design's n_models)")
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--workers", type=positive(int), default=None,
                    help="local workers (default: the sweep's, one per core)")
    ap.add_argument("--hours", type=positive(float), default=2.0, help="the envelope")
    ap.add_argument("--n-evals", type=int, default=None, help="validation-curve points per run (default: the run default)")
    ap.add_argument("--eval-users", type=lambda t: t if t == "all" else positive(int)(t), default=None,
                    help="validation curve on this many users, or 'all' (default: the run default)")
    ap.add_argument("--store", default=None, help="keep the runs here (resumable); default: a temporary store")
    args = ap.parse_args()
    train = {} if args.n_evals is None else {"n_evals": args.n_evals}
    if args.eval_users is not None:
        train["eval_users"] = None if args.eval_users == "all" else args.eval_users
    configs = expand(design(args.budgets, args.n_models, args.dataset, args.prepared, train))
    executor = make_executor("local", args.workers)
    budgets = ",".join(f"{b:g}" for b in args.budgets)
    print(provenance())
    print(f"{len(configs)} runs (IsoFLOP, {args.dataset}, budgets {budgets}), {os.cpu_count()} cores, "
          f"{executor.workers} worker(s) x {executor.threads} thread(s), train overrides {train or 'none'}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(args.store or Path(tmp) / "runs"))
        t = time.perf_counter()
        summary = run_sweep("envelope", configs, store, executor)
        wall = time.perf_counter() - t
        table = collect(configs, store)
        errors = [(store.status(key) or {}).get("error") for key in summary.failed_keys[summary.failed_before:]]
    if errors:
        raise SystemExit(f"envelope.py: error: {summary.line()}; the first: {errors[0]}")
    runs = run_table(table)
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(runs.to_string(index=False))
        print(budget_table(runs, executor.workers, 3600 * args.hours).to_string(index=False))
    print(f"sweep wall {wall:.0f} s for {runs['wall_s'].sum():.0f} run-seconds ({len(runs)} runs, "
          f"{summary.skipped} already in the store); {100 * wall / (3600 * args.hours):.1f}% of a "
          f"{args.hours:g}-hour envelope")


if __name__ == "__main__":
    run(main)
