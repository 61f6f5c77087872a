"""Recipe configs: plain dataclasses, filled from defaults, a TOML file and `--set key=value`.

Every key is checked against the dataclass fields before training starts, and every value is
coerced to the field's type, so a typo fails in the first second rather than after an hour.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad config key or value; the message lists what is valid."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert `value` (a string from --set, or a TOML value) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot read {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (tuple, list):
        (inner, *rest) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            # "1,2,4" and "[1, 2, 4]" both work on the command line
            value = [v for v in value.replace(" ", "").strip("[]()").split(",") if v]
        return tuple(_coerce(name, v, inner) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} is not an integer")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} is not an integer") from None
        if f != int(f):
            raise ConfigError(f"{name}={value!r} is not an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} is not a number") from None
    if tp is str:
        return str(value)
    raise ConfigError(f"{name}: unsupported field type {tp!r}")


def describe_fields(cls: type) -> str:
    """One line per valid key (name, type, default), for error messages and `mortal recipes`."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        lines.append(f"  {f.name} ({tname}) = {f.default!r}")
    return "\n".join(lines)


def build(cls: type, overrides: dict[str, Any]) -> Any:
    """Make `cls(**defaults | overrides)`; unknown keys and bad values get one clear message."""
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}. "
            f"Valid keys for this recipe:\n{describe_fields(cls)}"
        )
    values = {k: _coerce(k, v, hints[k]) for k, v in overrides.items()}
    cfg = cls(**values)
    problems = cfg.validate() if hasattr(cfg, "validate") else []
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def parse_sets(sets: list[str]) -> dict[str, str]:
    """Turn ['lr=0.1', 'epochs=3'] into a dict; values stay strings until `build` coerces them."""
    out: dict[str, str] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML file of config keys (a [config] table is also accepted)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    if "config" in data and isinstance(data["config"], dict):
        data = {**{k: v for k, v in data.items() if k != "config"}, **data["config"]}
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples, nested too, become lists)."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def check(cond: bool, message: str, problems: list[str]) -> None:
    """Append `message` to `problems` when `cond` is false; keeps `validate()` methods short."""
    if not cond:
        problems.append(message)
