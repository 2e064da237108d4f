"""One logging format for the CLI and notebooks."""

from __future__ import annotations

import logging


def setup_logging(level: int = logging.INFO) -> None:
    """INFO to stderr, `time level name: message`."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
