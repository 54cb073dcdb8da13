"""Settings from env and YAML, their precedence, durations, and the errors for bad input."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import redis
import yaml
from pydantic import ValidationError

from streamlab.backoff import Backoff, compute_backoff
from streamlab.client import RedisStreamsClient, connect
from streamlab.config import DLQSettings, RedisSettings, StreamlabSettings, load_settings
from streamlab.consumer import Consumer, ConsumerConfig
from streamlab.durations import format_duration, parse_duration
from streamlab.errors import ConfigError
from streamlab.policy import max_delay

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
SEED = FIXTURES / "seed.yaml"
FULL = FIXTURES / "full.yaml"
STREAM_ENV = "STREAMLAB_STREAMS__WEBHOOK_EVENTS__"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings leak in from the environment the suite runs in (CI may set REDIS_URL)."""
    for name in list(os.environ):
        if name.upper().startswith("STREAMLAB_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "streamlab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- sources and precedence ---------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    settings = load_settings()
    assert settings.streams == {}
    assert settings.redis_url() == "redis://localhost:6379/0"
    assert settings.dlq.retention is None


def test_env_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLAB_REDIS__ADDR", "redis.internal:6380")
    monkeypatch.setenv("STREAMLAB_REDIS__DB", "4")
    monkeypatch.setenv(STREAM_ENV + "CONSUMER_GROUP", "workers")
    monkeypatch.setenv(STREAM_ENV + "BLOCK_DURATION", "250ms")
    monkeypatch.setenv(STREAM_ENV + "BATCH_SIZE", "25")
    monkeypatch.setenv(STREAM_ENV + "BACKOFF__INITIAL", "2s")
    monkeypatch.setenv("STREAMLAB_DLQ__RETENTION", "24h")

    settings = StreamlabSettings()

    assert settings.redis_url() == "redis://redis.internal:6380/4"
    stream = settings.streams["webhook_events"]
    assert stream.group == "workers"
    assert stream.block_duration == timedelta(milliseconds=250)
    assert stream.batch_size == 25
    assert stream.backoff.initial == timedelta(seconds=2)
    assert stream.max_retries == 3
    assert settings.dlq.retention == timedelta(hours=24)


def test_redis_url_env_maps_to_redis_url_and_wins_over_addr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://cache.example.com:6380/1")
    monkeypatch.setenv("STREAMLAB_REDIS__ADDR", "ignored:6379")
    assert load_settings().redis_url() == "rediss://cache.example.com:6380/1"

    monkeypatch.setenv("STREAMLAB_REDIS__URL", "redis://preferred:6379/2")
    assert load_settings().redis_url() == "redis://preferred:6379/2"


def test_yaml_only_seed_layout() -> None:
    settings = load_settings(SEED)

    assert settings.redis_url() == "redis://localhost:6379/0"
    stream = settings.streams["webhook_events"]
    assert stream == ConsumerConfig(
        stream="webhook_events",
        group="webhook_workers",
        consumer=stream.consumer,
        stream_maxlen=10000,
        block_duration=timedelta(seconds=5),
        batch_size=10,
        max_retries=3,
        dlq_stream="webhook_events_dlq",
        dlq_maxlen=1000,
        dlq_retention=timedelta(days=7),
    )
    assert settings.dlq.stream_name == "webhook_events_dlq"
    assert settings.dlq.max_length == 1000
    assert settings.dlq.retention == timedelta(days=7)


def test_yaml_with_every_optional_key() -> None:
    settings = load_settings(FULL)

    assert settings.redis_url() == "rediss://worker:s3cret@redis.example.com:6380/2"
    hooks = settings.streams["webhook_events"]
    assert hooks.claim_min_idle == timedelta(seconds=90)
    assert hooks.backoff == Backoff(
        initial=timedelta(seconds=1),
        multiplier=2,
        max=timedelta(seconds=60),
        first_immediate=True,
        jitter=0.1,
    )
    assert hooks.dlq_stream == "webhook_events_failed"
    orders = settings.streams["{orders}"]
    assert orders.block_duration == timedelta(seconds=2.5)
    assert orders.claim_min_idle == timedelta(minutes=2)
    # Secrets never show in reprs or logs.
    assert "s3cret" not in repr(settings)


def test_streamlab_config_env_names_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMLAB_CONFIG", str(SEED))
    assert StreamlabSettings().streams["webhook_events"].group == "webhook_workers"

    other = write(tmp_path, "streams:\n  orders:\n    consumer_group: order_workers\n")
    assert list(load_settings(other).streams) == ["orders"], "an explicit path wins"


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml.*load_settings.*does not exist"):
        load_settings(missing)
    monkeypatch.setenv("STREAMLAB_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=r"nope\.yaml.*STREAMLAB_CONFIG.*does not exist"):
        load_settings()


def test_env_overrides_yaml_key_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STREAM_ENV + "BATCH_SIZE", "50")
    monkeypatch.setenv("STREAMLAB_REDIS__DB", "3")
    monkeypatch.setenv("STREAMLAB_DLQ__RETENTION", "1h")

    settings = load_settings(SEED)

    stream = settings.streams["webhook_events"]
    assert stream.batch_size == 50
    assert stream.group == "webhook_workers", "the YAML's other keys stay"
    assert stream.stream_maxlen == 10000
    assert settings.redis_url() == "redis://localhost:6379/3"
    assert settings.dlq.retention == timedelta(hours=1)
    assert settings.dlq.max_length == 1000


def test_arguments_override_env_and_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLAB_REDIS__DB", "3")
    settings = load_settings(SEED, redis={"db": 5, "password": "pw"})
    assert settings.redis_url() == "redis://:pw@localhost:6379/5"


def test_settings_are_immutable() -> None:
    settings = load_settings(SEED)
    with pytest.raises(ValueError, match="frozen"):
        settings.redis.db = 2
    with pytest.raises(ValueError, match="frozen"):
        settings.streams["webhook_events"].batch_size = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        settings.streams["webhook_events"].backoff.max = timedelta(0)  # type: ignore[misc]


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5s", timedelta(seconds=5)),
        ("1m30s", timedelta(seconds=90)),
        ("168h", timedelta(days=7)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        ("1h2m3.5s", timedelta(hours=1, minutes=2, seconds=3.5)),
        ("100us", timedelta(microseconds=100)),
        ("100\u00b5s", timedelta(microseconds=100)),  # Go accepts both micro signs
        ("100\u03bcs", timedelta(microseconds=100)),
        ("3000ns", timedelta(microseconds=3)),
        (" 5s ", timedelta(seconds=5)),
        (5, timedelta(seconds=5)),
        (2.5, timedelta(seconds=2.5)),
        ("5", timedelta(seconds=5)),
        ("0.25", timedelta(milliseconds=250)),
        (0, timedelta(0)),
        ("PT5S", timedelta(seconds=5)),
        ("PT1M30S", timedelta(seconds=90)),
        ("P7D", timedelta(days=7)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_duration_forms(raw: object, expected: timedelta) -> None:
    assert parse_duration(raw) == expected
    # The same through a settings field.
    assert Backoff(initial=raw, max="1000h").initial == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["5s", "1m30s", "168h", "250ms", "1.5s", "100us", "0s", "1h1s"])
def test_format_duration_round_trips(raw: str) -> None:
    value = parse_duration(raw)
    assert format_duration(value) == raw
    assert parse_duration(format_duration(value)) == value


def test_durations_from_env_and_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "streams:\n  s:\n    consumer_group: g\n    block_duration: 2\n"
        "    claim_min_idle: PT2M\n    backoff: {initial: 500ms, max: 1m}\n",
    )
    monkeypatch.setenv("STREAMLAB_STREAMS__S__BACKOFF__MAX", "1m30s")
    stream = load_settings(path).streams["s"]
    assert stream.block_duration == timedelta(seconds=2)
    assert stream.claim_min_idle == timedelta(minutes=2)
    assert stream.backoff.initial == timedelta(milliseconds=500)
    assert stream.backoff.max == timedelta(seconds=90)


@pytest.mark.parametrize("raw", ["5 parsecs", "5x", "", "s", "-5s", -1, True, None, [5]])
def test_bad_durations_are_rejected(raw: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


def test_bad_duration_in_yaml_names_key_file_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(FIXTURES / "bad_duration.yaml")
    message = str(info.value)
    assert "streams.webhook_events.block_duration" in message
    assert "'5 parsecs'" in message
    assert "bad_duration.yaml" in message
    assert "'5s'" in message, "the message shows the accepted forms"


def test_bad_duration_in_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STREAM_ENV + "CONSUMER_GROUP", "g")
    monkeypatch.setenv(STREAM_ENV + "BLOCK_DURATION", "5 parsecs")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "streams.webhook_events.block_duration" in str(info.value)
    assert STREAM_ENV + "BLOCK_DURATION" in str(info.value)


# --- unknown keys and other errors -----------------------------------------------------------


def test_misspelled_top_level_yaml_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(FIXTURES / "bad_top_level_key.yaml")
    message = str(info.value)
    assert "reddis: unknown key" in message
    assert "did you mean 'redis'" in message
    assert "bad_top_level_key.yaml" in message


def test_misspelled_nested_yaml_keys_are_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(FIXTURES / "bad_nested_key.yaml")
    message = str(info.value)
    assert "2 errors" in message
    assert "streams.webhook_events.batch_sise: unknown key" in message
    assert "did you mean 'batch_size'" in message
    assert "streams.webhook_events.backoff.inital: unknown key" in message
    assert "did you mean 'initial'" in message
    assert "bad_nested_key.yaml" in message


def test_the_seed_readme_layout_with_dlq_under_streams_is_read() -> None:
    settings = load_settings(FIXTURES / "seed_readme_layout.yaml")
    assert set(settings.streams) == {"webhook_events"}
    assert settings.dlq.stream_name == "webhook_events_dlq"
    assert settings.dlq.max_length == 1000
    assert settings.dlq.retention == timedelta(hours=168)
    config = settings.consumer_config("webhook_events", consumer="w1")
    assert (config.dlq_stream, config.dlq_maxlen) == ("webhook_events_dlq", 1000)


def test_the_dlq_section_fills_in_each_stream_unless_it_sets_its_own() -> None:
    streams = {
        "a": {"consumer_group": "g"},
        "b": {"consumer_group": "g", "dlq_stream": "b_dead", "dlq_maxlen": 5},
        "c": {"group": "g", "dlq_retention": "1h"},
    }
    settings = load_settings(
        streams=streams, dlq={"stream_name": "all_dlq", "max_length": 100, "retention": "24h"}
    )
    a, b, c = (settings.streams[name] for name in "abc")
    assert (a.stream, a.dlq_stream, a.dlq_maxlen, a.dlq_retention) == (
        "a",
        "all_dlq",
        100,
        timedelta(hours=24),
    )
    assert (b.dlq_stream, b.dlq_maxlen, b.dlq_retention) == ("b_dead", 5, timedelta(hours=24))
    assert (c.group, c.dlq_stream, c.dlq_retention) == ("g", "all_dlq", timedelta(hours=1))
    assert settings.consumer_config("b", consumer="w") == b.model_copy(update={"consumer": "w"})


def test_a_bad_dlq_section_is_reported_once_at_dlq() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(streams={"s": {"consumer_group": "g"}}, dlq={"retention": "0s"})
    message = str(info.value)
    assert "1 error" in message
    assert "dlq.retention: must be greater than 0" in message


def test_a_section_naming_another_stream_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "streams:\n  s:\n    consumer_group: g\n    stream: t\n")
    with pytest.raises(ConfigError, match=r"streams\.s\.stream: .*the section's key is the stream"):
        load_settings(path)
    assert load_settings(streams={"s": {"consumer_group": "g", "stream": "s"}}).streams["s"]


