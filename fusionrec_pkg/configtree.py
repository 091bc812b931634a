"""Typed dataclass config trees: TOML in, dotted overrides, strict validation, resolved TOML out.

Lives beside `fileio` because launch (the root `Config`, launch/config.py) and cluster (reading a run's saved
sections) both need it, and cluster must not import launch. The root `Config` composes each package's own
sub-config dataclasses; this module is the generic machinery and knows nothing about fusionrec's fields.
Design choices:

* Unknown keys are errors with the full dotted path and a "did you mean" hint: a typo such as
  `train.lrr=1e-3` must never be silently ignored.
* Values are type-checked against the dataclass annotations (ints are accepted for floats; a string
  is never accepted for a number), so a bad TOML value fails before any work starts.
* Overrides parse their value as TOML (`a.b=3`, `a.b=[1,2]`, `a.b="x"`); a bare word is a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from fusionrec.fileio import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A user error in a config file or override; the message names the dotted key and the value."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown_key(key: str, known: list[str], path: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{_join(path, close[0])}'?)" if close else ""
    return ConfigError(
        f"unknown config key '{_join(path, key)}'{hint}; known keys: {', '.join(sorted(known))}"
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against annotation `tp`, converting where TOML cannot express the type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: value {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: value {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    return _coerce_scalar(value, tp, path)


def _coerce_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{path}: expected a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"{path}: unsupported config type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and ill-typed values."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(key, list(types_), path)
        kwargs[key] = _coerce(value, types_[key], _join(path, key))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # __post_init__ validation of the sub-config
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists of TOML-able values (Paths as strings, None dropped)."""
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            v = to_dict(getattr(cfg, f.name))
            if f.metadata.get("flatten"):  # a dict of sections written as top-level tables
                out.update(v or {})
            elif v is not None:
                out[f.name] = v
        return out
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items() if v is not None}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], value); the value is parsed as TOML, a bare word as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with dotted overrides applied (unknown keys are caught later by from_dict)."""
    out = json.loads(json.dumps(data, default=str))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a table")
            node = nxt
        node[parts[-1]] = value
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err


def dumps_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


def config_sha256(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def write_resolved(cfg: Any, out_dir: str | Path) -> Path:
    """Write `config.toml` (+ `config.json`) into `out_dir` atomically; returns the TOML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.toml", dumps_toml(cfg))
    atomic_write_text(out_dir / "config.json", json.dumps(to_dict(cfg), indent=2))
    return out_dir / "config.toml"
