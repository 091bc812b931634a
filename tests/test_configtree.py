"""The generic config machinery: strict keys, typed values, dotted overrides, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from fusionrec.configtree import (
    ConfigError,
    apply_overrides,
    config_sha256,
    from_dict,
    load_toml,
    to_dict,
    write_resolved,
)

pytestmark = pytest.mark.unit


@dataclass
class Inner:
    lr: float = 1e-3
    stage: Literal[0, 1, 2, 3] = 2
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Item:
    name: str = ""
    path: Path | None = None


@dataclass
class Root:
    seed: int = 0
    inner: Inner = field(default_factory=Inner)
    items: list[Item] = field(default_factory=list)


def test_nested_tables_and_lists_of_tables():
    cfg = from_dict(
        Root, {"seed": 3, "inner": {"lr": 1, "names": ["a"]}, "items": [{"name": "x", "path": "/d"}]}
    )
    assert cfg.seed == 3 and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.items[0].path == Path("/d")


def test_unknown_key_names_dotted_path_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr' \(did you mean 'inner.lr'\?\)"):
        from_dict(Root, {"inner": {"lrr": 1.0}})


@pytest.mark.parametrize(
    "data,match",
    [
        ({"seed": "3"}, r"seed: expected an integer, got '3'"),
        ({"seed": True}, r"seed: expected an integer"),
        ({"inner": {"lr": "fast"}}, r"inner.lr: expected a number"),
        ({"inner": {"stage": 4}}, r"inner.stage: value 4 is not one of \[0, 1, 2, 3\]"),
        ({"inner": {"lr": -1.0}}, r"inner: lr must be > 0, got -1.0"),
        ({"items": {"name": "x"}}, r"items: expected a list"),
    ],
)
def test_bad_values_name_key_and_value(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Root, data)


def test_overrides_parse_toml_values():
    data = apply_overrides(
        {"inner": {"lr": 1.0}}, ["inner.lr=2e-4", "seed=7", "inner.names=['a','b']", "x.y=word"]
    )
    assert data == {"inner": {"lr": 2e-4, "names": ["a", "b"]}, "seed": 7, "x": {"y": "word"}}
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["seed"])
    with pytest.raises(ConfigError, match="'seed' is a value, not a table"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_resolved_round_trip_and_hash(tmp_path):
    cfg = from_dict(Root, {"seed": 5, "items": [{"name": "a", "path": "/p"}]})
    path = write_resolved(cfg, tmp_path)
    again = from_dict(Root, load_toml(path))
    assert again == cfg
    assert config_sha256(again) == config_sha256(cfg)
    assert to_dict(cfg)["items"] == [{"name": "a", "path": "/p"}]


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [1,\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_toml(bad)
