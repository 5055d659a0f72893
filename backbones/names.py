"""One check of a model name for every task adapter: is it a timm model, and if not, what the user meant."""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
from timm.models._factory import parse_model_name

import backbones.darts_net  # noqa: F401  (registers the GeNAS / DARTS models before names are listed)
from genas.core.errors import UsageError

__all__ = ["ModelNameError", "check_model_name", "genas_model_names"]


class ModelNameError(UsageError):
    """A model name timm does not know; the message lists the closest names and the suite's models."""


def genas_model_names() -> list[str]:
    """The timm names this suite registers (GeNAS cells, comparison cells, generic DARTS networks)."""
    return sorted(timm.list_models(module="darts_net"))


def check_model_name(name: str, setting: str = "model") -> str:
    """``name`` when timm knows it; else :class:`ModelNameError` naming ``setting`` (e.g. ``MODEL.GENAS.NAME``),
    the closest timm names and the suite's own models."""
    if isinstance(name, str) and timm.is_model(name):
        return name
    source, target = parse_model_name(name) if isinstance(name, str) else (None, None)
    if source == "hf-hub":  # resolved by timm at creation (the hub's config.json names the architecture)
        return name
    if source == "local-dir":  # a folder in timm's hub format, e.g. written by python -m backbones.export
        if (Path(target) / "config.json").is_file():
            return name
        raise ModelNameError(f"{setting}={name!r}: {target}/config.json not found; a local-dir: model is a folder "
                             f"in timm's hub format (python -m backbones.export writes one)")
    close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.5)
    raise ModelNameError(
        f"{setting}={name!r} is not a timm model. Closest timm names: {close or 'none'}; the suite's GeNAS / DARTS "
        f"models: {', '.join(genas_model_names())} (any timm model with features_only support works too; "
        f"timm.list_models('pattern*') lists them)")
