"""Error texts for bad settings: each bad key path, why, and where it came from.

Also the check of ``STREAMLAB_*`` variables against the settings tree: pydantic-settings
ignores variables it does not know, so a misspelled one would otherwise pass unnoticed.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings

from streamlab.config._sources import ENV_PREFIX, config_file, read_yaml
from streamlab.errors import ConfigError, flatten_errors

# Keys a model has in Python that a settings section does not take (the section's name is
# the stream). Looked up by class name: this module must not import the consumer.
HIDDEN_KEYS = {"ConsumerConfig": frozenset({"stream"})}


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated`` metadata and without ``None`` in an optional union."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def model_keys(tp: Any) -> dict[str, Any] | None:
    """Every key a model accepts (field names and their aliases) with its type, or None when
    ``tp`` is not a model."""
    tp = _strip(tp)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return None
    hidden = HIDDEN_KEYS.get(tp.__name__, frozenset())
    keys: dict[str, Any] = {}
    for name, field in tp.model_fields.items():
        if name in hidden:
            continue
        keys[name] = field.annotation
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        keys.update({c: field.annotation for c in choices if isinstance(c, str)})
    return keys


def settings_key(tp: Any, key: str) -> str:
    """The name settings use for field ``key`` of model ``tp``: the last of its alias choices
    (``consumer_group`` for ``group``), else the field name."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and key in tp.model_fields:
        alias = tp.model_fields[key].validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[-1], str):
            return alias.choices[-1]
    return key


def _descend(tp: Any, key: str) -> Any:
    """The type of ``key`` inside a value of type ``tp``; `KeyError` when it has no such key."""
    keys = model_keys(tp)
    if keys is not None:
        return keys[key]
    if get_origin(_strip(tp)) is dict:
        return get_args(_strip(tp))[1]
    raise KeyError(key)


def _type_at(root: Any, path: tuple[str, ...]) -> Any:
    tp = root
    for part in path:
        tp = _descend(tp, part)
    return tp


def _unknown_key_hint(root: type[BaseModel], parent: tuple[str, ...], key: str) -> str:
    try:
        tp = _type_at(root, parent)
    except KeyError:
        return ""
    keys = model_keys(tp)
    if keys is None:
        where = dotted(parent)
        return f"; {where} is a single value and has no keys" if parent else ""
    known = sorted(keys)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known keys: {', '.join(known)})"


def check_environment(settings_cls: type[BaseSettings], other_vars: frozenset[str]) -> None:
    """Raise `ConfigError` naming every ``STREAMLAB_*`` variable that is not a setting."""
    problems = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in other_vars:
            continue
        path = tuple(upper[len(ENV_PREFIX) :].lower().split("__"))
        problem = _env_path_problem(settings_cls, path)
        if problem:
            problems.append(f"  {name}: {problem}")
    if problems:
        raise ConfigError(
            "unknown streamlab environment variable(s); nested keys are separated by '__', "
            "e.g. STREAMLAB_REDIS__DB:\n" + "\n".join(problems)
        )


def _env_path_problem(root: type[BaseModel], path: tuple[str, ...]) -> str | None:
    tp: Any = root
    for depth, key in enumerate(path):
        if not key:
            return "empty key (check for a stray '_' around '__')"
        try:
            tp = _descend(tp, key)
        except KeyError:
            parent = path[:depth]
            where = dotted(parent) if parent else "the top level"
            return f"{key!r} is not a key of {where}" + _unknown_key_hint(root, parent, key)
    return None


def dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _reason(error: ErrorDetails) -> str:
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    secret = bool(loc) and loc[-1] in ("password", "url")
    value = "" if secret else f" (got {repr(error['input'])[:80]})"
    return f"{error['msg']}{value}"


def _has_path(data: Any, loc: tuple[int | str, ...]) -> bool:
    for part in loc:
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def origin(loc: tuple[int | str, ...], init: Mapping[str, Any], file: Path | None) -> str:
    """Where the value at ``loc`` came from, in precedence order."""
    if _has_path(init, loc):
        return "argument"
    environ = {name.upper() for name in os.environ}
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(part) for part in loc[:depth]).upper()
        if name in environ:
            return f"environment variable {name}"
    if loc[:2] == ("redis", "url") and "REDIS_URL" in os.environ:
        return "environment variable REDIS_URL"
    if file is not None and _has_path(read_yaml(file), loc):
        return f"file {str(file)!r}"
    return ""


def problems_error(lines: list[str], file: Path | None = None) -> ConfigError:
    """One `ConfigError` with a header counting ``lines`` (each one problem)."""
    count = len(lines)
    source = f" (config file {str(file)!r})" if file is not None else ""
    header = f"invalid streamlab settings{source}: {count} error{'s' if count > 1 else ''}"
    return ConfigError(header + "\n" + "\n".join(lines))


def describe_errors(
    settings_cls: type[BaseSettings], exc: ValidationError, init: Mapping[str, Any]
) -> ConfigError:
    """One line per error: key path, reason, and the argument, variable or file it came from."""
    file = config_file(settings_cls)
    lines = []
    for error in flatten_errors(exc.errors()):
        loc = error["loc"]
        reason = _reason(error)
        if error["type"] == "extra_forbidden" and loc:
            reason += _unknown_key_hint(settings_cls, tuple(map(str, loc[:-1])), str(loc[-1]))
        if error["type"] == "missing" and loc:
            try:
                parent = _type_at(settings_cls, tuple(map(str, loc[:-1])))
            except KeyError:
                pass
            else:
                loc = (*loc[:-1], settings_key(parent, str(loc[-1])))
        where_loc = loc[:-1] if error["type"] == "missing" else loc
        source = origin(where_loc, init, file)
        where = f"{dotted(loc)}: " if loc else ""
        lines.append(f"  {where}{reason}" + (f" [from {source}]" if source else ""))
    return problems_error(lines, file)
