"""Run a parameterized notebook with papermill and render it to HTML, both written atomically and byte-stable."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from bfmscale.atomic import atomic_path, umask, write_text
from bfmscale.errors import BfmError

log = logging.getLogger(__name__)

TIMING_KEYS = ("start_time", "end_time", "duration")


def stabilize(nb: Any, output_path: Path) -> None:
    """Drop wall-clock stamps, the temp path and the injected cell's random id, so a re-run writes the same bytes."""
    nb.metadata.papermill.output_path = str(output_path)
    for part in [nb, *nb.cells]:
        for key in TIMING_KEYS:
            part.metadata.get("papermill", {}).pop(key, None)
        part.metadata.pop("execution", None)
        if "injected-parameters" in part.metadata.get("tags", []):
            part.id = "injected-parameters"


def render_notebook(src: Path, results: Path, parameters: dict[str, Any], cwd: Path | None = None) -> tuple[Path, Path]:
    """Execute `src` into results/notebooks/<name>.ipynb and export <name>.html; an unknown parameter or a failing cell
    is a one-line error."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    if not src.is_file():
        raise BfmError(f"{src}: notebook not found; expected one of notebooks/*.ipynb")
    known = papermill.inspect_notebook(str(src))  # the `parameters` cell's names (papermill only warns on others)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise BfmError(f"{src}: parameter {unknown[0]!r} is unknown; expected one of {', '.join(known) or '(none)'}")
    out_dir = results / "notebooks"
    out_nb, out_html = out_dir / f"{src.stem}.ipynb", out_dir / f"{src.stem}.html"
    failed = out_dir / f"{src.stem}.failed.ipynb"
    log.info("executing %s with %s", src, parameters)
    with atomic_path(out_nb) as tmp:
        try:
            papermill.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3",
                                       cwd=str(cwd or Path.cwd()), progress_bar=True)
        except papermill.PapermillExecutionError as exc:
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, failed)
            raise BfmError(f"{src}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}; "
                           f"the executed notebook is in {failed}") from exc
        nb = nbformat.read(tmp, as_version=4)
        stabilize(nb, out_nb)
        nbformat.write(nb, tmp)
    failed.unlink(missing_ok=True)
    body, _ = HTMLExporter().from_filename(str(out_nb))
    write_text(out_html, body)
    log.info("wrote %s and %s", out_nb, out_html)
    return out_nb, out_html
