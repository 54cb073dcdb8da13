"""Settings from the environment and a YAML file, validated by pydantic-settings.

Sources, highest precedence first: keyword arguments, ``STREAMLAB_*`` environment variables
(``__`` separates nesting levels: ``STREAMLAB_STREAMS__WEBHOOK_EVENTS__BATCH_SIZE=20``), the
plain ``REDIS_URL`` variable (maps to ``redis.url``), the YAML file (``load_settings(path)``,
else ``STREAMLAB_CONFIG``), then defaults. Nested sections merge key by key across sources.

Every unknown key is an error naming it: in YAML through ``extra="forbid"``, in the environment
through a check of each ``STREAMLAB_*`` variable against the settings tree, because
pydantic-settings ignores variables it does not know. Errors are `ConfigError`s listing every
bad key path, why it is bad, and where it came from (argument, variable or file).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self, Union, get_args, get_origin
from urllib.parse import quote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from streamlab.backoff import Backoff
from streamlab.errors import ConfigError
from streamlab.keys import check_start_id, dlq_key

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from streamlab.client import RedisStreamsClient
    from streamlab.consumer import ConsumerConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "BackoffSettings",
    "ConsumerSettings",
    "DLQSettings",
    "Duration",
    "RedisSettings",
    "StreamlabSettings",
    "format_duration",
    "load_settings",
    "parse_duration",
]

ENV_PREFIX = "STREAMLAB_"
CONFIG_ENV_VAR = "STREAMLAB_CONFIG"
# Variables with the settings prefix that are not settings; the unknown-variable check skips
# them. Add here any new ``STREAMLAB_*`` variable another module reads.
OTHER_ENV_VARS = frozenset({CONFIG_ENV_VAR, "STREAMLAB_SERVER"})

# ---------------------------------------------------------------------------------------------
# Durations

_GO_UNIT_US = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),  # Go accepts both micro signs (U+00B5 and U+03BC)
    "μs": Decimal(1),
    "ms": Decimal(1_000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_GO_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION = re.compile(rf"(?:{_GO_PART.pattern})+")
_SECONDS = re.compile(_NUMBER)
_PYDANTIC_TIMEDELTA = TypeAdapter(timedelta)
_DURATION_FORMS = (
    "use a Go-style duration like '5s', '1m30s', '250ms' or '168h', "
    "a number of seconds, or ISO 8601 like 'PT5S'"
)


def parse_duration(value: object) -> timedelta:
    """A non-negative `timedelta` from a Go-style string, a number of seconds or ISO 8601.

    Go-style: one or more ``<number><unit>`` with units ``h``, ``m``, ``s``, ``ms``, ``us``
    (``µs``), ``ns`` (``"1h30m"``, ``"1.5s"``); nanoseconds round to microseconds. A bare
    number, or a string holding one, is seconds. Other strings go to pydantic's `timedelta`
    parsing (ISO 8601 ``"PT5S"``, ``"P7D"``). Raises `ValueError` naming the accepted forms.
    """
    result = _to_timedelta(value)
    if result < timedelta(0):
        raise ValueError(f"duration {value!r} is negative; durations must be >= 0")
    return result


def _to_timedelta(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_FORMS}")
    try:
        if not isinstance(value, str):
            return timedelta(seconds=float(value))
        text = value.strip()
        if _SECONDS.fullmatch(text):
            return timedelta(seconds=float(text))
        if _GO_DURATION.fullmatch(text):
            micros = sum(
                (Decimal(n) * _GO_UNIT_US[unit] for n, unit in _GO_PART.findall(text)),
                Decimal(0),
            )
            return timedelta(microseconds=int(micros.to_integral_value()))
        return _PYDANTIC_TIMEDELTA.validate_python(text)
    except (ValidationError, OverflowError, InvalidOperation, ValueError) as exc:
        raise ValueError(f"invalid duration {value!r}: {_DURATION_FORMS}") from exc


def format_duration(value: timedelta) -> str:
    """A Go-style string for ``value`` (``"1h30m"``, ``"250ms"``, ``"1.5s"``, ``"0s"``).

    `parse_duration` reads it back to the same `timedelta`.
    """
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign, micros = ("-", -micros) if micros < 0 else ("", micros)
    if 0 < micros < 1_000_000:
        return f"{sign}{micros // 1000}ms" if micros % 1000 == 0 else f"{sign}{micros}us"
    hours, micros = divmod(micros, 3_600_000_000)
    minutes, micros = divmod(micros, 60_000_000)
    secs, micros = divmod(micros, 1_000_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    if secs or micros or not text:
        text += f"{secs}.{micros:06d}".rstrip("0").rstrip(".") + "s"
    return sign + text


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A `timedelta` field that also accepts ``"5s"``-style strings, seconds and ISO 8601."""


