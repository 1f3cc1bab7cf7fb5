"""Settings as they arrive (YAML files, command-line strings, form fields) read and coerced to TrainConfig's types."""

import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from finetune.errors import ConfigError, Problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem("--config", f"file {path} does not exist; expected a YAML file of run settings")])
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError([Problem("--config", f"{path} is not valid YAML ({err})")]) from err
    if not isinstance(values, dict):
        raise ConfigError(
            [Problem("--config", f"{path} must hold a mapping of setting: value, got {type(values).__name__}")]
        )
    return values


def coerce(raw: Any, annotation: Any) -> Any:
    """Convert ``raw`` to ``annotation`` (str, int, float, bool, Literal, list[str], Optional/Union of those)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null", "")):
            if type(None) in options:
                return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(raw, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(" or ".join(errors))
    if origin is Literal:
        choices = typing.get_args(annotation)
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {raw!r}")
        return raw
    if origin is list:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a list of names, got {raw!r}")
        return [str(item).strip() for item in items if str(item).strip()]
    return _coerce_scalar(raw, annotation)


def _coerce_scalar(raw: Any, annotation: type) -> Any:
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "yes", "1", "false", "no", "0"):
            return str(raw).lower() in ("true", "yes", "1")
        raise ValueError(f"expected true or false, got {raw!r}")
    if annotation is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"expected an integer, got {raw!r}")
        try:
            return int(float(raw)) if isinstance(raw, str) and "e" in raw.lower() else int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if annotation is float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
    if annotation is str:
        if isinstance(raw, (dict, list)):
            raise ValueError(f"expected text, got {raw!r}")
        return str(raw)
    raise TypeError(f"unsupported annotation {annotation}")
