"""One folder per recipe, and the registry that finds them.

A recipe is a package ``trainer/recipes/<name>/`` whose ``__init__.py`` (torch-free: it is imported to list
the recipes) declares ``RECIPE = Recipe(...)``: where its builder, config section and exporter live. The
launch layer discovers recipes here and never lists them by hand. Folders named in the environment variable
``FUSIONREC_RECIPE_PATH`` (os.pathsep-separated) are searched too, so a recipe can live outside this
repository: a folder ``<dir>/<name>/`` with the same ``__init__.py`` contract.

A recipe folder holds its config (torch-free ``config.py``), data, loss, TrainModule, artefacts (load-for-eval,
export) and ``build.py`` (``build(cfg, strategy) -> trainer.worker.Built``); ``sasrec/`` is the template.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from dataclasses import dataclass
from typing import Any

RECIPE_PATH_ENV = "FUSIONREC_RECIPE_PATH"


@dataclass(frozen=True)
class Recipe:
    """Where a recipe's parts live, as ``"module:attribute"`` strings (imported only when used)."""

    name: str
    build: str  # build(cfg, strategy) -> Built: the TrainModule and its loaders from the root config
    section: str | None = None  # the dataclass of the config section [name]; None = the recipe has none
    export: str | None = None  # export(checkpoint, cfg, out) -> {name: path}; None = not exportable

    def load(self, part: str) -> Any:
        """The object a part names (``part`` in build/section/export)."""
        target = getattr(self, part)
        if target is None:
            raise ValueError(f"recipe {self.name!r} has no {part}")
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


def discover() -> dict[str, Recipe]:
    """Every recipe package: ours, then those under ``$FUSIONREC_RECIPE_PATH`` (ValueError on a clash)."""
    found: dict[str, Recipe] = {}
    for info in pkgutil.iter_modules(__path__):
        _register(found, f"{__name__}.{info.name}", info.name)
    for folder in filter(None, os.environ.get(RECIPE_PATH_ENV, "").split(os.pathsep)):
        if folder not in sys.path:
            sys.path.append(folder)  # the recipe's own modules import as <name>.<module>
        for info in pkgutil.iter_modules([folder]):
            if info.ispkg:
                _register(found, info.name, info.name, where=folder)
    return found


def _register(found: dict[str, Recipe], module: str, name: str, where: str | None = None) -> None:
    recipe = getattr(importlib.import_module(module), "RECIPE", None)
    if recipe is None:
        return  # a helper package without a recipe
    origin = f"{where}/{name}" if where else module
    if not isinstance(recipe, Recipe) or recipe.name != name:
        raise ValueError(f"{origin}: RECIPE must be Recipe(name={name!r}, ...), got {recipe!r}")
    if name in found:
        raise ValueError(f"recipe {name!r} is defined twice ({origin} and {found[name].build})")
    found[name] = recipe
