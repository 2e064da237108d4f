"""Notebooks are stored stripped and parameterized; render_notebook executes them atomically."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
import yaml

from bfmscale.errors import BfmError
from bfmscale.notebooks import render_notebook
from conftest import VENV_BIN, leftovers

NOTEBOOKS = Path(__file__).parent / ".." / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
EXPECTED_PARAMETERS = {"data_profile": {"dataset", "prepared_dir", "figures_dir", "tables_dir"}}


def test_notebooks_exist():
    assert [p.stem for p in ALL] and "data_profile" in [p.stem for p in ALL]


@pytest.mark.parametrize("nb_path", ALL, ids=[p.stem for p in ALL])
def test_stored_stripped(nb_path):
    proc = subprocess.run([str(VENV_BIN / "nbstripout"), "--verify", str(nb_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.parametrize("nb_path", ALL, ids=[p.stem for p in ALL])
def test_one_parameters_cell_and_valid(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    names = set(papermill.inspect_notebook(str(nb_path)))
    assert nb_path.stem in EXPECTED_PARAMETERS, f"add {nb_path.stem} to EXPECTED_PARAMETERS"
    assert names == EXPECTED_PARAMETERS[nb_path.stem]


def test_render_data_profile(profile_dataset, tmp_path):
    results = tmp_path / "results"
    params = {"dataset": profile_dataset.name, "prepared_dir": str(profile_dataset.parent),
              "figures_dir": str(tmp_path / "figures" / "data_profile"), "tables_dir": str(tmp_path / "tables")}
    out_nb, out_html = render_notebook(NOTEBOOKS / "data_profile.ipynb", results, params, cwd=tmp_path)
    assert out_nb == results / "notebooks" / "data_profile.ipynb"
    assert out_html == results / "notebooks" / "data_profile.html"
    assert sorted(p.name for p in (results / "notebooks").iterdir()) == ["data_profile.html", "data_profile.ipynb"]

    nb = nbformat.read(out_nb, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(injected) == 1 and f'tables_dir = "{tmp_path / "tables"}"' in injected[0].source
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert "Data profile" in out_html.read_text() and "<html" in out_html.read_text()

    table = pd.read_csv(tmp_path / "tables" / "data_stats.csv")
    stats = dict(zip(table["statistic"], table["value"].astype(str)))
    assert (stats["users"], stats["items"], stats["events"], stats["users_before_filter"]) == ("3", "5", "12", "4")
    assert set(table["dataset"]) == {"syn"}

    figures = tmp_path / "figures" / "data_profile"
    names = [f"{n}.{ext}" for n in ("events_over_time", "item_popularity", "sequence_lengths") for ext in ("png", "svg")]
    assert sorted(p.name for p in figures.iterdir()) == names
    for name in names:
        data = (figures / name).read_bytes()
        assert data.startswith(b"\x89PNG") if name.endswith(".png") else b"<svg" in data


def _tiny_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_failing_notebook(tmp_path):
    src = _tiny_notebook(tmp_path / "boom.ipynb", "y = x + 1\nraise RuntimeError('kaput')")
    results = tmp_path / "results"
    with pytest.raises(BfmError) as exc:
        render_notebook(src, results, {"x": 2}, cwd=tmp_path)
    msg = str(exc.value)
    failed = results / "notebooks" / "boom.failed.ipynb"
    assert str(src) in msg and "RuntimeError" in msg and "kaput" in msg and str(failed) in msg
    assert "\n" not in msg
    assert not (results / "notebooks" / "boom.ipynb").exists()
    assert not (results / "notebooks" / "boom.html").exists()
    assert sorted(p.name for p in (results / "notebooks").iterdir()) == ["boom.failed.ipynb"]
    executed = nbformat.read(failed, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "RuntimeError"

    # fixed: the next render succeeds and removes the stale .failed.ipynb
    _tiny_notebook(src, "y = x + 1\nprint('y =', y)")
    out_nb, out_html = render_notebook(src, results, {"x": 2}, cwd=tmp_path)
    assert sorted(p.name for p in (results / "notebooks").iterdir()) == ["boom.html", "boom.ipynb"]
    assert "y = 3" in out_nb.read_text()
    assert leftovers(results / "notebooks") == []


def test_rerun_writes_the_same_bytes(tmp_path):
    """No wall-clock stamps, temp paths or random cell ids in the executed copy: a re-run leaves dvc.lock alone."""
    src = _tiny_notebook(tmp_path / "calm.ipynb", "print(x * 2)")
    results = tmp_path / "results"
    first = [p.read_bytes() for p in render_notebook(src, results, {"x": 21}, cwd=tmp_path)]
    second = [p.read_bytes() for p in render_notebook(src, results, {"x": 21}, cwd=tmp_path)]
    assert first == second
    nb = nbformat.read(results / "notebooks" / "calm.ipynb", as_version=4)
    assert nb.metadata.papermill.output_path == str(results / "notebooks" / "calm.ipynb")
    assert nb.metadata.papermill.parameters == {"x": 21} and "42" in first[0].decode()
    for meta in [nb.metadata] + [c.metadata for c in nb.cells]:
        assert not {"start_time", "end_time", "duration"} & set(meta.get("papermill", {})) and "execution" not in meta


def test_missing_notebook(tmp_path):
    with pytest.raises(BfmError, match="nope.ipynb: notebook not found"):
        render_notebook(tmp_path / "nope.ipynb", tmp_path / "results", {})
    assert not (tmp_path / "results" / "notebooks" / "nope.ipynb").exists()


def test_unknown_parameter_is_a_one_line_error_before_running(tmp_path):
    src = _tiny_notebook(tmp_path / "calm.ipynb", "print(x * 2)")
    with pytest.raises(BfmError, match=re.escape(f"{src}: parameter 'y' is unknown; expected one of x")):
        render_notebook(src, tmp_path / "results", {"x": 1, "y": 2}, cwd=tmp_path)
    assert not (tmp_path / "results" / "notebooks").exists()


def test_cli_param_without_equals_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from bfmscale.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "p", "profiles": {"p": {"dataset": "ml-100k"}}}))
    assert main(["notebook", "data_profile", "-p", "oops", "--notebooks", str(NOTEBOOKS)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bfmscale notebook: error: ") and "oops" in err and err.count("\n") == 1


def test_failed_notebook_honours_umask(tmp_path, monkeypatch, umask):
    import stat

    umask(0o022)

    def fake_execute(src, out, **kwargs):  # what papermill does on a failing cell: write the notebook, then raise
        Path(out).write_text("{}")
        raise papermill.PapermillExecutionError(1, 2, "raise X", "RuntimeError", "kaput", [])

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    src = _tiny_notebook(tmp_path / "boom.ipynb", "pass")
    with pytest.raises(BfmError, match="cell 2 raised RuntimeError: kaput"):
        render_notebook(src, tmp_path / "results", {}, cwd=tmp_path)
    failed = tmp_path / "results" / "notebooks" / "boom.failed.ipynb"
    assert failed.read_text() == "{}"
    assert stat.S_IMODE(failed.stat().st_mode) == 0o644
