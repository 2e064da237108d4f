"""One style for every figure, and one way to save them (PNG + SVG, atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from bfmscale.atomic import atomic_path  # noqa: E402


def apply_style() -> None:
    """Seaborn 'whitegrid', colorblind palette, compact sizes."""
    sns.set_theme(style="whitegrid", palette="colorblind", context="notebook")
    plt.rcParams.update({"figure.figsize": (6.0, 4.0), "figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "svg.hashsalt": "bfmscale", "svg.fonttype": "none"})


def save_figure(fig: plt.Figure, directory: Path | str, name: str) -> list[Path]:
    """Save `fig` as <directory>/<name>.png and .svg; returns both paths."""
    paths = []
    for ext in ("png", "svg"):
        path = Path(directory) / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    return paths
