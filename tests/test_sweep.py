"""Sweep engine: run identity, designs, resume after SIGKILL, failure isolation, half-written runs, executors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bfmscale.config import ModelConfig, RunConfig, apply_values, load_run_config
from bfmscale.data.dataset import load_prepared
from bfmscale.errors import BfmError
from bfmscale.model.accounting import embedder_share, param_counts
from bfmscale.model.bfm import BehaviorModel
from bfmscale.model.catalog import EventInputs, build_catalog
from bfmscale.sweep import store as store_mod
from bfmscale.sweep.collect import collect, store_status
from bfmscale.sweep.design import Design, expand, load_design, shape_for
from bfmscale.sweep.executors import LocalExecutor, RayExecutor, make_executor
from bfmscale.sweep.runner import run_sweep
from bfmscale.sweep.store import RunStore, run_key
from bfmscale.train.data import build_sequences
from synthetic import make_prepared

METRICS = ["test_ndcg@10", "test_hr@10", "test_mrr", "test_ce", "valid_ndcg@10", "flops", "tokens", "steps"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    make_prepared(root, n_users=16, n_items=30, min_len=6, max_len=25)
    return root


def design_dict(prepared: Path, name: str = "tiny", **extra) -> dict:
    base = {"data": {"dataset": "synth", "prepared_dir": str(prepared)},
            "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "max_len": 10},
            "train": {"batch_size": 4, "n_evals": 0, "precision": "fp32", "device": "cpu", "threads": 1}}
    return {"name": name, "base": base, "seeds": [0], "grid": {"train.flops": [1e7, 2e7, 3e7]}, **extra}


def test_key_ignores_field_order_and_float_format(tmp_path):
    a = {"train": {"flops": 1e12, "lr": 0.001}, "model": {"d_model": 64}}
    b = {"model": {"d_model": 64}, "train": {"lr": 1e-3, "flops": 1000000000000.0}}
    c = {"model": {"d_model": 64}, "train": {"lr": 1e-3, "flops": 1000000000000}}
    (tmp_path / "a.yaml").write_text("train:\n  flops: 1e12\n  lr: 0.001\nmodel:\n  d_model: 64\n")
    from_yaml = load_run_config(tmp_path / "a.yaml")
    assert run_key(a) == run_key(b) == run_key(c) == run_key(from_yaml)
    assert run_key(a) != run_key({**a, "seed": 1})


def test_key_changes_with_run_format(monkeypatch):
    before = run_key({})
    monkeypatch.setattr(store_mod, "RUN_FORMAT", store_mod.RUN_FORMAT + 1)
    assert run_key({}) != before


def test_grid_and_seeds_expand_without_duplicates(prepared):
    d = Design.from_dict({**design_dict(prepared), "seeds": [0, 1],
                          "grid": {"train.flops": [1e7, 1e7, 2e7], "train.batch_size": [2, 4]}})
    configs = expand(d)
    assert len(configs) == 2 * 2 * 2  # duplicate budget collapses
    assert {(c.seed, c.train.flops, c.train.batch_size) for c in configs} == \
        {(s, f, b) for s in (0, 1) for f in (1e7, 2e7) for b in (2, 4)}


def test_isoflop_design_follows_the_aspect_rule():
    d = Design.from_dict({"name": "iso", "isoflop": {"budgets": [1e12, 1e14], "n_models": 5, "spread": 4,
                                                     "tokens_per_param": 20, "aspect": 32, "head_dim": 32}})
    configs = expand(d)
    for c in configs:
        assert c.model.d_model % 32 == 0 and c.model.n_heads == c.model.d_model // 32
        assert c.model.n_layers == max(1, round(c.model.d_model / 32)) and c.model.d_ff == 4 * c.model.d_model
    for budget in (1e12, 1e14):
        sizes = sorted(12 * c.model.n_layers * c.model.d_model**2 for c in configs if c.train.flops == budget)
        assert len(sizes) >= 3
        centre = (budget / 120) ** 0.5
        assert sizes[0] < centre < sizes[-1]
    big = [c.model.d_model for c in configs if c.train.flops == 1e14]
    small = [c.model.d_model for c in configs if c.train.flops == 1e12]
    assert max(big) > max(small)


ISO = {"budgets": [1e12]}


@pytest.mark.parametrize("change,expected", [
    ({"name": ""}, "name is ''; expected a design name"),
    ({"colour": 1}, "colour is not a setting"),
    ({"seeds": 3}, "seeds is 3; expected a non-empty list"),
    ({"seeds": [-1]}, "seeds: seed is -1; expected an integer >= 0"),
    ({"base": [1]}, "base is [1]; expected a mapping"),
    ({"base": {"model": {"d_model": 33}}}, "base: model.d_model is 33; expected a multiple of model.n_heads=2"),
    ({"grid": [1, 2]}, "grid is [1, 2]; expected a mapping with names as keys"),
    ({"grid": {"train.flops": []}}, "grid.train.flops is []; expected a non-empty list"),
    ({"grid": {1: [2]}}, "grid is {1: [2]}; expected a mapping with names as keys"),
    ({"grid": {"model.colour": [1]}}, "grid: model.colour is not a setting"),
    ({"grid": {"train.lr": [1e-3, -1]}}, "grid: train.lr is -1.0; expected a positive number"),
    ({"isoflop": [1e12]}, "isoflop is [1000000000000.0]; expected a mapping"),
    ({"isoflop": {"n_models": 3}}, "isoflop.budgets is missing"),
    ({"isoflop": {**ISO, "n_model": 3}}, "isoflop.n_model is not a setting; expected one of aspect, budgets,"),
    ({"isoflop": {"budgets": ["big"]}}, "isoflop.budgets is 'big'; expected a number"),
    ({"isoflop": {"budgets": [-1]}}, "isoflop.budgets is [-1.0]; expected positive FLOP counts"),
    ({"isoflop": {**ISO, "n_models": 0}}, "isoflop.n_models is 0; expected an integer >= 1"),
    ({"isoflop": {**ISO, "spread": 0.5}}, "isoflop.spread is 0.5; expected a number >= 1"),
    ({"isoflop": {**ISO, "head_dim": 0}}, "isoflop.head_dim is 0; expected an integer >= 1"),
    ({"isoflop": ISO, "grid": {"model.n_heads": [4]}}, "grid.model.n_heads is set by the isoflop block; expected keys"),
    ({"split": {"shares": [0.5], "total_params": 1e6}, "grid": {"model.embedder": ["id"]}},
     "grid.model.embedder is set by the split block; expected keys it leaves alone"),
    ({"isoflop": ISO, "split": {"shares": [0.5], "total_params": 1e6}}, "isoflop and split both set the model's shape"),
    ({"split": {"shares": [0.5]}}, "split.total_params is missing"),
    ({"split": {"shares": [0.5, 1.0], "total_params": 1e6}}, "split.shares is [0.5, 1.0]; expected shares in (0, 1)"),
    ({"split": {"shares": [0.5], "total_params": 0}}, "split.total_params is 0.0; expected a positive parameter"),
])
def test_bad_design_is_one_line_naming_file_and_key(prepared, change, expected):
    with pytest.raises(BfmError, match=re.escape(f"sweep.yaml: {expected}")) as err:
        Design.from_dict({**design_dict(prepared), **change}, "sweep.yaml")
    assert "\n" not in str(err.value)


def test_design_yaml_reads_budgets_as_numbers(tmp_path):
    path = tmp_path / "iso.yaml"
    path.write_text("name: iso\nbase:\ngrid:\nseeds: [0, 1]\nisoflop:\n  budgets: [1e12, 1e13]\n  n_models: 2\n")
    design = load_design(path)
    assert design.isoflop.budgets == (1e12, 1e13) and design.isoflop.n_models == 2
    assert design.base == {} and design.grid == {}  # empty sections
    assert {c.train.flops for c in expand(design)} == {1e12, 1e13}


@pytest.mark.parametrize("text,expected", [
    (None, "file not found; expected a sweep design"),
    ("- 1\n", "the top level is a list; expected a mapping: a sweep design"),
    ("name: [x\n", "not valid YAML (while parsing a flow sequence); expected a sweep design"),
    ("", "name is missing"),
])
def test_unreadable_design_file_is_named(tmp_path, text, expected):
    path = tmp_path / "sweep.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(BfmError, match=re.escape(f"{path}: {expected}")):
        load_design(path)


def test_isoflop_budget_with_fewer_distinct_sizes_is_reported(caplog):
    design = Design.from_dict({"name": "iso", "isoflop": {"budgets": [1e9, 1e15], "n_models": 5}})
    with caplog.at_level("WARNING", logger="bfmscale.sweep.design"):
        configs = expand(design)
    sizes = {f: sum(c.train.flops == f for c in configs) for f in (1e9, 1e15)}
    assert sizes == {1e9: 1, 1e15: 5}
    assert [r.getMessage()[:47] for r in caplog.records] == ["isoflop budget 1e+09: 1 of 5 sizes are distinct"]


def test_readme_design_example_expands_as_it_says(caplog):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    with caplog.at_level("WARNING", logger="bfmscale.sweep.design"):
        configs = expand(Design.from_dict(yaml.safe_load(blocks[0]), "README.md"))
    assert not caplog.records
    assert len(configs) == 30 and {c.train.objective for c in configs} == {"full", "sampled"}
    assert sorted({c.train.flops for c in configs}) == [1e12, 3e12, 1e13]


def test_each_block_declares_exactly_the_keys_its_points_set(prepared):
    from bfmscale.sweep.design import ISOFLOP_KEYS, SPLIT_KEYS, IsoflopSpec, SplitSpec, _isoflop_points, _split_points

    iso = _isoflop_points(IsoflopSpec(budgets=(1e12,), n_models=2))
    catalog = build_catalog(load_prepared(prepared / "synth"), 2048)
    split = _split_points(SplitSpec(shares=(0.3,), total_params=1e5), RunConfig(), catalog, EventInputs(numeric=1))
    for points, keys in ((iso, ISOFLOP_KEYS), (split, SPLIT_KEYS)):
        assert all(sorted(k for k, _ in point) == sorted(keys) for point in points)


def test_shape_for_hits_the_target_size():
    for n in (1e5, 1e6, 1e7):
        s = shape_for(n)
        assert 0.3 < 12 * s["n_layers"] * s["d_model"] ** 2 / n < 3


@pytest.mark.parametrize("total", [2e5, 2e6])
@pytest.mark.parametrize("events", [EventInputs(), EventInputs(numeric=2, categorical=(6,))])
def test_split_design_reaches_each_share(prepared, total, events, caplog):
    """The share is met to within 10% even where the aspect rule gives every share the same contextualizer (2e5)."""

    ds = load_prepared(prepared / "synth")
    catalog = build_catalog(ds, 2048)
    shares = (0.02, 0.05, 0.2, 0.5)
    d = Design.from_dict({"name": "split", "base": {"model": {"text_buckets": 2048}},
                          "split": {"shares": list(shares), "total_params": total}})
    with caplog.at_level("WARNING", logger="bfmscale.sweep.design"):
        configs = expand(d, catalog, events)
    assert not caplog.records
    for cfg, target in zip(configs, shares):
        counts = param_counts(cfg.model, catalog, events)
        assert embedder_share(counts) == pytest.approx(target, rel=0.1)
        assert total / 2 < counts["total"] < total * 2


def test_split_share_out_of_reach_is_reported(prepared, caplog):
    catalog = build_catalog(load_prepared(prepared / "synth"), 2048)
    d = Design.from_dict({"name": "split", "split": {"shares": [1e-4, 0.2], "total_params": 2e5}})
    with caplog.at_level("WARNING", logger="bfmscale.sweep.design"):
        expand(d, catalog)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["split share 0.0001"]


def test_sweep_runs_skips_done_and_collects(prepared, tmp_path):
    configs = expand(Design.from_dict(design_dict(prepared)))
    store = RunStore(tmp_path / "runs")
    first = run_sweep("tiny", configs, store, LocalExecutor())
    assert (first.done, first.skipped, first.failed) == (3, 0, 0)
    mtimes = {k: (store.dir(k) / "metrics.json").stat().st_mtime_ns for k in store.keys()}
    second = run_sweep("tiny", configs, store, LocalExecutor())
    assert (second.done, second.skipped) == (0, 3)
    assert mtimes == {k: (store.dir(k) / "metrics.json").stat().st_mtime_ns for k in store.keys()}
    table = collect(configs, store)
    assert list(table["status"]) == ["done"] * 3
    for col in ("train.flops", "test_ndcg@10", "params.embedder", "params.transformer", "tokens", "epochs",
                "wall_time", "peak_memory_bytes", "valid_hr@10", "machine"):
        assert col in table.columns
    assert (table["flops"] <= table["train.flops"]).all()
    status = store_status(store)
    assert status.loc[0, "runs"] == 3 and status.loc[0, "sweep"] == "tiny"
    for k in store.keys():
        assert "done:" in (store.dir(k) / "run.log").read_text()
        assert store.status(k)["machine"].startswith("cpu: ")  # what the run's wall time was measured on


def test_sweep_hands_the_executor_its_largest_budgets_first(prepared, tmp_path):
    class Recorder:
        def run(self, store, configs, sweep, on_finished):
            self.order = [(c.train.flops, c.seed) for c in configs]
            for c in configs:
                on_finished(c, "done")

    configs = expand(Design.from_dict(design_dict(prepared, seeds=[0, 1])))  # design order: seed, then budget
    assert [(c.train.flops, c.seed) for c in configs][:3] == [(1e7, 0), (2e7, 0), (3e7, 0)]
    executor = Recorder()
    summary = run_sweep("tiny", configs, RunStore(tmp_path / "runs"), executor)
    assert executor.order == [(3e7, 0), (3e7, 1), (2e7, 0), (2e7, 1), (1e7, 0), (1e7, 1)]  # ties keep design order
    assert summary.done == 6


def test_failing_run_is_recorded_and_others_finish(prepared, tmp_path):
    d = design_dict(prepared, grid={"train.n_negatives": [4, 500]})
    d["base"]["train"].update(objective="sampled", flops=1e7)
    configs = expand(Design.from_dict(d))
    store = RunStore(tmp_path / "runs")
    summary = run_sweep("neg", configs, store, LocalExecutor())
    assert (summary.done, summary.failed) == (1, 1)
    bad = run_key(configs[1])
    st = store.status(bad)
    assert st["state"] == "failed" and "n_negatives" in st["error"] and "Traceback" in st["traceback"]
    again = run_sweep("neg", configs, store, LocalExecutor())
    assert (again.done, again.failed_before) == (0, 1)
    retried = run_sweep("neg", configs, store, LocalExecutor(), retry_failed=True)
    assert retried.failed == 1  # retried (and failed again), not skipped
    table = collect(configs, store)
    assert table.set_index("key").loc[bad, "status"] == "failed"
    assert "n_negatives" in table.set_index("key").loc[bad, "error"]


def test_half_written_runs_are_redone(prepared, tmp_path):
    configs = expand(Design.from_dict(design_dict(prepared)))
    store = RunStore(tmp_path / "runs")
    k0, k1 = run_key(configs[0]), run_key(configs[1])
    # k0: killed while running (config + running status); k1: says done but lacks metrics
    store.start(configs[0])
    store.dir(k1).mkdir(parents=True)
    (store.dir(k1) / "status.json").write_text(json.dumps({"state": "done"}))
    assert store.state(k0) == "running" and store.state(k1) == "missing"
    with pytest.raises(KeyError):
        store.metrics(k1)
    summary = run_sweep("tiny", configs, store, LocalExecutor())
    assert summary.done == 3 and all(store.is_done(run_key(c)) for c in configs)


def _table(configs, store):
    return collect(configs, store).set_index("key")[METRICS].sort_index()


def _state_and_parent(stat: Path) -> tuple[str, int] | None:
    """A process's state letter and parent pid from its /proc/<pid>/stat (Linux), or None once it is gone."""
    try:
        state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, IndexError):
        return None
    return state, int(ppid)


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        info = _state_and_parent(stat)
        if info is not None and info[1] == pid and info[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    info = _state_and_parent(Path(f"/proc/{pid}/stat"))
    return info is not None and info[0] != "Z"


def test_sigkill_then_resume_equals_uninterrupted(prepared, tmp_path):
    """A sweep killed with SIGKILL keeps its finished runs, its worker processes end instead of lingering as orphans,
    and the resumed sweep equals an uninterrupted one."""
    d = design_dict(prepared, grid={"train.flops": [2e7, 3e7, 4e7, 5e7, 6e7, 7e7]})
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump(d))
    configs = expand(load_design(path))
    killed = RunStore(tmp_path / "killed")
    cmd = [sys.executable, "-m", "bfmscale", "sweep", str(path), "--store", str(killed.root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and sum(killed.is_done(run_key(c)) for c in configs) < 2:
        time.sleep(0.05)
    kids = _children(proc.pid) if Path("/proc/self/stat").exists() else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {run_key(c) for c in configs if killed.is_done(run_key(c))}
    assert 2 <= len(finished) < len(configs)
    if Path("/proc/self/stat").exists() and make_executor("local").workers > 1:
        assert kids, "expected the sweep's worker processes"
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)], "worker processes outlived the killed sweep"
    mtimes = {k: (killed.dir(k) / "metrics.json").stat().st_mtime_ns for k in finished}
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert mtimes == {k: (killed.dir(k) / "metrics.json").stat().st_mtime_ns for k in finished}
    clean = RunStore(tmp_path / "clean")
    run_sweep("tiny", configs, clean, LocalExecutor())
    pd.testing.assert_frame_equal(_table(configs, killed), _table(configs, clean))


