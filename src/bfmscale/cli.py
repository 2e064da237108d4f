"""`bfmscale` command line: fetch, prepare, run, sweep, status, notebook."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bfmscale.errors import BfmError
from bfmscale.logging_setup import setup_logging

log = logging.getLogger("bfmscale")


def _profile_dataset(args: argparse.Namespace) -> tuple[dict, str]:
    from bfmscale.params import load_params, resolve_profile

    params = load_params(args.params)
    if args.dataset:
        return params, args.dataset
    return params, resolve_profile(params, args.profile, source=str(args.params)).dataset


def cmd_fetch(args: argparse.Namespace) -> None:
    from bfmscale.data.fetch import fetch
    from bfmscale.data.sources import dataset_spec

    params, name = _profile_dataset(args)
    spec = dataset_spec(params, name, source=str(args.params))
    fetch(spec, Path(args.raw), base=Path(args.params).resolve().parent)


def cmd_prepare(args: argparse.Namespace) -> None:
    from bfmscale.data.prepare import PrepareConfig, prepare
    from bfmscale.data.readers import read_raw

    params, name = _profile_dataset(args)
    cfg = PrepareConfig.from_params(params)
    stats = prepare(read_raw(Path(args.raw) / name), Path(args.out) / name, cfg, name)
    b, a = stats["before_filter"], stats["after_filter"]
    print(f"{name}: before filter {b['users']:,} users / {b['items']:,} items / {b['events']:,} events; "
          f"after (min_history={cfg.min_history}) {a['users']:,} / {a['items']:,} / {a['events']:,}")


def cmd_notebook(args: argparse.Namespace) -> None:
    from bfmscale.notebooks import render_notebook

    params, name = _profile_dataset(args)
    bad = [kv for kv in args.param if "=" not in kv]
    if bad:
        raise BfmError(f"-p {bad[0]!r}: expected KEY=VALUE")
    extra = dict(kv.split("=", 1) for kv in args.param)
    render_notebook(Path(args.notebooks) / f"{args.name}.ipynb", Path(args.results), {"dataset": name, **extra})


def cmd_run(args: argparse.Namespace) -> None:
    from bfmscale.config import load_run_config
    from bfmscale.train.loop import train_run
    from bfmscale.train.summary import format_summary

    config = args.config if args.config and "=" not in args.config else None
    overrides = ([args.config] if args.config and config is None else []) + args.overrides
    cfg = load_run_config(config, overrides)
    out = Path(args.out) if args.out else None
    result = train_run(cfg, out_dir=out)
    if out is not None:
        from bfmscale.sweep.store import write_result

        write_result(out, result)
    print(format_summary(result))


def cmd_sweep(args: argparse.Namespace) -> int:
    from bfmscale.atomic import atomic_path
    from bfmscale.model.catalog import EventInputs
    from bfmscale.sweep.collect import collect, plan
    from bfmscale.sweep.design import expand, load_design
    from bfmscale.sweep.executors import make_executor, model_inputs_for
    from bfmscale.sweep.runner import run_sweep
    from bfmscale.sweep.store import RunStore

    design = load_design(args.design)
    catalog, events = None, EventInputs()
    if design.split:
        from bfmscale.config import RunConfig

        catalog, events = model_inputs_for(RunConfig.from_dict(design.base))
    configs = expand(design, catalog, events)
    store = RunStore(Path(args.store))
    if args.dry_run:
        table = plan(configs, store, model_inputs_for)
        todo = table["status"] != "done"
        flops = sum(c.train.flops for c, t in zip(configs, todo) if t)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"sweep {design.name}: {len(table)} runs, {int((~todo).sum())} done, {int(todo.sum())} to run "
              f"({flops:.3g} training FLOPs); nothing was run")
        return 0
    executor = make_executor(args.executor, args.workers, args.threads, args.address)
    summary = run_sweep(design.name, configs, store, executor, retry_failed=args.retry_failed)
    table = collect(configs, store)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            table.to_csv(tmp, index=False)
    print(f"sweep {design.name}: {summary.line()}")
    for key in summary.failed_keys:
        print(f"  failed {key}: {(store.status(key) or {}).get('error')}")
    return 1 if args.strict and (summary.failed or summary.failed_before) else 0


def cmd_status(args: argparse.Namespace) -> None:
    from bfmscale.sweep.collect import store_status
    from bfmscale.sweep.store import RunStore

    table = store_status(RunStore(Path(args.store)))
    if table.empty:
        print(f"{args.store}: no runs")
        return
    table["flops"] = table["flops"].map(lambda f: f"{f:.3g}")
    table["wall_time"] = table["wall_time"].map(lambda t: f"{t / 3600:.2f} h")
    print(table.to_string(index=False))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (worker and thread counts)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bfmscale", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("--profile", default=None, help="profile to use (default: params' `profile`)")
        p.add_argument("--dataset", default=None, help="dataset name (default: the profile's)")

    def raw_root(p: argparse.ArgumentParser) -> None:
        p.add_argument("--raw", default="data/raw", help="raw data root (default: data/raw)")

    p = sub.add_parser("fetch", help="download and verify the profile's dataset into data/raw/<dataset>/")
    common(p)
    raw_root(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("prepare", help="write the canonical dataset to data/prepared/<dataset>/")
    common(p)
    raw_root(p)
    p.add_argument("--out", default="data/prepared", help="prepared data root (default: data/prepared)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", help="train and evaluate one config: bfmscale run [config.yaml] [key=value ...]")
    p.add_argument("config", nargs="?", default=None, help="YAML run config (model / train / data / seed)")
    p.add_argument("overrides", nargs="*", help="overrides such as model.d_model=128 train.flops=1e13")
    p.add_argument("--out", default=None, help="directory for config.json, metrics.json, curve.parquet, per_user.parquet")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run a sweep design through the run store (resumable)")
    p.add_argument("design", help="design YAML (name, base, seeds, grid / isoflop / split)")
    p.add_argument("--executor", default="local", choices=["local", "ray"])
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local: worker processes (default: one per core); ray (local instance): CPUs")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per run (default: cores // workers; ray: CPUs per task, default 1)")
    p.add_argument("--address", default=None, help="ray: address of an existing cluster (default: a local instance)")
    p.add_argument("--store", default="results/runs")
    p.add_argument("--out", default=None, help="write the collected table (CSV) here")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs that failed before")
    p.add_argument("--strict", action="store_true", help="exit 1 when any run failed")
    p.add_argument("--dry-run", action="store_true",
                   help="list the design's runs (state in the store, the settings that vary) and their FLOPs; run none")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="runs in the store by sweep and status, with FLOPs and wall time")
    p.add_argument("--store", default="results/runs")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("notebook", help="execute notebooks/<name>.ipynb with papermill; write .ipynb and .html")
    common(p)
    p.add_argument("name")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="extra notebook parameter")
    p.add_argument("--notebooks", default="notebooks")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_notebook)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        rc = args.func(args)
    except BfmError as exc:
        print(f"bfmscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bfmscale {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
