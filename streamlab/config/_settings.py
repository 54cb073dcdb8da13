"""`StreamlabSettings`: the settings tree, its sources in order, and what it builds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from streamlab._config_model import ConfigErrors
from streamlab.config._diagnostics import (
    check_environment,
    describe_errors,
    dotted,
    origin,
    problems_error,
)
from streamlab.config._models import DLQSettings, RedisSettings, split_addr
from streamlab.config._sources import (
    CONFIG_FILE,
    ENV_PREFIX,
    OTHER_ENV_VARS,
    RedisUrlSource,
    YamlSource,
    config_file,
)
from streamlab.consumer import ConsumerConfig, default_consumer_name
from streamlab.errors import ConfigError
from streamlab.keys import dlq_key

if TYPE_CHECKING:
    from streamlab.client import RedisStreamsClient


class StreamlabSettings(ConfigErrors, BaseSettings):
    """All streamlab settings: ``redis``, ``streams`` (name → `ConsumerConfig`), ``dlq``.

    Each ``streams`` entry is the stream's `ConsumerConfig`: ``stream`` is its name, and the
    ``dlq`` section fills in ``dlq_stream``, ``dlq_maxlen`` and ``dlq_retention`` where the
    entry does not set them (a ``dlq_stream`` neither sets stays None: the consumer writes
    where its client routes, ``<stream>_dlq`` for `client`; `dlq_stream` resolves it).
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
    streams: dict[str, ConsumerConfig] = Field(default_factory=dict)
    dlq: DLQSettings = Field(default_factory=DLQSettings)

    _other_env_vars: ClassVar[frozenset[str]] = OTHER_ENV_VARS

    def __init__(self, **values: Any) -> None:
        check_environment(type(self), self._other_env_vars)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise describe_errors(type(self), exc, values) from exc
        except SettingsError as exc:
            raise ConfigError(f"invalid streamlab settings: {exc}") from exc
        self._check_streams(values)

    def _check_streams(self, init: Mapping[str, Any]) -> None:
        """Raise `ConfigError` when a section names another stream than its key, or when a
        stream's DLQ leads back to it (itself, or through other configured streams): its dead
        letters would be read and dead-lettered forever."""
        problems: list[tuple[tuple[str, ...], str]] = []
        shared = self.dlq.stream_name
        for name, stream in self.streams.items():
            if stream.stream != name:
                problems.append(
                    (
                        ("streams", name, "stream"),
                        f"the section of stream {name!r} names stream {stream.stream!r}; "
                        "the section's key is the stream, drop this key",
                    )
                )
                continue
            if shared == name and stream.dlq_stream is None:
                # Not filled in from the dlq section (see _fill_streams): report it there.
                problems.append(
                    (
                        ("dlq", "stream_name"),
                        f"the DLQ of stream {name!r} is the stream itself, so its dead letters "
                        "would be read and dead-lettered again; name another DLQ",
                    )
                )
                continue
            chain = [name]
            while (dlq := self.dlq_stream(chain[-1])) in self.streams and dlq not in chain:
                chain.append(dlq)
            if dlq != name:
                continue
            from_shared = shared is not None and stream.dlq_stream == shared
            loc: tuple[str, ...] = ("streams", name, "dlq_stream")
            if from_shared:
                loc = ("dlq", "stream_name")
            path = " -> ".join(repr(n) for n in [*chain, name])
            problems.append(
                (
                    loc,
                    f"the DLQs of streams {path} form a loop, so its dead letters would be "
                    "read and dead-lettered again; name another DLQ",
                )
            )
        if problems:
            file = config_file(type(self))
            lines = []
            for loc, reason in problems:
                source = origin(loc, init, file)
                lines.append(f"  {dotted(loc)}: {reason}" + (f" [from {source}]" if source else ""))
            raise problems_error(lines)

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
        sources = [init_settings, env_settings, RedisUrlSource(settings_cls)]
        path = config_file(settings_cls)
        if path is not None:
            sources.append(YamlSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @model_validator(mode="before")
    @classmethod
    def _dlq_under_streams(cls, data: Any) -> Any:
        # The seed's README indents `dlq:` under `streams:`. A DLQ section (it has no
        # consumer_group or group, and DLQ keys) cannot be a stream: read it as the top one.
        if not isinstance(data, Mapping) or not isinstance(data.get("streams"), Mapping):
            return data
        streams: Mapping[str, Any] = data["streams"]
        dlq = streams.get("dlq")
        keys = set(dlq) if isinstance(dlq, Mapping) else set()
        if keys & {"consumer_group", "group"} or not keys & set(DLQSettings.model_fields):
            return _fill_streams(data)
        if data.get("dlq"):
            raise ValueError(
                "the dlq section is given twice, under 'streams' (the seed's layout) "
                "and at the top level; keep one"
            )
        data = dict(data)
        data["streams"] = {k: v for k, v in streams.items() if k != "dlq"}
        data["dlq"] = dlq
        return _fill_streams(data)

    def redis_url(self) -> str:
        """``redis.url`` when given, else a ``redis://`` URL from addr, username, password, db."""
        if self.redis.url is not None:
            return self.redis.url.get_secret_value()
        host, port = split_addr(self.redis.addr)
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
            dlq_names={name: self.dlq_stream(name) for name in self.streams},
            stream_maxlen={
                name: s.stream_maxlen for name, s in self.streams.items() if s.stream_maxlen
            },
        )

    def dlq_stream(self, stream: str) -> str:
        """The DLQ of ``stream``: its ``dlq_stream``, else ``dlq.stream_name``, else
        ``<stream>_dlq``."""
        config = self.streams.get(stream)
        if config is not None and config.dlq_stream is not None:
            return config.dlq_stream
        return dlq_key(stream, self.dlq.stream_name)

    def consumer_config(self, stream: str, *, consumer: str | None = None) -> ConsumerConfig:
        """The `ConsumerConfig` for ``stream`` (a key of ``streams``), for one worker.

        ``consumer`` defaults to the section's ``consumer``, else ``<hostname>-<pid>`` (read
        now, so a forked worker gets its own). Raises `ConfigError` when the stream is not
        configured.
        """
        config = self.streams.get(stream)
        if config is None:
            known = ", ".join(repr(name) for name in sorted(self.streams)) or "none"
            raise ConfigError(f"stream {stream!r} is not configured; configured streams: {known}")
        if consumer is None and "consumer" in config.model_fields_set:
            consumer = config.consumer
        try:
            return ConsumerConfig(
                **{**config.model_dump(), "consumer": consumer or default_consumer_name()}
            )
        except ConfigError as exc:
            raise ConfigError(f"stream {stream!r}: {exc}") from exc