def test_process_pool_matches_in_process(prepared, tmp_path):
    configs = expand(Design.from_dict(design_dict(prepared)))
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    run_sweep("tiny", configs, a, LocalExecutor())
    run_sweep("tiny", configs, b, LocalExecutor(workers=2, threads=1))
    pd.testing.assert_frame_equal(_table(configs, a), _table(configs, b))


def test_ray_executor_matches_local(prepared, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    d = design_dict(prepared)
    d["grid"]["train.n_negatives"] = [3]
    d["base"]["train"]["objective"] = "sampled"
    configs = expand(Design.from_dict(d))
    bad = RunConfig.from_dict({**configs[0].to_dict(), "train": {**configs[0].to_dict()["train"], "n_negatives": 999}})
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "ray")
    run_sweep("tiny", configs, local, LocalExecutor())
    summary = run_sweep("tiny", configs + [bad], remote, RayExecutor(num_cpus=2))
    assert (summary.done, summary.failed) == (3, 1)
    assert "n_negatives" in remote.status(run_key(bad))["error"]
    pd.testing.assert_frame_equal(_table(configs, local), _table(configs, remote))
    assert "done:" in (remote.dir(run_key(configs[0])) / "run.log").read_text()


def test_cli_sweep_strict_and_status(prepared, tmp_path, capsys):
    from bfmscale.cli import main

    d = design_dict(prepared, grid={"train.n_negatives": [4, 500]})
    d["base"]["train"].update(objective="sampled", flops=1e7)
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(d))
    store = str(tmp_path / "runs")
    assert main(["sweep", str(path), "--store", store, "--out", str(tmp_path / "t.csv")]) == 0
    assert main(["sweep", str(path), "--store", store, "--strict"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out
    assert len(pd.read_csv(tmp_path / "t.csv")) == 2
    assert main(["status", "--store", store]) == 0
    assert "done" in capsys.readouterr().out


def test_cli_dry_run_lists_runs_and_trains_none(prepared, tmp_path, capsys):
    from bfmscale.cli import main

    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(design_dict(prepared, grid={"train.flops": [1e7, 2e7], "model.d_model": [16, 32]})))
    store = tmp_path / "runs"
    assert main(["sweep", str(path), "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["key", "status", "model.d_model", "train.flops", "params", "embedder_share"]
    assert len(out) == 6 and all(line.split()[1] == "missing" for line in out[1:5])
    ds = load_prepared(prepared / "synth")
    seqs = build_sequences(ds)
    for line in out[1:5]:  # each run's size is that of the model it would build
        _, _, d, _, params, share = line.split()
        cfg = RunConfig.from_dict(apply_values(Design.from_dict(design_dict(prepared)).base, [("model.d_model", int(d))]))
        model = BehaviorModel(cfg.model, build_catalog(ds, cfg.model.text_buckets), seqs.event_inputs)
        assert int(params) == sum(p.numel() for p in model.parameters())
        emb = sum(p.numel() for p in model.embedder.parameters())
        assert float(share) == pytest.approx(emb / int(params), rel=1e-3)
    assert out[5] == "sweep tiny: 4 runs, 0 done, 4 to run (6e+07 training FLOPs); nothing was run"
    assert not store.exists()
    design = Design.from_dict(design_dict(prepared, grid={"train.flops": [1e7], "model.d_model": [16]}))
    run_sweep("tiny", expand(design), RunStore(store), LocalExecutor())
    assert main(["sweep", str(path), "--store", str(store), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("sweep tiny: 4 runs, 1 done, 3 to run (5e+07")


def test_cli_split_sweep_builds_the_catalog_and_runs_each_share(prepared, tmp_path, capsys):
    from bfmscale.cli import main

    d = design_dict(prepared, grid={}, split={"shares": [0.2, 0.6], "total_params": 2e4, "head_dim": 8})
    d["base"]["model"] = {"max_len": 10}
    d["base"]["train"]["flops"] = 1e7
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(d))
    store = tmp_path / "runs"
    assert main(["status", "--store", str(store)]) == 0 and "no runs" in capsys.readouterr().out
    assert main(["sweep", str(path), "--store", str(store), "--workers", "1", "--out", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == 2 and (table["status"] == "done").all()
    assert table["embedder_share"].tolist() == pytest.approx([0.2, 0.6], abs=0.1)  # coarse shapes at 2e4 params


@pytest.mark.parametrize("flag,value", [("--workers", "0"), ("--threads", "-1"), ("--workers", "two")])
def test_cli_sweep_rejects_a_bad_worker_or_thread_count(tmp_path, capsys, flag, value):
    from bfmscale.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(tmp_path / "d.yaml"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: '{value}': expected an integer >= 1" in err


def test_cli_sweep_takes_worker_and_thread_counts():
    from bfmscale.cli import build_parser

    args = build_parser().parse_args(["sweep", "d.yaml", "--workers", "2", "--threads", "3"])
    assert (args.workers, args.threads) == (2, 3)


def test_local_executor_default_layout_is_one_single_threaded_worker_per_core(monkeypatch):
    """The measured default: a worker per core, one thread each; an explicit worker count shares the cores."""
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert make_executor("local") == LocalExecutor(workers=4, threads=1)
    assert make_executor("local", workers=1) == LocalExecutor(workers=1, threads=4)
    assert make_executor("local", workers=2, threads=3) == LocalExecutor(workers=2, threads=3)
