"""Argument types the benches share: a bad value stops argparse with one line that names the option and what was
expected, before any work starts; `run` turns the package's BfmError (a missing dataset, a bad override) into one
line as well, as the `bfmscale` command does."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bfmscale.errors import BfmError

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