def test_the_stream_key_is_not_a_setting_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STREAM_ENV + "CONSUMER_GROUP", "g")
    monkeypatch.setenv(STREAM_ENV + "MAX_LENGTH", "7")  # the seed's alias of stream_maxlen
    assert load_settings().streams["webhook_events"].stream_maxlen == 7
    monkeypatch.setenv(STREAM_ENV + "STREAM", "other")
    with pytest.raises(ConfigError, match=r"'stream' is not a key of streams\.webhook_events"):
        load_settings()


def test_dlq_given_both_under_streams_and_at_the_top_is_an_error(tmp_path: Path) -> None:
    text = (FIXTURES / "seed_readme_layout.yaml").read_text()
    path = tmp_path / "both.yaml"
    path.write_text(text + "dlq:\n  stream_name: other\n")
    with pytest.raises(ConfigError, match="given twice"):
        load_settings(path)


def test_unknown_env_vars_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLAB_REDIS__ADRR", "x:1")
    monkeypatch.setenv("STREAMLAB_BOGUS", "1")
    monkeypatch.setenv(STREAM_ENV + "BATCH_SISE", "5")
    monkeypatch.setenv("STREAMLAB_REDIS__DB__X", "5")
    with pytest.raises(ConfigError) as info:
        load_settings(SEED)
    message = str(info.value)
    assert "STREAMLAB_REDIS__ADRR: 'adrr' is not a key of redis; did you mean 'addr'?" in message
    assert "STREAMLAB_BOGUS: 'bogus' is not a key of the top level" in message
    assert STREAM_ENV + "BATCH_SISE" in message
    assert "did you mean 'batch_size'" in message
    assert "STREAMLAB_REDIS__DB__X" in message
    assert "redis.db is a single value" in message


