"""User-facing errors: one line that names the file, column or parameter and what was expected."""

from __future__ import annotations


class BfmError(Exception):
    """A bad input or environment problem; the CLI prints its message as one line and exits non-zero."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
