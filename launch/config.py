"""The root config tree: one typed dataclass per component, composed here, loaded from TOML.

Each package owns the dataclass of its own section (`[data]` → data_pipeline/config.py, `[train]` →
trainer/config.py, each recipe's section `[name]` → trainer/recipes/<name>/config.py, torch-free); components
receive only their own section. This module only composes them and adds the CLI conveniences (TOML + dotted
overrides + resolved output).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionrec.configtree import (
    ConfigError,
    apply_overrides,
    dumps_toml,
    from_dict,
    load_toml,
    write_resolved,
)
from fusionrec.data_pipeline.config import DataConfig
from fusionrec.trainer.config import TrainConfig
from fusionrec.trainer.recipes import Recipe, discover

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Non-recipe sections whose dataclass lives beside heavy code (torch, transformers, ray): imported only when a
# config has that section, so `fusionrec synth/prepare/inspect` start in a second. Recipe sections come from
# the recipe registry (trainer/recipes/__init__.py), each declared by its recipe folder.
LAZY_SECTIONS = {
    "loader": "fusionrec.data_pipeline.loader:LoaderConfig",
    "eval": "fusionrec.cluster.generative:EvaluateConfig",
    "zeroshot": "fusionrec.cluster.zeroshot:ZeroShotConfig",
    "synth": "fusionrec.data_pipeline.synth:SynthConfig",
}


@functools.cache
def recipes() -> dict[str, Recipe]:
    """Every recipe folder found (trainer/recipes/<name>/, $FUSIONREC_RECIPE_PATH), by name."""
    return discover()


@dataclass
class Config:
    """Every section a fusionrec run can have. `data` and `train` always exist (defaults when absent); the
    sections of LAZY_SECTIONS are None when absent, else their typed dataclass; each recipe's section
    `[name]` is in `recipes` (written back as a top-level table) - read any of them with `section(name)`."""

    # The prepared corpus (output of `fusionrec prepare`) that train/evaluate read; "" = <train.run_dir>/corpus.
    corpus: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loader: Any = None  # data_pipeline.loader.LoaderConfig
    eval: Any = None  # cluster.generative.EvaluateConfig (`fusionrec evaluate`)
    zeroshot: Any = None  # cluster.zeroshot.ZeroShotConfig (`fusionrec zeroshot`)
    synth: Any = None  # data_pipeline.synth.SynthConfig: the generated world `fusionrec demo` writes
    # recipe name -> its section, an instance of the dataclass its RECIPE.section names (recipes/<name>/config.py)
    recipes: dict[str, Any] = field(default_factory=dict, metadata={"flatten": True})

    def corpus_dir(self) -> Path:
        return Path(self.corpus) if self.corpus else Path(self.train.run_dir) / "corpus"

    def section(self, name: str) -> Any:
        """The typed sub-config `name`; its defaults when the config has no such section."""
        value = self.recipes.get(name) if name in recipes() else getattr(self, name)
        return value if value is not None else section_class(name)()

    def required_section(self, name: str) -> Any:
        """A recipe section the run cannot do without (ValueError naming a shipped example)."""
        if self.recipes.get(name) is None:
            raise ValueError(f"the {name} recipe needs a [{name}] section (e.g. --config {name}_tiny)")
        return self.recipes[name]

    def __getattr__(self, name: str) -> Any:  # cfg.idgenrec: a recipe section, None when absent
        if name != "recipes" and name in recipes():
            return self.recipes.get(name)
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")


def section_class(name: str) -> type:
    if name in LAZY_SECTIONS:
        module, cls = LAZY_SECTIONS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    cls = recipes()[name].load("section")
    if not dataclasses.is_dataclass(cls):  # every section is typed: checked keys, values and defaults
        raise ConfigError(f"recipe {name!r}: its section {recipes()[name].section} is not a dataclass")
    return cls


def _build_lazy_sections(cfg: Config) -> Config:
    for name in LAZY_SECTIONS:
        value = getattr(cfg, name)
        if isinstance(value, dict):
            setattr(cfg, name, from_dict(section_class(name), value, name))
        elif value is not None and not isinstance(value, section_class(name)):
            raise ConfigError(f"[{name}] must be a table, got {value!r}")
    return cfg


def _take_recipe_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Pop each recipe's `[name]` table out of `data` and type it with the recipe's section class."""
    out = {}
    for name, recipe in recipes().items():
        if name not in data:
            continue
        value = data.pop(name)
        if recipe.section is None:
            raise ConfigError(f"[{name}]: the {name} recipe takes no config section")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table, got {value!r}")
        out[name] = from_dict(section_class(name), value, name)
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config given as a path, or as a bare name of a shipped config (`idgenrec_tiny`)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {path} (shipped configs: {', '.join(shipped_configs())})")


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """TOML file (optional) + dotted overrides → validated `Config`; unknown keys raise ConfigError."""
    data = load_toml(resolve_config_path(path)) if path else {}
    data = apply_overrides(data, overrides or [])
    _propagate_corpus(data)
    sections = _take_recipe_sections(data)
    cfg = _build_lazy_sections(from_dict(Config, data))
    cfg.recipes = sections
    return cfg


def _propagate_corpus(data: dict) -> None:
    """The root `corpus` (e.g. `corpus=OUT` on the command line) feeds recipe sections; two different
    corpus paths in one config are ambiguous and rejected."""
    corpus = data.get("corpus")
    if corpus and isinstance(data.get("idgenrec"), dict):
        section = data["idgenrec"].setdefault("data", {})
        if isinstance(section, dict):
            if section.get("corpus") and section["corpus"] != corpus:
                raise ConfigError(
                    f"corpus={corpus!r} but idgenrec.data.corpus={section['corpus']!r}: set only one"
                )
            section["corpus"] = corpus


__all__ = [
    "Config",
    "ConfigError",
    "dumps_toml",
    "load_config",
    "recipes",
    "resolve_config_path",
    "write_resolved",
]
