"""What the benches share: argument types (a bad value stops argparse with one line that names the option and what
was expected, before any work starts); `run`, which turns the package's BfmError (a missing dataset, a bad override)
into one line as well, as the `bfmscale` command does; and `provenance`, the lines a bench's output starts with."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from bfmscale.device import describe_machine
from bfmscale.errors import BfmError

REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T", int, float, str)
_NAMES = {int: "integer", float: "number", str: "name"}


def _one(text: str, kind: type[T], positive: bool, choices: Sequence[str] | None) -> T:
    """One value of `kind`, checked; ArgumentTypeError says what was expected."""
    if choices is not None:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(choices)}")
        return kind(text)
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a{' positive' if positive else 'n'} "
                                         f"{_NAMES[kind]}") from None
    if positive and not value > 0:  # `not >` also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive {_NAMES[kind]}")
    return value


def positive(kind: type[T]) -> Callable[[str], T]:
    """argparse type: one positive int or float."""
    return lambda text: _one(text, kind, True, None)


def comma_list(kind: type[T], choices: Sequence[str] | None = None) -> Callable[[str], list[T]]:
    """argparse type: a non-empty comma list of positive numbers of `kind`, or of names from `choices`."""
    def parse(text: str) -> list[T]:
        parts = text.split(",")
        if not all(p.strip() for p in parts):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list without empty items")
        return [_one(p.strip(), kind, kind is not str, choices) for p in parts]
    return parse


def run(main: Callable[[], None]) -> None:
    """Call a bench's main; a BfmError ends it with one line, as argparse words its errors (exit status 1), instead
    of a traceback."""
    try:
        main()
    except BfmError as exc:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {exc}") from None


def commit(repo: Path = REPO) -> str:
    """The checkout's short commit, with a mark when tracked files differ from it; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout
    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no").strip()
                       else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(device: torch.device = torch.device("cpu")) -> str:
    """When (UTC), at which commit, by which command and on which machine a bench's figures were measured."""
    exe = Path(sys.executable)
    if exe.is_relative_to(Path.cwd()):
        exe = exe.relative_to(Path.cwd())
    return (f"# {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, bfmscale at {commit()}: "
            f"{shlex.join([str(exe), *sys.argv])}\n# {describe_machine(device)}")