def test_env_vars_that_are_not_settings_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMLAB_SERVER", "valkey")  # read by streamlab.embedded
    monkeypatch.setenv("STREAMLAB_CONFIG", str(SEED))
    monkeypatch.setenv("STREAMLAB_STREAMS", '{"orders": {"consumer_group": "o"}}')
    assert load_settings().streams["orders"].group == "o"


def test_missing_consumer_group_names_the_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "streams:\n  orders:\n    batch_size: 5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "streams.orders.consumer_group: required key is missing" in str(info.value)
    assert "streamlab.yaml" in str(info.value)


def test_bad_values_name_key_and_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "redis:\n  addr: 'localhost:notaport'\n  db: -1\n"
        "streams:\n  s:\n    consumer_group: g\n    batch_size: 0\n",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "3 errors" in message
    assert "redis.addr: expected 'host:port'" in message
    assert "redis.db: Input should be greater than or equal to 0 (got -1)" in message
    assert "streams.s.batch_size: Input should be greater than or equal to 1" in message


def test_zero_block_duration_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"block_duration: must be .* 0 would block forever"):
        load_settings(streams={"s": {"consumer_group": "g", "block_duration": "0s"}})


def test_backoff_longer_than_claim_min_idle_is_accepted_up_to_30_days() -> None:
    day = {"initial": "24h", "max": "24h", "first_immediate": False}
    settings = load_settings(
        streams={"s": {"consumer_group": "g", "claim_min_idle": "30s", "backoff": day}}
    )
    assert settings.consumer_config("s").backoff.max == timedelta(hours=24)
    with pytest.raises(ConfigError, match="30 days"):
        load_settings(
            streams={
                "s": {"consumer_group": "g", "backoff": {**day, "initial": "31d", "max": "31d"}}
            }
        )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("streams: [a, b\n", "invalid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_bad_redis_url_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://localhost:6379")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "redis.url: URL scheme must be redis://" in str(info.value)
    assert "environment variable REDIS_URL" in str(info.value)


