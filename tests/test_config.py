"""Run configs: JSON round trip, overrides, one-line errors naming the field."""

from __future__ import annotations

import json
import re

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
    ("train.betas=[0.9]", "train.betas"),
    ("train.betas=0.9", "train.betas"),
    ("train.betas=[0.9, 1.5]", "train.betas"),
    ("train.lr=[1]", "train.lr"),
    ("train.logq=maybe", "train.logq"),
    ("data.exclude_seen=2", "data.exclude_seen"),
    ("train.init_from=3", "train.init_from"),
    ("train.flops=true", "train.flops"),
    ("seed=true", "seed"),
    ("train.batch_size=2.5", "train.batch_size"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.sampler_alpha=-1", "train.sampler_alpha"),
    ("train.sgd_lr=0", "train.sgd_lr"),
    ("train.log_every_frac=0", "train.log_every_frac"),
    ("model=[1]", "model"),
])
def test_bad_fields_are_named(override, field):
    with pytest.raises(BfmError) as err:
        load_run_config(None, [override])
    assert field in str(err.value) and "\n" not in str(err.value)


def test_empty_yaml_section_means_its_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\ntrain:\n  threads:\nseed: 2\n")
    cfg = load_run_config(path)
    assert cfg == RunConfig(seed=2) and cfg.train.threads is None


def test_yaml_strings_become_numbers_and_lists_tuples():
    cfg = RunConfig.from_dict({"train": {"flops": "3e12", "lr": 1, "betas": ["0.8", 0.9]}})
    assert cfg.train.flops == 3e12 and isinstance(cfg.train.lr, float) and cfg.train.betas == (0.8, 0.9)


@pytest.mark.parametrize("text,expected", [
    ("[1, 2]\n", "the top level is a list; expected a mapping: a YAML run config"),
    ("model: [x\n", "not valid YAML (while parsing a flow sequence); expected a YAML run config"),
    ("model: 3\n", "model is 3"),
    ("model:\n  d_model: 32\ntrain: {flops: x}\n", "train.flops is 'x'"),
])
def test_bad_config_file_is_named(tmp_path, text, expected):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(BfmError, match=re.escape(f"{path}: {expected}")) as err:
        load_run_config(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,expected", [
    (["model.d_model"], "'model.d_model': expected key=value"),
    (["=3"], "'=3': expected key=value"),
    (["model.d_model=32", "model.d_model.x=3"], "model.d_model.x: d_model is not a section"),
    (["model.d_model.x=3"], "model.d_model is {'x': 3}; expected an integer"),
])
def test_malformed_override_is_named(overrides, expected):
    with pytest.raises(BfmError, match=re.escape(expected)):
        load_run_config(None, overrides)


def test_error_from_file_plus_overrides_names_both(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  d_model: 32\n")
    with pytest.raises(BfmError, match=re.escape(f"{path} + overrides: model.n_heads is 0")):
        load_run_config(path, ["model.n_heads=0"])


def test_missing_config_file(tmp_path):
    with pytest.raises(BfmError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
