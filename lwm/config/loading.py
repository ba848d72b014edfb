"""Loading typed configs: YAML file, then dotted command-line overrides, then validation.

Decoding into frozen dataclasses is done by draccus (the library Levanter uses), which checks
every type and names the dotted field that is wrong; this module adds YAML line numbers,
override parsing and validation, and turns every failure into one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import draccus
import yaml

from lwm.config.errors import ConfigError
from lwm.paths import as_path

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, raising `ConfigError` with the file and line on a syntax error."""
    path = as_path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def parse_overrides(args: Sequence[str]) -> list[tuple[str, Any]]:
    """Parses `--a.b value` and `--a.b=value` pairs into (dotted key, value) pairs.

    Values are read as YAML scalars or lists (`[1, 2]`, `null`, `true`); anything else stays a
    string, which draccus then converts to the field's type (so `3e-4` becomes a float).
    """
    pairs: list[tuple[str, Any]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"override {arg!r}: expected --section.field VALUE")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(args):
                raise ConfigError(f"override {arg!r} has no value: write {arg} VALUE")
            key, raw = arg[2:], args[index + 1]
            index += 2
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        pairs.append((key, value))
    return pairs


def _field_names(cls: Any) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _resolve_field_type(cls: Any, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(name)


def apply_override(config: dict[str, Any], root_cls: type, dotted_key: str, value: Any) -> None:
    """Sets `config[a][b] = value` for `a.b`, refusing keys the dataclass tree does not have."""
    parts = dotted_key.split(".")
    node, cls = config, root_cls
    for depth, part in enumerate(parts):
        names = _field_names(cls)
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(names)}"
            raise ConfigError(f"override --{dotted_key}: {where} has no field {part!r}{hint}")
        if depth == len(parts) - 1:
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override --{dotted_key}: {'.'.join(parts[: depth + 1])} is not a section")
        node, cls = child, _resolve_field_type(cls, part)
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"override --{dotted_key}: {'.'.join(parts[: depth + 1])} is not a section")


def validate_tree(config: Any, path: str = "") -> None:
    """Calls `validate()` on every dataclass in the tree, children first."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        for field in dataclasses.fields(config):
            validate_tree(getattr(config, field.name), f"{path}{field.name}.")
        if hasattr(config, "validate"):
            config.validate()
    elif isinstance(config, (tuple, list)):
        for index, item in enumerate(config):
            validate_tree(item, f"{path}{index}.")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Decodes a plain mapping into the dataclass `cls` and validates it."""
    try:
        config = draccus.decode(cls, data)
    except Exception as error:  # draccus raises several error types; all mean a bad value
        # A root config's own check (`__post_init__`) may be what failed: say its words.
        cause = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        raise ConfigError(f"{source}: {cause or error}") from error
    # Each section checks its own fields; a root config's own `validate` (called last, after
    # its sections) checks that its sections agree with each other.
    validate_tree(config)
    return config


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Loads `cls` from a YAML file (or its defaults) with dotted overrides, then validates it.

    Example: `load_config(TrainRunConfig, "configs/tiny.yaml", ["--train.lr", "3e-4"])`.
    """
    data = read_yaml(path) if path is not None else {}
    # A root whose stored form changed over time (a model directory's model.yaml) upgrades it.
    upgrade = getattr(cls, "upgrade_legacy", None)
    if upgrade is not None:
        data = upgrade(data)
    for key, value in parse_overrides(overrides):
        apply_override(data, cls, key, value)
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return from_dict(cls, data, source)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-ready data (tuples become lists)."""
    return draccus.encode(config)


def save_config(config: Any, path: str | Path) -> None:
    """Writes the config as YAML, so a run directory records exactly what ran."""
    as_path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
