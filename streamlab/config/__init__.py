"""Settings from the environment and a YAML file, validated by pydantic-settings.

Sources, highest precedence first: keyword arguments, ``STREAMLAB_*`` environment variables
(``__`` separates nesting levels: ``STREAMLAB_STREAMS__WEBHOOK_EVENTS__BATCH_SIZE=20``), the
plain ``REDIS_URL`` variable (maps to ``redis.url``), the YAML file (``load_settings(path)``,
else ``STREAMLAB_CONFIG``), then defaults. Nested sections merge key by key across sources.

A stream's section is its `streamlab.consumer.ConsumerConfig` (the seed's keys
``consumer_group`` and ``max_length`` are aliases of ``group`` and ``stream_maxlen``), and
its ``backoff`` a `streamlab.backoff.Backoff`: a value is valid or invalid the same way from
Python, YAML and the environment. Durations are `streamlab.durations.Duration`.

Every unknown key is an error naming it: in YAML through ``extra="forbid"``, in the environment
through a check of each ``STREAMLAB_*`` variable against the settings tree, because
pydantic-settings ignores variables it does not know. Errors are `ConfigError`s listing every
bad key path, why it is bad, and where it came from (argument, variable or file).

Modules: ``_sources`` (the file and ``REDIS_URL``), ``_models`` (the ``redis`` and ``dlq``
sections), ``_settings`` (`StreamlabSettings`, `load_settings`), ``_diagnostics`` (error
texts and the environment check).
"""

from __future__ import annotations

from streamlab.config._models import DLQSettings, RedisSettings
from streamlab.config._settings import StreamlabSettings, load_settings
from streamlab.config._sources import CONFIG_ENV_VAR, ENV_PREFIX

# For `streamlab.cli`, which reads `--since`-style durations; new code imports it from
# streamlab.durations.
from streamlab.durations import parse_duration

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "DLQSettings",
    "RedisSettings",
    "StreamlabSettings",
    "load_settings",
    "parse_duration",
]
