"""Where settings come from: the YAML file (which one, and how it is read) and ``REDIS_URL``.

The environment (``STREAMLAB_*``) and keyword arguments are pydantic-settings' own sources.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, YamlConfigSettingsSource

from streamlab.errors import ConfigError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

ENV_PREFIX = "STREAMLAB_"
CONFIG_ENV_VAR = "STREAMLAB_CONFIG"
# Variables with the settings prefix that are not settings; the unknown-variable check skips
# them. Add here any new ``STREAMLAB_*`` variable another module reads.
OTHER_ENV_VARS = frozenset({CONFIG_ENV_VAR, "STREAMLAB_SERVER"})

# The file `load_settings` was given, for the duration of that call.
CONFIG_FILE: ContextVar[Path | None] = ContextVar("streamlab_config_file", default=None)


def config_file(settings_cls: type[BaseSettings]) -> Path | None:
    """The YAML file to read: `load_settings`'s path, ``yaml_file``, else ``STREAMLAB_CONFIG``."""
    given = CONFIG_FILE.get()
    origin = "load_settings"
    if given is None and settings_cls.model_config.get("yaml_file"):
        given, origin = Path(str(settings_cls.model_config["yaml_file"])), "yaml_file"
    if given is None and os.environ.get(CONFIG_ENV_VAR):
        given, origin = Path(os.environ[CONFIG_ENV_VAR]), CONFIG_ENV_VAR
    if given is None:
        return None
    path = given.expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} (from {origin}) does not exist")
    return path


def read_yaml(path: Path | None) -> Any:
    """The parsed file (for error reports, after the source read it), or None."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path is not None else None


class YamlSource(YamlConfigSettingsSource):
    """The YAML file, with parse errors and a non-mapping top level as `ConfigError`."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file_path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"{file_path}: the top level must be a mapping with sections "
                f"redis, streams, dlq; got {type(data).__name__}"
            )
        return data


class RedisUrlSource(PydanticBaseSettingsSource):
    """Plain ``REDIS_URL``, the convention of most Redis tooling, as ``redis.url``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get("REDIS_URL")
        return {"redis": {"url": url}} if url else {}
