"""The one override grammar: dotted `key=value` strings applied to a (nested) dataclass.

Used for the experiment Config (`train.py ... optim.lr=3e-4`) and for the simulator's
SimConfig (`python -m nanodna.data simulate --set n_species=8`). Values are Python literals
(`ast.literal_eval`); anything else is a bare string. Each value is checked against the field's
type annotation, so a typo fails at once with a one-line `ConfigError` naming the key. Also the
JSON round trip of such dataclasses (`to_dict` / `build`). Imports nothing from nanodna but the
error base, so every layer may use it.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from typing import Any, Literal

from nanodna.errors import UserError


class ConfigError(UserError):
    """A bad config file, override or saved config; the message names the key."""


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a (nested) dataclass, e.g. ["model.d_model", "optim.lr", ...]."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, cfg: Any) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(cfg), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _field_type(obj: Any, name: str) -> Any:
    """The resolved type annotation of a dataclass field (annotations may be strings)."""
    try:
        return typing.get_type_hints(type(obj))[name]
    except Exception:  # an annotation we cannot resolve: trust the current value's type
        value = getattr(obj, name)
        return Any if value is None else type(value)


def _parse(text: str) -> Any:
    """A Python literal; anything else (e.g. `arch=caduceus`) is taken as a bare string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp` (int -> float, list <-> tuple) or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return check_type(value, option, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list, collections.abc.Sequence) or tp in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise bad
        container = origin or tp
        if container is collections.abc.Sequence:  # keep configs hashable: a tuple
            container, args = tuple, (args[0] if args else Any, Ellipsis)
        if container is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [check_type(v, args[0], key) for v in value]
        elif container is tuple and args:
            if len(args) != len(value):
                raise bad
            items = [check_type(v, a, key) for v, a in zip(value, args)]
        elif args:
            items = [check_type(v, args[0], key) for v in value]
        else:
            items = list(value)
        return container(items)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad
    return value


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of `cfg` with `section.field=value` overrides applied (values type-checked).

    Each changed dataclass is rebuilt with dataclasses.replace, so its __post_init__ checks and
    normalisations run on the new value too.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = (part.strip() for part in item.split("=", 1))
        cfg = _set(cfg, key.split("."), text, key, cfg)
    return cfg


def _set(obj: Any, path: list[str], text: str, key: str, root: Any) -> Any:
    """A copy of dataclass `obj` with the field at `path` set to the parsed `text`."""
    name = path[0]
    if not (dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}):
        raise _unknown_key(key, root)
    current = getattr(obj, name)
    if len(path) > 1:
        value = _set(current, path[1:], text, key, root)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"'{key}' is a section: set its fields, e.g. {key}.<field>=...")
    else:
        value = check_type(_parse(text), _field_type(obj, name), key)
    try:
        return dataclasses.replace(obj, **{name: value})
    except (ValueError, TypeError) as e:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{key}={text}: {e}") from None


def format_config(cfg: Any) -> str:
    """The resolved config, one `section.field = value` per line, for the top of a run's log."""
    return "\n".join(f"  {k} = {_get(cfg, k)!r}" for k in all_keys(cfg))


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), for json.dump."""
    return dataclasses.asdict(cfg)


def build(cls: type, d: dict, prefix: str = "") -> Any:
    """Rebuild dataclass `cls` from a `to_dict` dict, type-checking every value."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' in saved config")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        tp = hints.get(name, Any)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[name] = build(tp, value, prefix + name + ".")
        else:
            kwargs[name] = check_type(value, tp, prefix + name)
    return cls(**kwargs)


def load_python_config(path: str, function: str, expected: type, error: type = None) -> Any:
    """Execute a Python config file and return `function()`'s result, checked to be an
    `expected` instance (configs/*.py: get_config; configs/sweeps/*.py: get_sweep). Raises
    `error` (default ConfigError) with one line for a missing file, function or wrong type."""
    error = error or ConfigError
    if not os.path.isfile(path):
        raise error(f"config file not found: {path}")
    name = f"nanodna_{function}_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise error(f"{path} defines no {function}()")
    value = getattr(module, function)()
    if not isinstance(value, expected):
        raise error(f"{path}: {function}() returned {type(value).__name__}, "
                    f"not {expected.__name__}")
    return value