# --- redis_url -------------------------------------------------------------------------------


def test_redis_url_quotes_credentials() -> None:
    password = "p@ss:w/rd %#?&="
    settings = load_settings(
        redis={"addr": "db.example.com:6390", "username": "al ice", "password": password, "db": 2}
    )
    url = settings.redis_url()
    assert url.startswith("redis://al%20ice:p%40ss%3Aw%2Frd%20%25%23%3F%26%3D@db.example.com")
    kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
    assert kwargs["username"] == "al ice"
    assert kwargs["password"] == password
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("db.example.com", 6390, 2)


@pytest.mark.parametrize(
    ("redis_settings", "url"),
    [
        ({}, "redis://localhost:6379/0"),
        ({"addr": "cache"}, "redis://cache:6379/0"),
        ({"addr": "[::1]:6380"}, "redis://[::1]:6380/0"),
        ({"username": "worker"}, "redis://worker@localhost:6379/0"),
        ({"password": "pw", "db": 1}, "redis://:pw@localhost:6379/1"),
        ({"url": "unix:///tmp/redis.sock", "addr": "x:1"}, "unix:///tmp/redis.sock"),
        ({"url": ""}, "redis://localhost:6379/0"),
    ],
)
def test_redis_url_composition(redis_settings: dict[str, object], url: str) -> None:
    assert load_settings(redis=redis_settings).redis_url() == url


def settings_for(url: str, **extra: object) -> StreamlabSettings:
    """Settings that point at the server behind ``url`` through addr/password/db."""
    parts = urlsplit(url)
    return load_settings(
        redis={
            "addr": f"{parts.hostname}:{parts.port or 6379}",
            "username": unquote(parts.username or ""),
            "password": unquote(parts.password or ""),
            "db": int(parts.path.strip("/") or 0),
            **extra,
        }
    )


