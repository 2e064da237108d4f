"""params.yaml: load it and resolve the active profile into the settings a stage needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bfmscale.config import read_mapping
from bfmscale.errors import BfmError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml as a dict, with a one-line error when it is missing, not YAML or not a mapping."""
    return read_mapping(path, "the pipeline's params.yaml (profile, profiles, datasets, prepare)")


@dataclass(frozen=True)
class Profile:
    """The active profile: its name, its dataset's name, and every other setting it carries."""

    name: str
    dataset: str
    settings: dict[str, Any]


def resolve_profile(params: dict[str, Any], name: str | None = None, source: str = "params.yaml") -> Profile:
    """Pick `profiles[name]` (default: `params['profile']`) and check that its dataset is known."""
    profiles = params.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise BfmError(f"{source}: 'profiles' is missing; expected a mapping of profile names to settings")
    name = name if name is not None else params.get("profile")
    if name not in profiles:
        raise BfmError(f"{source}: profile {name!r} is unknown; expected one of {', '.join(profiles)}")
    settings = profiles[name] or {}
    dataset = settings.get("dataset")
    known = known_datasets(params)
    if dataset not in known:
        raise BfmError(
            f"{source}: profiles.{name}.dataset {dataset!r} is unknown; expected one of {', '.join(sorted(known))}"
        )
    return Profile(name=name, dataset=dataset, settings=dict(settings))


def known_datasets(params: dict[str, Any]) -> set[str]:
    """Names of the built-in registry datasets plus the ones declared under `datasets:` in params."""
    from bfmscale.data.sources import REGISTRY

    return set(REGISTRY) | set((params.get("datasets") or {}).keys())