def _fill_streams(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Each stream section as `ConsumerConfig` data: ``stream`` is its key, and the valid
    ``dlq`` section's values fill in the DLQ keys the section does not set. An invalid ``dlq``
    section fills in nothing (its own errors are reported once, at ``dlq``), nor does a shared
    DLQ name that is the stream itself (`StreamlabSettings._check_streams` reports it)."""
    streams = data.get("streams")
    if not isinstance(streams, Mapping):
        return data
    try:
        dlq = DLQSettings.model_validate(data.get("dlq") or {})
    except ConfigError:
        dlq = DLQSettings()
    filled: dict[str, Any] = {}
    for name, section in streams.items():
        if not isinstance(section, Mapping):
            filled[name] = section
            continue
        config = {"stream": name, **section}
        if dlq.stream_name is not None and dlq.stream_name != name:
            config.setdefault("dlq_stream", dlq.stream_name)
        if dlq.max_length is not None:
            config.setdefault("dlq_maxlen", dlq.max_length)
        if dlq.retention is not None:
            config.setdefault("dlq_retention", dlq.retention)
        filled[name] = config
    return {**data, "streams": filled}


def load_settings(path: str | Path | None = None, **overrides: Any) -> StreamlabSettings:
    """Settings from ``path`` (else ``STREAMLAB_CONFIG``), the environment and ``overrides``.

    ``overrides`` are top-level keys (``redis={"db": 2}``) and win over everything; nested
    mappings merge with the other sources. Raises `ConfigError` naming every bad key.
    """
    token = CONFIG_FILE.set(Path(path) if path is not None else None)
    try:
        return StreamlabSettings(**overrides)
    finally:
        CONFIG_FILE.reset(token)