def test_redis_url_connects_to_the_test_server(redis_url: str) -> None:
    client = connect(settings_for(redis_url).redis_url())
    try:
        assert client.ping() is True
    finally:
        client.close()


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A throw-away ACL user whose password needs quoting in a URL."""
    name = f"streamlab-test-{uuid.uuid4().hex[:8]}"
    password = "p@ss:w/rd %#?"
    try:
        redis_client.acl_setuser(
            name, enabled=True, passwords=[f"+{password}"], commands=["+ping", "+acl|whoami"]
        )
    except redis.ResponseError as exc:
        pytest.skip(f"cannot create an ACL user on this server: {exc}")
    try:
        yield name, password
    finally:
        redis_client.acl_deluser(name)


def test_redis_url_authenticates_with_quoted_password(
    redis_url: str, acl_user: tuple[str, str]
) -> None:
    name, password = acl_user
    settings = settings_for(redis_url, username=name, password=password)
    client = connect(settings.redis_url())
    try:
        assert client.ping() is True
        assert client.acl_whoami() == name
    finally:
        client.close()


def test_settings_client_knows_dlq_names_and_stream_caps(redis_url: str, stream_name: str) -> None:
    streams = {
        stream_name: {"consumer_group": "g", "max_length": 50, "dlq_stream": "dead"},
        "other": {"consumer_group": "g"},
    }
    client = load_settings(redis={"url": redis_url}, streams=streams).client()
    uncapped = f"{stream_name}:uncapped"
    try:
        assert client.dlq_stream(stream_name) == "dead"
        assert client.dlq_stream("other") == "other_dlq"
        client.add_many(stream_name, ({"n": str(i)} for i in range(1000)))
        client.add_to_stream(stream_name, {"n": "last"})
        # MAXLEN ~ trims whole stream nodes (100 entries by default): near the cap, not at it.
        assert 50 <= client.redis.xlen(stream_name) <= 250
        client.add_many(uncapped, ({"n": str(i)} for i in range(300)))
        assert client.redis.xlen(uncapped) == 300
    finally:
        client.redis.delete(uncapped)
        client.redis.close()


# --- consumer_config -------------------------------------------------------------------------


def test_consumer_config_maps_every_field() -> None:
    config = load_settings(FULL).consumer_config("webhook_events", consumer="worker-1")

    assert config == ConsumerConfig(
        stream="webhook_events",
        group="webhook_workers",
        consumer="worker-1",
        block_duration=timedelta(seconds=5),
        batch_size=10,
        max_retries=3,
        backoff=Backoff(
            initial=timedelta(seconds=1),
            multiplier=2.0,
            max=timedelta(seconds=60),
            first_immediate=True,
            jitter=0.1,
        ),
        claim_min_idle=timedelta(seconds=90),
        dlq_stream="webhook_events_failed",
        dlq_maxlen=1000,
        dlq_retention=timedelta(days=7),
        stream_maxlen=10000,
    )


def test_consumer_config_defaults() -> None:
    config = load_settings(SEED).consumer_config("webhook_events")
    assert config.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert config.backoff == Backoff(), "the settings' backoff defaults are the consumer's"
    assert config.claim_min_idle == timedelta(seconds=60)
    assert config.dlq_stream == "webhook_events_dlq"
    assert config.dlq_retention == timedelta(days=7)


def test_consumer_config_dlq_name_fallbacks(redis_url: str) -> None:
    streams = {"a": {"consumer_group": "g"}, "b": {"consumer_group": "g", "dlq_stream": "b_dead"}}
    settings = load_settings(redis={"url": redis_url}, streams=streams)
    # Named nowhere: as in Python, None (where the client routes), resolved by the consumer.
    assert settings.consumer_config("a").dlq_stream is None
    assert settings.consumer_config("b").dlq_stream == "b_dead"
    shared = load_settings(redis={"url": redis_url}, streams=streams, dlq={"stream_name": "all"})
    assert shared.consumer_config("a").dlq_stream == "all"
    assert shared.consumer_config("b").dlq_stream == "b_dead"
    for loaded, a_dlq in ((settings, "a_dlq"), (shared, "all")):
        client = loaded.client()
        try:
            for name, dlq in (("a", a_dlq), ("b", "b_dead")):
                assert loaded.dlq_stream(name) == client.dlq_stream(name) == dlq
                consumer = Consumer(client, loaded.consumer_config(name))
                assert consumer.config.dlq_stream == consumer.dlq_stream == dlq
        finally:
            client.redis.close()


def test_consumer_config_passes_optional_keys_only_when_set() -> None:
    stream = {"consumer_group": "g", "group_start_id": "$", "claim_interval": "250ms"}
    config = load_settings(streams={"s": stream}).consumer_config("s")
    assert config.group_start_id == "$"
    assert config.claim_interval == timedelta(milliseconds=250)
    assert config.create_group is ConsumerConfig(stream="s", group="g").create_group


def test_consumer_config_for_unknown_stream_names_configured_ones() -> None:
    with pytest.raises(ConfigError, match=r"'orders' is not configured.*'webhook_events'"):
        load_settings(SEED).consumer_config("orders")


def test_consumer_config_wraps_its_validation_errors() -> None:
    with pytest.raises(ConfigError, match=r"stream 'webhook_events'.*consumer"):
        load_settings(SEED).consumer_config("webhook_events", consumer="streamlab:retry")


# --- values that lose events silently are rejected the same way from every source -----------


def _nested(path: tuple[str, ...], value: object) -> dict[str, object]:
    tree: dict[str, object] = {"streams": {"s": {"consumer_group": "g"}}}
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[path[-1]] = value
    return tree


def errors_from_every_source(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    path: tuple[str, ...],
    text: str,
    python: dict[str, object],
) -> list[str]:
    """The `ConfigError` texts for one bad value given in YAML, in the environment and to
    `ConsumerConfig` in Python; each source must reject it."""
    messages = []
    file = write(tmp_path, yaml.safe_dump(_nested(path, text)))
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    messages.append(str(info.value))
    monkeypatch.setenv("STREAMLAB_STREAMS__S__CONSUMER_GROUP", "g")
    variable = "STREAMLAB_" + "__".join(path).upper()
    monkeypatch.setenv(variable, text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert variable in str(info.value), "the error names the variable"
    messages.append(str(info.value))
    with pytest.raises(ConfigError) as info:
        ConsumerConfig(stream="s", group="g", **python)  # type: ignore[arg-type]
    messages.append(str(info.value))
    return messages


@pytest.mark.parametrize(
    ("path", "text", "python", "field"),
    [
        (("dlq", "retention"), "-1s", {"dlq_retention": timedelta(seconds=-1)}, "retention"),
        (("dlq", "retention"), "0s", {"dlq_retention": timedelta(0)}, "retention"),
        (
            ("streams", "s", "block_duration"),
            "-5s",
            {"block_duration": timedelta(seconds=-5)},
            "block_duration",
        ),
        (
            ("streams", "s", "claim_interval"),
            "-100ms",
            {"claim_interval": timedelta(milliseconds=-100)},
            "claim_interval",
        ),
        (
            ("streams", "s", "claim_min_idle"),
            "-1m",
            {"claim_min_idle": timedelta(minutes=-1)},
            "claim_min_idle",
        ),
        (
            ("streams", "s", "claim_min_idle"),
            "876000h",  # 100 years: Redis clamps idle times to 1970, so never reached
            {"claim_min_idle": timedelta(days=36500)},
            "claim_min_idle",
        ),
        (
            ("streams", "s", "backoff", "initial"),
            "-1s",
            {"backoff": {"initial": timedelta(seconds=-1)}},
            "backoff.initial",
        ),
        (
            ("streams", "s", "backoff", "max"),
            "-1s",
            {"backoff": {"max": timedelta(seconds=-1)}},
            "backoff.max",
        ),
    ],
)
def test_bad_durations_are_rejected_naming_the_field(  # noqa: PLR0917 (parametrized)
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    path: tuple[str, ...],
    text: str,
    python: dict[str, object],
    field: str,
) -> None:
    yaml_error, env_error, python_error = errors_from_every_source(
        monkeypatch, tmp_path, path, text, python
    )
    assert ".".join(path) in yaml_error
    assert ".".join(path) in env_error
    python_field = "dlq_retention" if field == "retention" else field
    assert f"{python_field}: " in python_error


@pytest.mark.parametrize("bad", ["banana", ">", "1-2-3", "-1", "1-", "18446744073709551616", " 0"])
def test_a_malformed_group_start_id_is_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    path = ("streams", "s", "group_start_id")
    for message in errors_from_every_source(
        monkeypatch, tmp_path, path, bad, {"group_start_id": bad}
    ):
        assert "group_start_id: " in message
        assert "is not a group start id" in message


def test_every_accepted_group_start_id_is_one_redis_accepts(
    streams_client: RedisStreamsClient, stream_name: str
) -> None:
    accepted = ["$", "0", "0-0", "1700000000000", "1700000000000-5"]
    accepted.append("18446744073709551615-18446744073709551615")
    for n, start in enumerate(accepted):
        assert ConsumerConfig(stream="s", group="g", group_start_id=start).group_start_id == start
        settings = load_settings(streams={"s": {"consumer_group": "g", "group_start_id": start}})
        assert settings.consumer_config("s").group_start_id == start
        assert streams_client.ensure_group(stream_name, f"g{n}", start) is True


def test_a_dlq_that_is_the_stream_itself_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = ("streams", "s", "dlq_stream")
    for message in errors_from_every_source(monkeypatch, tmp_path, path, "s", {"dlq_stream": "s"}):
        assert "dlq_stream" in message
        assert "is the stream itself" in message


def test_a_shared_dlq_name_equal_to_a_stream_is_rejected_after_defaults() -> None:
    # dlq.stream_name is every stream's DLQ unless it names its own: here it is stream 's'.
    with pytest.raises(ConfigError, match=r"dlq\.stream_name: the DLQ of stream 's' is the stream"):
        load_settings(streams={"s": {"consumer_group": "g"}}, dlq={"stream_name": "s"})
    # A stream with a DLQ of its own is not affected by the shared name.
    settings = load_settings(
        streams={"s": {"consumer_group": "g", "dlq_stream": "x"}, "t": {"consumer_group": "h"}},
        dlq={"stream_name": "s"},
    )
    assert (settings.dlq_stream("s"), settings.dlq_stream("t")) == ("x", "s")


def test_dlqs_that_lead_back_to_their_stream_are_rejected() -> None:
    streams = {
        "a": {"consumer_group": "g", "dlq_stream": "b"},
        "b": {"consumer_group": "g", "dlq_stream": "a"},
    }
    with pytest.raises(ConfigError, match=r"streams\.a\.dlq_stream:.*'a' -> 'b' -> 'a'"):
        load_settings(streams=streams)
    # Consuming a DLQ with its own group is fine: its DLQ is another stream.
    streams["b"] = {"consumer_group": "alerts"}
    assert load_settings(streams=streams).dlq_stream("b") == "b_dlq"


def test_a_client_dlq_name_equal_to_the_stream_is_rejected(redis_client: redis.Redis) -> None:
    client = RedisStreamsClient(redis_client, dlq_names={"s": "s"})
    with pytest.raises(ConfigError, match="dlq_names name the stream itself"):
        Consumer(client, ConsumerConfig(stream="s", group="g"))


def test_any_max_retries_works_and_the_delay_stays_capped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # max_retries=1030 raised a raw OverflowError (2.0 ** 1029): the exponent is now bounded.
    config = ConsumerConfig(stream="s", group="g", max_retries=1030)
    assert max_delay(config.max_retries, config.backoff) == 60.0
    file = write(tmp_path, "streams:\n  s:\n    consumer_group: g\n    max_retries: 1030\n")
    assert load_settings(file).consumer_config("s").max_retries == 1030
    monkeypatch.setenv("STREAMLAB_STREAMS__S__CONSUMER_GROUP", "g")
    monkeypatch.setenv("STREAMLAB_STREAMS__S__MAX_RETRIES", str(10**6))
    assert load_settings().consumer_config("s").max_retries == 10**6
    huge = Backoff(initial=timedelta(microseconds=1), multiplier=1e300, max=timedelta(days=9999))
    for retry in (2, 3, 1030, 10**6, 10**400):
        delay = compute_backoff(retry, huge)
        assert 0.0 <= delay <= timedelta(days=9999).total_seconds()
    assert compute_backoff(10**400) == 60.0
    # The schedule need not fit claim_min_idle (retries wait in their own sorted set).
    ConsumerConfig(stream="s", group="g", max_retries=1030, claim_min_idle=timedelta(seconds=5))


@pytest.mark.parametrize("bad", ["inf", "nan"])
def test_a_multiplier_that_is_not_a_finite_number_is_rejected_everywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    path = ("streams", "s", "backoff", "multiplier")
    python = {"backoff": {"multiplier": float(bad)}}
    for message in errors_from_every_source(monkeypatch, tmp_path, path, bad, python):
        assert "backoff.multiplier: " in message


# --- one model per concept: every field accepts and refuses the same values from every source --

# (stream section in the YAML vocabulary, accepted?). Python gets the same keys and values
# (``consumer_group`` and ``max_length`` are aliases of ``group`` and ``stream_maxlen``).
SAME_FROM_EVERY_SOURCE: list[tuple[dict[str, object], bool]] = [
    ({"block_duration": "4s"}, True),
    ({"block_duration": 2.5}, True),
    ({"block_duration": "PT1M"}, True),
    ({"block_duration": 0}, False),  # would block forever
    ({"block_duration": "0s"}, False),
    ({"block_duration": "-5s"}, False),
    ({"block_duration": "5 parsecs"}, False),
    ({"batch_size": 1}, True),
    ({"batch_size": "25"}, True),
    ({"batch_size": 0}, False),
    ({"batch_size": "many"}, False),
    ({"max_retries": 0}, True),
    ({"max_retries": 1030}, True),
    ({"max_retries": -1}, False),
    ({"claim_min_idle": "1m30s"}, True),
    ({"claim_min_idle": "-1m"}, False),
    ({"claim_min_idle": "876000h"}, False),
    ({"claim_interval": "250ms"}, True),
    ({"claim_interval": "0s"}, False),
    ({"handler_timeout": "5m"}, True),
    ({"handler_timeout": "0s"}, False),
    ({"shutdown_grace": "0s"}, True),
    ({"shutdown_grace": "-1s"}, False),
    ({"delete_idle_consumers": "2h"}, True),
    ({"delete_idle_consumers": "0s"}, False),
    ({"dlq_retention": "24h"}, True),
    ({"dlq_retention": "0s"}, False),
    ({"dlq_maxlen": 1000}, True),
    ({"dlq_maxlen": 0}, False),
    ({"max_length": 10000}, True),
    ({"max_length": 0}, False),
    ({"group_start_id": "$"}, True),
    ({"group_start_id": "1700000000000-5"}, True),
    ({"group_start_id": "banana"}, False),
    ({"create_group": False}, True),
    ({"create_group": "maybe"}, False),
    ({"traceback_limit": 0}, True),
    ({"traceback_limit": -1}, False),
    ({"dlq_stream": "s_failed"}, True),
    ({"dlq_stream": "s"}, False),  # the stream itself
    ({"consumer": "worker-1"}, True),
    ({"consumer": "streamlab:retry"}, False),
    ({"backoff": {"initial": "500ms", "max": "1m"}}, True),
    ({"backoff": {"initial": "10s", "max": "1s"}}, False),  # max below initial
    ({"backoff": {"initial": "-1s"}}, False),
    ({"backoff": {"max": "500ms"}}, False),  # below the default initial (1s)
    ({"backoff": {"multiplier": 1}}, True),
    ({"backoff": {"multiplier": 0.5}}, False),
    ({"backoff": {"multiplier": "inf"}}, False),
    ({"backoff": {"multiplier": "nan"}}, False),
    ({"backoff": {"jitter": 1}}, True),
    ({"backoff": {"jitter": 1.5}}, False),
    ({"backoff": {"first_immediate": False}}, True),
    ({"backoff": {"first_immediate": "sometimes"}}, False),
    ({"backoff": {"initial": "31d", "max": "31d"}}, False),  # past the 30-day cap
    ({"block_duration": True}, False),
    ({"create_group": "false"}, True),
]

# Every int field of the section: a bool is no count (pydantic's lax int took True as 1 from
# Python and YAML, while the environment's "true" was refused); a whole number is one however
# it is written. 7 is no field's default, so an accepted value is visible.
COUNT_FIELDS = ("batch_size", "max_retries", "dlq_maxlen", "max_length", "traceback_limit")
COUNT_VALUES: list[tuple[object, bool]] = [
    (7, True),
    (7.0, True),
    ("7", True),
    ("7.0", True),
    (True, False),
    (False, False),
    ("true", False),
    (7.5, False),
    ("7.5", False),
    ("seven", False),
]
SAME_FROM_EVERY_SOURCE += [
    ({key: value}, accepted) for key in COUNT_FIELDS for value, accepted in COUNT_VALUES
]
# The float fields of the backoff: a bool is no number either.
SAME_FROM_EVERY_SOURCE += [
    ({"backoff": {"multiplier": 3}}, True),
    ({"backoff": {"multiplier": "3"}}, True),
    ({"backoff": {"multiplier": "1.5"}}, True),
    ({"backoff": {"multiplier": True}}, False),
    ({"backoff": {"jitter": "0.5"}}, True),
    ({"backoff": {"jitter": True}}, False),
    ({"backoff": {"jitter": False}}, False),
]


def _env_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _env_vars(section: dict[str, object], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update(_env_vars(value, f"{prefix}{key.upper()}__"))
        else:
            out[prefix + key.upper()] = _env_text(value)
    return out


def _leaf_keys(section: dict[str, object]) -> set[str]:
    keys: set[str] = set()
    for key, value in section.items():
        keys |= _leaf_keys(value) if isinstance(value, dict) else {key}
    return keys


@pytest.mark.parametrize(("section", "accepted"), SAME_FROM_EVERY_SOURCE, ids=repr)
def test_a_value_is_accepted_or_refused_the_same_from_python_yaml_and_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, section: dict[str, object], accepted: bool
) -> None:
    worker = None if "consumer" in section else "w"  # the section's own, else "w"

    def from_python() -> ConsumerConfig:
        return ConsumerConfig(**{"stream": "s", "group": "g", "consumer": "w", **section})

    def from_yaml() -> ConsumerConfig:
        tree = {"streams": {"s": {"consumer_group": "g", **section}}}
        path = write(tmp_path, yaml.safe_dump(tree))
        return load_settings(path).consumer_config("s", consumer=worker)

    def from_env() -> ConsumerConfig:
        with monkeypatch.context() as env:
            env.setenv("STREAMLAB_STREAMS__S__CONSUMER_GROUP", "g")
            for name, text in _env_vars(section, "STREAMLAB_STREAMS__S__").items():
                env.setenv(name, text)
            return load_settings().consumer_config("s", consumer=worker)

    if accepted:
        python, from_file, from_vars = from_python(), from_yaml(), from_env()
        assert from_file == python
        assert from_vars == python
        assert python != ConsumerConfig(stream="s", group="g", consumer="w"), "a non-default"
        return
    for build in (from_python, from_yaml, from_env):
        with pytest.raises(ConfigError) as info:
            build()
        assert not isinstance(info.value, ValidationError), "never a raw pydantic error"
        message = str(info.value)
        named = _leaf_keys(section) | ({"backoff"} if "backoff" in section else set())
        assert any(key in message for key in named), f"{build.__name__}: {message}"


# ((section, key), value, accepted) for the settings-only sections, whose Python model is
# `RedisSettings` or `DLQSettings`.
SETTINGS_NUMBERS: list[tuple[tuple[str, str], object, bool]] = [
    (field, value, accepted)
    for field in (("redis", "db"), ("dlq", "max_length"))
    for value, accepted in COUNT_VALUES
]


@pytest.mark.parametrize(("field", "value", "accepted"), SETTINGS_NUMBERS, ids=repr)
def test_a_settings_number_is_accepted_or_refused_the_same_from_python_yaml_and_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    field: tuple[str, str],
    value: object,
    accepted: bool,
) -> None:
    section, key = field
    model = {"redis": RedisSettings, "dlq": DLQSettings}[section]

    def from_python() -> object:
        return model(**{key: value})

    def from_yaml() -> object:
        path = write(tmp_path, yaml.safe_dump({section: {key: value}}))
        return getattr(load_settings(path), section)

    def from_env() -> object:
        with monkeypatch.context() as env:
            env.setenv(f"STREAMLAB_{section.upper()}__{key.upper()}", _env_text(value))
            return getattr(load_settings(), section)

    if accepted:
        assert from_python() == from_yaml() == from_env() == model(**{key: 7})
        return
    for build in (from_python, from_yaml, from_env):
        with pytest.raises(ConfigError, match=key) as info:
            build()
        assert not isinstance(info.value, ValidationError)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ConsumerConfig.model_validate({"stream": "s"}),
        lambda: ConsumerConfig.model_validate_json(
            '{"stream": "s", "group": "g", "batch_size": 0}'
        ),
        lambda: ConsumerConfig.model_validate_strings(
            {"stream": "s", "group": "g", "max_retries": "-1"}
        ),
        lambda: Backoff.model_validate({"initial": "10s", "max": "1s"}),
        lambda: Backoff.model_validate_json('{"jitter": 2}'),
        lambda: DLQSettings(retention="0s"),
        lambda: RedisSettings(db=-1),
        lambda: StreamlabSettings.model_validate({"redis": {"db": -1}}),
    ],
    ids=[
        "ConsumerConfig.model_validate",
        "ConsumerConfig.model_validate_json",
        "ConsumerConfig.model_validate_strings",
        "Backoff.model_validate",
        "Backoff.model_validate_json",
        "DLQSettings",
        "RedisSettings",
        "StreamlabSettings.model_validate",
    ],
)
def test_every_way_of_building_a_config_model_raises_config_error(build: object) -> None:
    with pytest.raises(ConfigError) as info:
        build()  # type: ignore[operator]
    assert not isinstance(info.value, ValidationError)
    assert info.value.problems or "invalid streamlab settings" in str(info.value)


def test_importing_the_consumer_loads_no_settings_machinery() -> None:
    code = (
        "import sys, streamlab.consumer, streamlab.backoff, streamlab.durations\n"
        "heavy = {'yaml', 'pydantic_settings', 'streamlab.config'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_the_removed_mirror_models_are_gone() -> None:
    import streamlab
    import streamlab.config

    for name in ("ConsumerSettings", "BackoffSettings"):
        assert not hasattr(streamlab.config, name)
        assert name not in streamlab.__all__
    stream = load_settings(SEED).streams["webhook_events"]
    assert type(stream) is ConsumerConfig
    assert type(stream.backoff) is Backoff
