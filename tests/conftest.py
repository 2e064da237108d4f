"""Shared helpers: small synthetic tables, a tmp project driven through the real CLI, directory snapshots."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(NO_CUDA, reason="no GPU")])])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device a test should hold on: the CPU always, a CUDA GPU where there is one (`pytest -m cuda`)."""
    return torch.device(request.param)


def force_score_blocks(monkeypatch: pytest.MonkeyPatch, block: int, min_rows: int = 1) -> None:
    """fp32 CPU table scores in products of `block` table rows from `min_rows` rows of h on, on any CPU (the rule
    holds on AMD CPUs only, see `fused_ce.table_scores`)."""
    from bfmscale.train import fused_ce

    monkeypatch.setattr(fused_ce, "cpu_is_amd", lambda: True)
    monkeypatch.setattr(fused_ce, "SCORE_BLOCK", block)
    monkeypatch.setattr(fused_ce, "SCORE_BLOCK_MIN_ROWS", min_rows)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under `path` (relative name -> bytes), or None when `path` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary siblings (.<name>.*tmp*, .<name>.old-*) that an atomic write must not leave behind."""
    directory = Path(directory)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".old-" in p.name))


@pytest.fixture
def umask():
    """Set a process umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


ERROR_LINE = re.compile(r"bfmscale (\w+): error: ([^\r\n]*)")


class OwnProject:
    """A tmp project with `datasets.own` (parquet) driven through `bfmscale.cli.main`."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.prepared = root / "data" / "prepared" / "own"
        self.raw = root / "data" / "raw" / "own"

    def params(self, profile: str = "p", dataset: str = "own", prepare: dict | None = None,
               item_features: dict | None = None, items: bool = True, extra_profiles: dict | None = None) -> dict:
        params = {
            "profile": profile,
            "profiles": {"p": {"dataset": dataset}, **(extra_profiles or {})},
            "datasets": {"own": {"source": "parquet", "events": "events.parquet",
                                 "items": "items.parquet" if items else None,
                                 "item_features": item_features or {}}},
            "prepare": {"min_history": 3, "temporal_quantile": 0.5, "dedupe": False, **(prepare or {})},
        }
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return params

    def write(self, events: pd.DataFrame, items: pd.DataFrame | None = None, **params) -> None:
        events.to_parquet(self.root / "events.parquet", index=False)
        if items is not None:
            items.to_parquet(self.root / "items.parquet", index=False)
        self.params(items=items is not None, **params)

    def run(self, *argv: str) -> tuple[int, str, str]:
        """Run the CLI; returns (exit code, stdout, stderr) of this call only."""
        from bfmscale.cli import main

        self.capsys.readouterr()
        rc = main(list(argv))
        out, err = self.capsys.readouterr()
        return rc, out, err

    def fetch_prepare(self) -> tuple[int, str, str]:
        rc, out, err = self.run("fetch")
        if rc != 0:
            return rc, out, err
        return self.run("prepare")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> OwnProject:
    monkeypatch.chdir(tmp_path)
    return OwnProject(tmp_path, capsys)


@pytest.fixture
def fd_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> OwnProject:
    """Like `project`, capturing at the file-descriptor level: the registry fetch runs pip with stdout=sys.stderr,
    which needs a real descriptor (see test_fetch.test_download_wheel_with_redirected_stderr)."""
    monkeypatch.chdir(tmp_path)
    return OwnProject(tmp_path, capfd)


def good_events() -> pd.DataFrame:
    """3 users x 3-4 events over items a..d (all users have >= 3 events)."""
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u2", "u3", "u3", "u3", "u3"],
        "item_id": ["a", "b", "c", "a", "c", "d", "b", "a", "d", "c"],
        "timestamp": [10, 20, 30, 15, 25, 35, 12, 22, 32, 42],
    })


def good_items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": ["a", "b", "c", "d"], "brand": ["x", "y", "x", "z"]})


# A small synthetic dataset for the profile/notebook tests; the expected values in test_profile.py are derived
# by hand from this table (u4 has 2 events and is dropped by min_history=3).
PROFILE_EVENTS = [
    # user, item, timestamp, rating, device
    ("u1", "A", 100, 4.0, "web"),
    ("u1", "B", 200, 3.0, "app"),
    ("u1", "C", 300, 5.0, "web"),
    ("u1", "A", 400, 2.0, "web"),
    ("u2", "A", 150, 1.0, "app"),
    ("u2", "B", 250, 4.0, "app"),
    ("u2", "D", 350, 4.0, "web"),
    ("u3", "A", 120, 5.0, "tv"),
    ("u3", "C", 220, 3.0, "web"),
    ("u3", "E", 320, 2.0, "app"),
    ("u3", "B", 420, 1.0, "web"),
    ("u3", "A", 520, 5.0, "tv"),
    ("u4", "B", 50, 3.0, "web"),
    ("u4", "C", 60, 3.0, "web"),
]
PROFILE_ITEMS = pd.DataFrame({
    "item_id": ["A", "B", "C", "D", "E"],
    "genres": [["x", "y"], ["y"], [], ["z"], ["x"]],
    "year": [1990.0, float("nan"), 2000.0, 2001.0, 1995.0],
    "kind": ["k1", "k2", None, "k1", "k1"],
    "title": ["Alpha", "Beta", "", "Delta", "Echo"],
})
PROFILE_TYPES = {"genres": "multi_categorical", "year": "numeric", "kind": "categorical", "title": "text"}


@pytest.fixture(scope="session")
def profile_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared-like directory <tmp>/prepared/syn built by the prepare stage from PROFILE_EVENTS."""
    from bfmscale.data.prepare import PrepareConfig, prepare
    from bfmscale.data.readers import RawData

    events = pd.DataFrame(PROFILE_EVENTS, columns=["user_id", "item_id", "timestamp", "rating", "device"])
    raw = RawData(events=events, events_source="events.parquet", items=PROFILE_ITEMS.copy(), items_source="items.parquet",
                  item_features=dict(PROFILE_TYPES))
    root = tmp_path_factory.mktemp("profile")
    prepare(raw, root / "prepared" / "syn", PrepareConfig(min_history=3, temporal_quantile=0.9), "syn")
    return root / "prepared" / "syn"