def _positive(value: timedelta | None) -> timedelta | None:
    """A field validator: durations that must be greater than 0 (or unset)."""
    if value is not None and value <= timedelta(0):
        raise ValueError(f"must be greater than 0 (got {format_duration(value)})")
    return value


# ---------------------------------------------------------------------------------------------
# Settings models


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Section):
    """Where Redis is. ``url`` (``redis://``, ``rediss://`` or ``unix://``) wins over the rest.

    ``cluster: true`` (or a ``redis+cluster://`` URL) makes `StreamlabSettings.client` a Redis
    Cluster client, seeded from that one node.
    """

    url: SecretStr | None = None
    addr: str = "localhost:6379"
    username: str | None = None
    password: SecretStr = SecretStr("")
    db: int = Field(default=0, ge=0)
    cluster: bool = False

    @field_validator("url", "username", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
                raise ValueError(
                    "URL scheme must be redis://, rediss://, unix:// or redis+cluster://, "
                    f"got {scheme or 'none'!r}"
                )
        return value

    @model_validator(mode="after")
    def _cluster_db(self) -> Self:
        if self.cluster and self.db:
            raise ValueError("a Redis Cluster has only database 0: drop db or cluster")
        return self

    @field_validator("addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        _split_addr(value)
        return value


def _split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets, port defaults to 6379) as (host, port)."""
    parts = urlsplit(f"//{addr}")
    try:
        port = parts.port or 6379
    except ValueError:
        port = 0
    if not parts.hostname or port == 0 or parts.username or parts.path or parts.query:
        raise ValueError(f"expected 'host:port' like 'localhost:6379', got {addr!r}")
    return parts.hostname, port


class BackoffSettings(_Section):
    """The retry delay schedule; defaults are the seed's (immediate, 1 s, 2 s, ...)."""

    initial: Duration = timedelta(seconds=1)
    multiplier: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    max: Duration = timedelta(seconds=60)
    first_immediate: bool = True
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max < self.initial:
            raise ValueError(
                f"max ({format_duration(self.max)}) is below initial "
                f"({format_duration(self.initial)})"
            )
        return self

    def to_backoff(self) -> Backoff:
        """The consumer's `Backoff` with these values."""
        return Backoff(**self.model_dump())


class ConsumerSettings(_Section):
    """One stream's consumer settings: the seed's keys plus retry, reclaim and DLQ options.

    ``max_length`` caps the stream for producers (``XADD MAXLEN ~``); ``dlq_stream`` overrides
    the DLQ name (default: the top-level ``dlq.stream_name``, else ``<stream>_dlq``).
    ``claim_interval``, ``group_start_id``, ``create_group``, ``handler_timeout`` and
    ``shutdown_grace`` default to the consumer's own defaults when not set.
    """

    consumer_group: str = Field(min_length=1)
    max_length: int | None = Field(default=None, ge=1)
    block_duration: Duration = timedelta(seconds=5)
    batch_size: int = Field(default=10, ge=1)
    max_retries: int = Field(default=3, ge=0)
    claim_min_idle: Duration = timedelta(seconds=60)
    backoff: BackoffSettings = Field(default_factory=BackoffSettings)
    dlq_stream: str | None = Field(default=None, min_length=1)
    claim_interval: Duration | None = None
    group_start_id: str | None = Field(default=None, min_length=1)
    create_group: bool | None = None
    handler_timeout: Duration | None = None
    shutdown_grace: Duration | None = None

    _durations = field_validator("claim_interval", "handler_timeout")(_positive)

    @field_validator("claim_min_idle")
    @classmethod
    def _claim_min_idle(cls, value: timedelta) -> timedelta:
        from streamlab.policy import check_claim_min_idle

        return check_claim_min_idle(value)

    @field_validator("block_duration")
    @classmethod
    def _block(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(
                f"must be greater than 0 (got {format_duration(value)}; 0 would block forever)"
            )
        return value

    @field_validator("group_start_id")
    @classmethod
    def _start_id(cls, value: str | None) -> str | None:
        return None if value is None else check_start_id(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        from streamlab.policy import schedule_error

        error = schedule_error(self.max_retries, self.backoff.to_backoff())
        if error:
            raise ValueError(error)
        return self


class DLQSettings(_Section):
    """Dead-letter settings shared by all streams. ``retention`` trims older DLQ entries."""

    stream_name: str | None = Field(default=None, min_length=1)
    max_length: int | None = Field(default=None, ge=1)
    retention: Duration | None = None

    _durations = field_validator("retention")(_positive)


# ---------------------------------------------------------------------------------------------
# Sources

# The file `load_settings` was given, for the duration of that call.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("streamlab_config_file", default=None)


def _config_file(settings_cls: type[BaseSettings]) -> Path | None:
    """The YAML file to read: `load_settings`'s path, ``yaml_file``, else ``STREAMLAB_CONFIG``."""
    given = _CONFIG_FILE.get()
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


class _YamlSource(YamlConfigSettingsSource):
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


class _RedisUrlSource(PydanticBaseSettingsSource):
    """Plain ``REDIS_URL``, the convention of most Redis tooling, as ``redis.url``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get("REDIS_URL")
        return {"redis": {"url": url}} if url else {}


# ---------------------------------------------------------------------------------------------
# Top level


class StreamlabSettings(BaseSettings):
    """All streamlab settings: ``redis``, ``streams`` (name → `ConsumerSettings`), ``dlq``.

    ``StreamlabSettings()`` reads the environment and the file named by ``STREAMLAB_CONFIG``;
    `load_settings` also takes a file path. Invalid settings raise `ConfigError`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    streams: dict[str, ConsumerSettings] = Field(default_factory=dict)
    dlq: DLQSettings = Field(default_factory=DLQSettings)

    _other_env_vars: ClassVar[frozenset[str]] = OTHER_ENV_VARS

    def __init__(self, **values: Any) -> None:
        _check_environment(type(self))
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe_errors(type(self), exc, values)) from exc
        except SettingsError as exc:
            raise ConfigError(f"invalid streamlab settings: {exc}") from exc
        self._check_dlq_names(values)

    def _check_dlq_names(self, init: Mapping[str, Any]) -> None:
        """Raise `ConfigError` when a stream's DLQ leads back to it (itself, or through other
        configured streams): its dead letters would be read and dead-lettered forever."""
        problems = []
        for name, stream in self.streams.items():
            chain = [name]
            while (dlq := self.dlq_name(chain[-1])) in self.streams and dlq not in chain:
                chain.append(dlq)
            if dlq != name:
                continue
            loc = ("streams", name, "dlq_stream") if stream.dlq_stream else ("dlq", "stream_name")
            path = " -> ".join(repr(n) for n in [*chain, name])
            reason = (
                f"the DLQ of stream {name!r} is the stream itself"
                if len(chain) == 1
                else f"the DLQs of streams {path} form a loop"
            )
            file = _config_file(type(self))
            file_data = yaml.safe_load(file.read_text(encoding="utf-8")) if file else None
            origin = _origin(loc, init, file, file_data)
            problems.append(
                f"  {_dotted(loc)}: {reason}, so its dead letters would be read and "
                "dead-lettered again; name another DLQ" + (f" [from {origin}]" if origin else "")
            )
        if problems:
            raise ConfigError(
                f"invalid streamlab settings: {len(problems)} error{'s' * (len(problems) > 1)}\n"
                + "\n".join(problems)
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, ``STREAMLAB_*`` variables, ``REDIS_URL``, then the YAML file."""
        # pydantic-settings reads no YAML unless a YamlConfigSettingsSource is returned here.
        sources = [init_settings, env_settings, _RedisUrlSource(settings_cls)]
        path = _config_file(settings_cls)
        if path is not None:
            sources.append(_YamlSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _dlq_under_streams(cls, data: Any) -> Any:
        # The seed's README indents `dlq:` under `streams:`. A DLQ section (it has no
        # consumer_group, and DLQ keys) cannot be a stream, so read it as the top-level one.
        if not isinstance(data, Mapping) or not isinstance(data.get("streams"), Mapping):
            return data
        streams: Mapping[str, Any] = data["streams"]
        dlq = streams.get("dlq")
        keys = set(dlq) if isinstance(dlq, Mapping) else set()
        if "consumer_group" in keys or not keys & set(DLQSettings.model_fields):
            return data
        if data.get("dlq"):
            raise ValueError(
                "the dlq section is given twice, under 'streams' (the seed's layout) "
                "and at the top level; keep one"
            )
        data = dict(data)
        data["streams"] = {k: v for k, v in streams.items() if k != "dlq"}
        data["dlq"] = dlq
        return data

    def redis_url(self) -> str:
        """``redis.url`` when given, else a ``redis://`` URL from addr, username, password, db."""
        if self.redis.url is not None:
            return self.redis.url.get_secret_value()
        host, port = _split_addr(self.redis.addr)
        if ":" in host:
            host = f"[{host}]"
        password = self.redis.password.get_secret_value()
        auth = quote(self.redis.username or "", safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return f"redis://{auth + '@' if auth else ''}{host}:{port}/{self.redis.db}"

    def client(self, **connect_kwargs: Any) -> RedisStreamsClient:
        """A `RedisStreamsClient` on `redis_url` that knows the configured streams: their DLQ
        names (so `read_dlq`, the exporters and replay find them) and their ``max_length``
        (the cap producers apply when a call gives no ``maxlen``)."""
        from streamlab.client import CLUSTER_SCHEMES, RedisStreamsClient, connect_any

        url = self.redis_url()
        cluster = self.redis.cluster or urlsplit(url).scheme in CLUSTER_SCHEMES
        return RedisStreamsClient(
            connect_any(url, cluster=cluster, **connect_kwargs),
            dlq_names={name: self.dlq_name(name) for name in self.streams},
            stream_maxlen={name: s.max_length for name, s in self.streams.items() if s.max_length},
        )

    def dlq_name(self, stream: str) -> str:
        """The DLQ of ``stream``: its ``dlq_stream``, else ``dlq.stream_name``, else
        ``<stream>_dlq``."""
        settings = self.streams.get(stream)
        return dlq_key(stream, (settings and settings.dlq_stream) or self.dlq.stream_name)

    def consumer_config(self, stream: str, *, consumer: str | None = None) -> ConsumerConfig:
        """The `ConsumerConfig` for ``stream`` (a key of ``streams``).

        ``consumer`` defaults to ``<hostname>-<pid>``. The DLQ is the stream's ``dlq_stream``,
        else ``dlq.stream_name``, else ``<stream>_dlq``. Raises `ConfigError` when the stream
        is not configured.
        """
        from streamlab.consumer import ConsumerConfig, default_consumer_name

        settings = self.streams.get(stream)
        if settings is None:
            known = ", ".join(repr(name) for name in sorted(self.streams)) or "none"
            raise ConfigError(f"stream {stream!r} is not configured; configured streams: {known}")
        optional = settings.model_dump(
            include={
                "claim_interval",
                "group_start_id",
                "create_group",
                "handler_timeout",
                "shutdown_grace",
            },
            exclude_none=True,
        )
        try:
            return ConsumerConfig(
                stream=stream,
                group=settings.consumer_group,
                consumer=consumer or default_consumer_name(),
                block_duration=settings.block_duration,
                batch_size=settings.batch_size,
                max_retries=settings.max_retries,
                backoff=settings.backoff.to_backoff(),
                claim_min_idle=settings.claim_min_idle,
                dlq_stream=self.dlq_name(stream),
                dlq_maxlen=self.dlq.max_length,
                dlq_retention=self.dlq.retention,
                stream_maxlen=settings.max_length,
                **optional,
            )
        except ConfigError as exc:
            raise ConfigError(f"stream {stream!r}: {exc}") from exc


def load_settings(path: str | Path | None = None, **overrides: Any) -> StreamlabSettings:
    """Settings from ``path`` (else ``STREAMLAB_CONFIG``), the environment and ``overrides``.

    ``overrides`` are top-level keys (``redis={"db": 2}``) and win over everything; nested
    mappings merge with the other sources. Raises `ConfigError` naming every bad key.
    """
    token = _CONFIG_FILE.set(Path(path) if path is not None else None)
    try:
        return StreamlabSettings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)


# ---------------------------------------------------------------------------------------------
# Error reporting


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


def _descend(tp: Any, key: str) -> Any:
    """The type of ``key`` inside a value of type ``tp``; `KeyError` when it has no such key."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.model_fields[key].annotation
    if get_origin(tp) is dict:
        return get_args(tp)[1]
    raise KeyError(key)


def _known_keys(tp: Any) -> list[str] | None:
    """The keys a model accepts, or None when ``tp`` is not a model."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return sorted(tp.model_fields)
    return None


def _unknown_key_hint(root: type[BaseModel], parent: tuple[str, ...], key: str) -> str:
    tp: Any = root
    try:
        for part in parent:
            tp = _descend(tp, part)
    except KeyError:
        return ""
    known = _known_keys(tp)
    if known is None:
        where = _dotted(parent)
        return f"; {where} is a single value and has no keys" if parent else ""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known keys: {', '.join(known)})"


def _check_environment(settings_cls: type[StreamlabSettings]) -> None:
    """Raise `ConfigError` naming every ``STREAMLAB_*`` variable that is not a setting."""
    problems = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in settings_cls._other_env_vars:
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
            where = _dotted(parent) if parent else "the top level"
            return f"{key!r} is not a key of {where}" + _unknown_key_hint(root, parent, key)
    return None


def _dotted(loc: tuple[int | str, ...]) -> str:
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


def _origin(
    loc: tuple[int | str, ...], init: Mapping[str, Any], file: Path | None, file_data: Any
) -> str:
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
    if file is not None and _has_path(file_data, loc):
        return f"file {str(file)!r}"
    return ""


def _describe_errors(
    settings_cls: type[StreamlabSettings], exc: ValidationError, init: Mapping[str, Any]
) -> str:
    """One line per error: key path, reason, and the argument, variable or file it came from."""
    file = _config_file(settings_cls)
    file_data = yaml.safe_load(file.read_text(encoding="utf-8")) if file is not None else None
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        reason = _reason(error)
        if error["type"] == "extra_forbidden" and loc:
            reason += _unknown_key_hint(settings_cls, tuple(map(str, loc[:-1])), str(loc[-1]))
        where_loc = loc[:-1] if error["type"] == "missing" else loc
        origin = _origin(where_loc, init, file, file_data)
        lines.append(f"  {_dotted(loc)}: {reason}" + (f" [from {origin}]" if origin else ""))
    count = len(lines)
    source = f" (config file {str(file)!r})" if file is not None else ""
    header = f"invalid streamlab settings{source}: {count} error{'s' if count > 1 else ''}"
    return header + "\n" + "\n".join(lines)
