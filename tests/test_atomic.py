"""atomic_dir / atomic_path: all-or-nothing replacement, no temp files left, permissions from the umask."""

from __future__ import annotations

import json
import stat

import pytest

from bfmscale.atomic import atomic_dir, atomic_path, write_json, write_text
from conftest import leftovers, snapshot


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Boom(Exception):
    pass


def test_atomic_dir_success_replaces_previous_content(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (final / "sub").mkdir()
    (final / "sub" / "deep.txt").write_text("deep")
    with atomic_dir(final) as tmp:
        assert tmp != final and tmp.parent == final.parent and tmp.is_dir()
        assert snapshot(final) == {"old.txt": b"old", "sub/deep.txt": b"deep"}  # untouched while building
        (tmp / "new.txt").write_text("new")
    assert snapshot(final) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_creates_missing_parents(tmp_path):
    final = tmp_path / "a" / "b" / "out"
    with atomic_dir(final) as tmp:
        (tmp / "x").write_bytes(b"1")
    assert snapshot(final) == {"x": b"1"}


@pytest.mark.parametrize("previous", [True, False])
def test_atomic_dir_failure_keeps_previous_and_cleans_up(tmp_path, previous):
    final = tmp_path / "out"
    if previous:
        final.mkdir()
        (final / "keep.txt").write_text("keep")
    before = snapshot(final)
    with pytest.raises(Boom):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            (tmp / "nested").mkdir()
            (tmp / "nested" / "f").write_text("x")
            raise Boom
    assert snapshot(final) == before
    assert (final.exists()) is previous
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if previous else [])


def test_atomic_path_success_replaces_file(tmp_path):
    final = tmp_path / "f.json"
    final.write_text("old")
    with atomic_path(final) as tmp:
        assert tmp != final and tmp.parent == tmp_path
        assert final.read_text() == "old"
        tmp.write_text("new")
    assert final.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


@pytest.mark.parametrize("previous", [True, False])
def test_atomic_path_failure_keeps_previous_and_cleans_up(tmp_path, previous):
    final = tmp_path / "table.csv"
    if previous:
        final.write_text("a,b\n1,2\n")
    with pytest.raises(Boom):
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise Boom
    if previous:
        assert final.read_text() == "a,b\n1,2\n"
    else:
        assert not final.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["table.csv"] if previous else [])


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_path_honours_umask(tmp_path, umask, mask):
    umask(mask)
    final = tmp_path / "f.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("x")
    assert mode(final) == 0o666 & ~mask  # e.g. 0644 under 022, never mkstemp's 0600
    write_text(tmp_path / "g.txt", "y")
    assert mode(tmp_path / "g.txt") == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_dir_honours_umask(tmp_path, umask, mask):
    umask(mask)
    final = tmp_path / "d"
    with atomic_dir(final) as tmp:
        (tmp / "plain.txt").write_text("x")
        write_json(tmp / "meta.json", {"a": 1})
    assert mode(final) == 0o777 & ~mask  # e.g. 0755 under 022, never mkdtemp's 0700
    assert mode(final / "plain.txt") == 0o666 & ~mask
    assert mode(final / "meta.json") == 0o666 & ~mask


def test_write_json_is_sorted_and_indented(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    text = path.read_text()
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert json.loads(text) == {"a": [1, 2], "b": 1}
