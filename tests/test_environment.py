"""The environment is pinned: pyproject and environment.yml agree, CI and README name the two set-up commands, and
dvc.lock records the code its stages ran with."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib

import pytest
import yaml

from conftest import ROOT, VENV_BIN

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(reqs: list[str], where: str) -> dict[str, str]:
    pins = {}
    for req in reqs:
        m = PIN.match(req.strip())
        assert m, f"{where}: {req!r} is not pinned as name==version"
        name = _norm(m.group(1))
        assert name not in pins, f"{where}: {name} appears twice"
        pins[name] = m.group(2)
    return pins


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_pins(pyproject: dict) -> dict[str, str]:
    project = pyproject["project"]
    deps = _pins(project["dependencies"], "pyproject dependencies")
    dev = _pins(project["optional-dependencies"]["dev"], "pyproject dev extra")
    assert not set(deps) & set(dev), "a package is pinned both as a dependency and in the dev extra"
    return deps | dev


def environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml must have exactly one pip: list"
    return _pins(pip_lists[0], "environment.yml pip")


def test_every_dependency_is_pinned_exactly(pyproject):
    project = pyproject["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert reqs, "no dependencies declared"
    for req in reqs:
        assert PIN.match(req), f"pyproject: {req!r} is not pinned with =="
    # the dev extra carries the test tools
    assert {"pytest", "pytest-xdist", "nbstripout"} <= set(pyproject_pins(pyproject))


def test_torch_pin(pyproject):
    assert "torch==2.13.0" in pyproject["project"]["dependencies"]


def test_environment_yml_matches_pyproject(pyproject):
    ours, theirs = pyproject_pins(pyproject), environment_pins()
    only_py = {k: v for k, v in ours.items() if theirs.get(k) != v}
    only_env = {k: v for k, v in theirs.items() if ours.get(k) != v}
    assert ours == theirs, f"pyproject has {only_py} where environment.yml has {only_env}"


def test_pin_parser_detects_a_disagreement():
    # the comparison above must be able to fail: a different version and a missing package both differ
    a = _pins(["numpy==2.4.6", "pandas==3.1.1"], "a")
    assert a != _pins(["numpy==2.4.5", "pandas==3.1.1"], "b")
    assert a != _pins(["numpy==2.4.6"], "c")
    with pytest.raises(AssertionError):
        _pins(["numpy>=2"], "d")


def test_environment_yml_python_matches_requires_python(pyproject):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons, "environment.yml pins no python"
    version = pythons[0].split("=", 1)[1]
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_ci_runs_make_test():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in [ln for ln in lines if not ln.startswith("#")]


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme
    assert "make test" in readme


def test_make_test_is_the_fast_selection():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'^PYTEST_ARGS \?= .*-m "not slow"', makefile, re.M)
    assert re.search(r"^test: .*\n\t.*pytest \$\(PYTEST_ARGS\)", makefile, re.M)


def test_markers_are_declared(pyproject):
    ini = pyproject["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in ini["addopts"]
    names = {m.split(":", 1)[0] for m in ini["markers"]}
    assert {"data", "slow"} <= names


def stage_outputs(dvc_yaml: dict) -> set[str]:
    """Every path a stage of dvc.yaml writes (an out is a path, or a path with options)."""
    outs = (out for stage in dvc_yaml["stages"].values() for out in stage.get("outs", []))
    return {out if isinstance(out, str) else next(iter(out)) for out in outs}


def stale_stages(status: dict, produced: set[str]) -> dict[str, list]:
    """From `dvc status --json`: each stage whose code, params or command differ from dvc.lock, and what differs.
    Not counted: outputs missing from the cache, and inputs that another stage produces (a fresh clone has neither;
    DVC checks those through the producing stage's outputs)."""
    stale = {}
    for stage, changes in status.items():
        found = []
        for change in changes:
            if isinstance(change, dict) and "changed outs" in change:
                continue
            if isinstance(change, dict) and "changed deps" in change:
                deps = {path: how for path, how in change["changed deps"].items() if path not in produced}
                change = {"changed deps": deps} if deps else None
            if change:
                found.append(change)
        if found:
            stale[stage] = found
    return stale


def test_stale_stages_counts_code_params_and_commands_only():
    status = {"fetch": [{"changed outs": {"data/raw": "not in cache"}}],
              "prepare": [{"changed deps": {"data/raw": "deleted", "src/bfmscale/data": "modified"}},
                          {"changed outs": {"data/prepared": "not in cache"}}],
              "data_profile": [{"changed deps": {"data/prepared": "deleted"}}],
              "report": ["changed command"]}
    produced = stage_outputs({"stages": {"fetch": {"outs": [{"data/raw": {"persist": True}}]},
                                         "prepare": {"outs": ["data/prepared"]}}})
    assert produced == {"data/raw", "data/prepared"}
    assert stale_stages(status, produced) == {"prepare": [{"changed deps": {"src/bfmscale/data": "modified"}}],
                                              "report": ["changed command"]}


def test_dvc_lock_records_the_code_the_stages_ran_with():
    """The committed dvc.lock names the code, params and commands that made the outputs: `make reproduce` (and
    committing dvc.lock) after changing a stage's code."""
    proc = subprocess.run([str(VENV_BIN / "dvc"), "status", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.returncode == 0, proc.stderr
    produced = stage_outputs(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    stale = stale_stages(json.loads(proc.stdout or "{}"), produced)
    assert not stale, f"dvc.lock is stale (run `make reproduce` and commit dvc.lock): {stale}"
