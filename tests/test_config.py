"""Run configs: JSON round trip, overrides, one-line errors naming the field."""

from __future__ import annotations

import json

import pytest

from bfmscale.config import RunConfig, load_run_config
from bfmscale.errors import BfmError


def test_round_trip_through_json():
    cfg = load_run_config(None, ["model.embedder=features", "train.flops=1e12", "seed=3", "train.betas=[0.9, 0.95]"])
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert cfg.train.flops == 1e12 and cfg.seed == 3 and cfg.train.betas == (0.9, 0.95)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 32\n  n_heads: 4\ntrain:\n  flops: 2e9\n")
    cfg = load_run_config(path, ["model.n_layers=3"])
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.n_layers, cfg.train.flops) == (32, 4, 3, 2e9)


@pytest.mark.parametrize("override,field", [
    ("train.flops=-5", "train.flops"),
    ("model.d_model=33", "model.d_model"),
    ("model.n_heads=0", "model.n_heads"),
    ("train.objective=softmax", "train.objective"),
    ("model.dropout=1.5", "model.dropout"),
    ("train.n_negatives=0", "train.n_negatives"),
    ("train.precision=fp16", "train.precision"),
    ("model.colour=3", "model.colour"),
    ("trian.flops=3", "trian"),
    ("seed=-1", "seed"),
    ("train.eval_users=0", "train.eval_users"),
])
def test_bad_fields_are_named(override, field):
    with pytest.raises(BfmError) as err:
        load_run_config(None, [override])
    assert field in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(BfmError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
