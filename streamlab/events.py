"""Events and stream entries: the models and the one place that encodes and decodes them.

Wire format: one stream-entry field per attribute, nested values as JSON strings, times in
RFC 3339. Decoding is tolerant: it accepts the platform's field names (``event_id``,
``repo_name``: `streamlab.records.FIELD_ALIASES`; streamlab's own name wins over an alias,
`streamlab.records.read_name`), fills what is missing with sensible
defaults and keeps unknown fields verbatim in ``StreamEvent.extra`` so that nothing written
by another service is dropped. Failure records, replay markers and the replies of XINFO and
XPENDING are in `streamlab.records`.

Limits: JSON values (``payload``, ``auth_context``) nest at most `MAX_DEPTH` levels, which is
what the decoder (pydantic-core's parser) reads, and hold no NaN or Infinity, which JSON has no
words for; `encode_event` raises `EncodeError` naming the field path otherwise. Decoding
rejects deeper JSON with a `DecodeError` and, being tolerant, reads a bare ``NaN`` others wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Self

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streamlab.errors import DecodeError, EncodeError
from streamlab.ids import entry_time
from streamlab.records import FIELD_ALIASES, Failure, format_time, read_name, tenant_of

__all__ = [
    "MAX_DEPTH",
    "AuthContext",
    "StreamEvent",
    "StreamMessage",
    "decode_entries",
    "decode_event",
    "decode_message",
    "encode_event",
]

# streamlab's own layout: the attributes of `StreamEvent` an entry carries, in the order
# `_decode_own` takes them.
_OWN: tuple[str, ...] = ("id", "event_type", "repository", "tenant_id", "payload")
_OWN += ("auth_context", "timestamp", "retry_count")
_KNOWN = frozenset(_OWN)


_ZERO = timedelta(0)

MAX_DEPTH = 200
"""How many arrays and objects a JSON field (``payload``, ``auth_context``) may nest: the
recursion limit of pydantic-core's parser, which decodes them. Deeper values are refused
when producing (`EncodeError`) and when decoding (`DecodeError`)."""


def _new_id() -> str:
    """A random uuid4 as text: the same distribution and form as ``str(uuid.uuid4())``
    (version 4, RFC 4122 variant, from `os.urandom`), at a fraction of its cost, which matters
    when a producer builds events by the thousand: ids are made `_IDS_PER_DRAW` at a time from
    one `os.urandom` call. ``list.pop`` is atomic, so threads never share an id, and a forked
    child drops the ids its parent had drawn (`os.register_at_fork`)."""
    try:
        return _ids.pop()
    except IndexError:
        _ids.extend(_draw_ids())
        return _ids.pop()


_IDS_PER_DRAW = 256
_VARIANT = "89ab"
_ids: list[str] = []
os.register_at_fork(after_in_child=_ids.clear)


def _draw_ids() -> list[str]:
    h = os.urandom(16 * _IDS_PER_DRAW).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[int(h[i + 16], 16) & 3]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, len(h), 32)
    ]


def _now() -> datetime:
    return datetime.now(UTC)


class AuthContext(BaseModel):
    """Who sent an event: tenant, principal and, for GitHub apps, installation and app ids.

    Unknown keys are kept (``extra="allow"``) because other services add their own.
    """

    # NaN stays NaN when serialised (pydantic writes null by default), so that the encoder
    # refuses it instead of changing the value.
    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")

    tenant_id: str = ""
    principal_id: str = ""
    principal_type: str = ""
    installation_id: int | str | None = None
    app_id: int | str | None = None
    permissions: list[str] | dict[str, Any] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class StreamEvent(BaseModel):
    """A webhook event as it travels through a stream.

    ``extra`` holds entry fields streamlab does not know (for example the platform's
    ``sender_name`` or ``metadata``), verbatim, so that re-encoding writes them back unchanged;
    its names cannot be those of the attributes above.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=_new_id)
    event_type: str
    repository: str = ""
    tenant_id: str = ""
    payload: Any = None
    auth_context: AuthContext | None = None
    timestamp: datetime = Field(default_factory=_now)
    retry_count: int = Field(default=0, ge=0)
    extra: dict[str, str | bytes] = Field(default_factory=dict)

    @field_validator("extra", mode="after")
    @classmethod
    def _unknown_names_only(cls, value: dict[str, str | bytes]) -> dict[str, str | bytes]:
        if value and not _KNOWN.isdisjoint(value):
            taken = sorted(_KNOWN.intersection(value))
            raise ValueError(f"extra fields {taken} are attributes of StreamEvent; set those")
        return value

    @model_validator(mode="after")
    def _tenant_from_auth(self) -> Self:
        """An event without a tenant takes its auth context's (`streamlab.records.tenant_of`), as
        decoding an entry does."""
        if not self.tenant_id and self.auth_context is not None:
            tenant = tenant_of(None, self.auth_context)
            if tenant:  # assigned only when filled: an assignment marks the field as set
                self.tenant_id = tenant
        return self

    @field_validator("timestamp", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """Naive times are taken as UTC; aware ones are converted to UTC."""
        if value.tzinfo is UTC:
            return value
        if value.tzinfo is None or value.utcoffset() == _ZERO:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# The compiled validators, called directly on the consumer's hot path.
_auth_validator = AuthContext.__pydantic_validator__
_event_validator = StreamEvent.__pydantic_validator__


def _without_hooks(schema: Any, hooks: tuple[object, ...], found: list[object]) -> Any:
    """A copy of a core ``schema`` whose after-validators calling one of ``hooks`` are left
    out (each one left out is appended to ``found``)."""
    if isinstance(schema, dict):
        if schema.get("type") == "function-after" and schema["function"]["function"] in hooks:
            found.append(schema["function"]["function"])
            return _without_hooks(schema["schema"], hooks, found)
        return {key: _without_hooks(value, hooks, found) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_without_hooks(value, hooks, found) for value in schema]
    return schema


def _own_layout_validator() -> Callable[[Any], StreamEvent]:
    """`StreamEvent`'s validator without its two Python hooks (``_utc``, ``_tenant_from_auth``),
    for data whose timestamp is a UTC datetime already and whose tenant was taken from its
    auth context already (`_own_data`): calling Python from the validator was a fifth of an
    event's validation. The full validator if the schema is not the shape expected (a pydantic
    change): slower, never wrong."""
    hooks = (StreamEvent._utc, StreamEvent._tenant_from_auth)
    found: list[object] = []
    schema = _without_hooks(StreamEvent.__pydantic_core_schema__, hooks, found)
    if len(found) != len(hooks) or schema.get("cls") is not StreamEvent:
        return _event_validator.validate_python
    return pydantic_core.SchemaValidator(schema).validate_python


_own_validate = _own_layout_validator()


def encode_event(event: StreamEvent) -> dict[str, str | bytes]:
    """Turn an event into stream-entry fields (the inverse of `decode_event`).

    Raises `EncodeError` naming the field path and the event id when ``payload`` or
    ``auth_context`` holds NaN or Infinity, a value JSON cannot encode, or nests deeper than
    `MAX_DEPTH`.
    """
    fields: dict[str, str | bytes] = {
        "id": event.id,
        "event_type": event.event_type,
        "repository": event.repository,
        "tenant_id": event.tenant_id,
        "payload": _to_json(event.payload, "payload", event.id),
        "timestamp": format_time(event.timestamp),
        "retry_count": str(event.retry_count),
    }
    if event.auth_context is not None:
        fields["auth_context"] = _to_json(event.auth_context, "auth_context", event.id)
    for name, value in event.extra.items():
        fields.setdefault(name, value)
    return fields


def _to_json(value: Any, field: str, event_id: str) -> bytes:
    """``value`` as JSON that the decoder reads back: no NaN or Infinity, at most `MAX_DEPTH`
    levels. The check parses the output again only when it could break a rule."""
    try:
        text = pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError as exc:
        if "depth" in str(exc):
            raise EncodeError(_TOO_DEEP, field=field, event_id=event_id) from None
        if "surrogates not allowed" in str(exc):
            path, reason = _json_problem(value, field)
            raise EncodeError(reason, field=path, event_id=event_id) from None
        reason = f"cannot be encoded as JSON ({str(exc)[:200]})"
        raise EncodeError(reason, field=field, event_id=event_id) from None
    # Nesting past MAX_DEPTH takes more than 2 * MAX_DEPTH brackets: shorter text is spared
    # the count.
    suspect = len(text) > 2 * MAX_DEPTH and text.count(b"[") + text.count(b"{") > MAX_DEPTH
    if suspect or b"NaN" in text or b"Infinity" in text:
        try:
            pydantic_core.from_json(text, allow_inf_nan=False, cache_strings=False)
        except ValueError:
            path, reason = _json_problem(pydantic_core.to_jsonable_python(value), field)
            raise EncodeError(reason, field=path, event_id=event_id) from None
    return text


_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels of arrays and objects"


def _json_problem(doc: Any, field: str) -> tuple[str, str]:
    """The path to the first value JSON cannot carry in ``doc``, and why."""
    stack: list[tuple[Any, str, int]] = [(doc, field, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path, f"{value!r} is not a JSON number; send null or a string instead"
        if isinstance(value, str) and _lone_surrogate(value):
            return path, "holds a lone surrogate, which UTF-8 cannot carry"
        if isinstance(value, dict) and any(
            isinstance(k, str) and _lone_surrogate(k) for k in value
        ):
            return path, "has a key holding a lone surrogate, which UTF-8 cannot carry"
        if isinstance(value, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return field, f"{_TOO_DEEP} (at {_short(path)})"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in reversed(list(items)):
                shown = str(key)[:40].encode("utf-8", "replace").decode()
                step = f".{shown}" if isinstance(value, dict) else f"[{key}]"
                stack.append((item, path + step, depth + 1))
    return field, "cannot be read back as JSON"


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _short(path: str, keep: int = 120) -> str:
    return path if len(path) <= keep else path[:keep] + "..."


def decode_event(
    fields: Mapping[str, bytes | str] | Mapping[bytes, bytes],
    *,
    entry_id: str | None = None,
    extra_retries: int = 0,
) -> StreamEvent:
    """Decode stream-entry fields into a `StreamEvent`.

    Raises `DecodeError` naming the field and the entry id when a value is not UTF-8, a JSON
    field is not valid JSON, a required field (``event_type``) is missing or a value has the
    wrong type. A missing ``timestamp`` is taken from the entry id, and so is a missing ``id``
    (the stream id itself), so that each delivery of an entry decodes to the same event.
    ``extra_retries`` is added to the wire ``retry_count`` (the consumer passes deliveries so
    far minus one).
    """
    if fields.keys() == _KNOWN:  # type: ignore[comparison-overlap]
        return _decode_own(_pick_own(fields), entry_id, extra_retries)
    data: dict[str, Any] = {}
    extra: dict[str, str | bytes] = {}
    wire: dict[str, str] = {}
    for raw_key, value in fields.items():
        key = raw_key.decode("utf-8", "surrogateescape") if isinstance(raw_key, bytes) else raw_key
        name = FIELD_ALIASES.get(key, key)
        if name not in _KNOWN:
            extra[key] = _keep(value)
            continue
        if name in data:
            # A second name for one field: the one `read_name` reads wins (streamlab's own
            # name over an alias, whatever the order); the other is kept as an unknown field
            # (aliased fields are text, still raw here).
            if read_name(name, (key, wire[name])) != key:
                extra[key] = _keep(value)
                continue
            extra[wire[name]] = _keep(data[name])
        wire[name] = key
        if name == "payload":
            data[name] = _payload(value, key, entry_id)
        elif name == "auth_context":
            data[name] = _auth_context(value, key, entry_id)
        elif name == "timestamp":
            data[name] = _parse_time(value)
        else:
            # Text stays bytes: the validator decodes UTF-8 (lax mode) and names a bad field.
            data[name] = value
    if "event_type" not in data:
        raise DecodeError("required field is missing", field="event_type", entry_id=entry_id)
    if entry_id is not None:
        if "timestamp" not in data:
            data["timestamp"] = entry_time(entry_id)
        # The same entry decodes to the same event each time it is delivered.
        data.setdefault("id", entry_id)
    if extra:
        data["extra"] = extra
    return _validated(data, wire, entry_id, extra_retries)


_pick_own = itemgetter(*_OWN)


def _decode_own(values: Sequence[Any], entry_id: str | None, extra_retries: int) -> StreamEvent:
    """streamlab's own layout (what `encode_event` writes): every name known, no alias, no
    unknown field, so each value (in `_OWN`'s order) goes straight to its decoder."""
    payload = _payload(values[4], "payload", entry_id)
    auth_context = _auth_context(values[5], "auth_context", entry_id)
    data = _own_data(values, payload, auth_context, _parse_time(values[6]))
    return _validated(data, _NO_ALIASES, entry_id, extra_retries)


def _own_data(
    values: Sequence[Any],
    payload: Any,
    auth_context: AuthContext | None,
    timestamp: datetime | bytes | str,
) -> dict[str, Any]:
    """What the event validator takes for an entry of the own layout (values in `_OWN`'s
    order), its JSON fields and time decoded, its tenant taken from the auth context as the
    model's ``_tenant_from_auth`` takes it (`tenant_of`; so that `_own_validate` may skip that
    hook)."""
    ident, event_type, repository, tenant_id, _, _, _, retries = values
    if not tenant_id and auth_context is not None:  # most events have a tenant: no call
        tenant_id = tenant_of(None, auth_context)
    return {
        "id": ident,
        "event_type": event_type,
        "repository": repository,
        "tenant_id": tenant_id,
        "payload": payload,
        "auth_context": auth_context,
        "timestamp": timestamp,
        "retry_count": retries,
    }


_NO_ALIASES: dict[str, str] = {}
_NULLS = (b"null", "null")


def _payload(value: bytes | str, key: str, entry_id: str | None) -> Any:
    # pydantic-core's Rust parser: about twice as fast as json.loads on payloads.
    try:
        return pydantic_core.from_json(value) if value else None
    except ValueError as exc:
        reason = _TOO_DEEP if "recursion limit" in str(exc) else f"invalid JSON: {exc}"
        raise DecodeError(reason, field=key, entry_id=entry_id) from None


def _validated(
    data: dict[str, Any], wire: dict[str, str], entry_id: str | None, extra_retries: int
) -> StreamEvent:
    try:
        event: StreamEvent = _event_validator.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"]]
        if loc:
            loc[0] = wire.get(loc[0], loc[0])
        raise DecodeError(err["msg"], field=".".join(loc), entry_id=entry_id) from None
    if extra_retries:
        event.retry_count += extra_retries
    return event


def _auth_context(value: bytes | str, key: str, entry_id: str | None) -> AuthContext | None:
    """``auth_context`` validated straight from its JSON (no intermediate dict)."""
    if not value or value in _NULLS:
        return None
    try:
        return _auth_validator.validate_json(value)  # type: ignore[no-any-return]
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            reason = _TOO_DEEP if "recursion limit" in err["msg"] else f"invalid JSON: {err['msg']}"
            raise DecodeError(reason, field=key, entry_id=entry_id) from None
        where = ".".join([key, *(str(part) for part in err["loc"])])
        raise DecodeError(err["msg"], field=where, entry_id=entry_id) from None


def _parse_time(value: bytes | str) -> datetime | bytes | str:
    """A time in `format_time`'s shape, parsed by the C parser; other shapes are left to the
    validator, so what is accepted does not change."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) == 27 and text[26] == "Z" and text[10] == "T":
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
    return value


def _keep(value: bytes | str) -> str | bytes:
    """An unknown field's value: text when it is UTF-8, else the bytes themselves."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    return value


class StreamMessage:
    """One stream entry as read from Redis.

    ``event`` is None when the entry cannot be decoded; ``decode_error`` then says why.
    ``fields`` are the raw entry fields (names decoded, values as bytes), always present.
    ``delivery_count`` is how many times the entry was delivered to its group (1 when new).
    """

    __slots__ = (
        "_fields",
        "_flat",
        "_names",
        "decode_error",
        "delivery_count",
        "event",
        "id",
        "stream",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(  # noqa: PLR0917  # the positional order of the former dataclass
        self,
        stream: str,
        id: str,
        event: StreamEvent | None,
        fields: dict[str, bytes],
        delivery_count: int = 1,
        decode_error: DecodeError | None = None,
    ) -> None:
        self.stream = stream
        self.id = id
        self.event = event
        self.delivery_count = delivery_count
        self.decode_error = decode_error
        self._fields: dict[str, bytes] | None = fields
        self._names: tuple[str, ...] = ()
        self._flat: Sequence[bytes] = ()

    @classmethod
    def _as_sent(  # noqa: PLR0917  # called per entry on the hot path: positional is cheaper
        cls,
        stream: str,
        id: str,
        event: StreamEvent | None,
        names: tuple[str, ...],
        flat: Sequence[bytes],
        delivery_count: int,
        decode_error: DecodeError | None = None,
    ) -> StreamMessage:
        """A message whose ``fields`` dict is built from the flat reply only when asked for:
        most handlers read ``event`` alone, and the dict was a tenth of a message's decode."""
        msg = object.__new__(cls)  # on the hot path: no __init__ to undo
        msg.stream, msg.id, msg.event, msg.delivery_count = stream, id, event, delivery_count
        msg.decode_error, msg._fields, msg._names, msg._flat = decode_error, None, names, flat
        return msg

    @property
    def fields(self) -> dict[str, bytes]:
        """The entry's fields, names as text (surrogate escapes where not UTF-8), values as
        bytes."""
        fields = self._fields
        if fields is None:
            fields = self._fields = dict(zip(self._names, self._flat[1::2], strict=True))
            self._flat = ()
        return fields

    @property
    def time(self) -> datetime:
        """When the entry was added, from its stream id."""
        return entry_time(self.id)

    @property
    def failure(self) -> Failure | None:
        """The failure record when this is a DLQ entry, else None."""
        return Failure.from_fields(self.fields)

    def _key(self) -> tuple[Any, ...]:
        return (self.stream, self.id, self.event, self.fields, self.delivery_count)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamMessage):
            return NotImplemented
        return self._key() == other._key() and self.decode_error == other.decode_error

    def __repr__(self) -> str:
        return (
            f"StreamMessage(stream={self.stream!r}, id={self.id!r}, event={self.event!r}, "
            f"fields={self.fields!r}, delivery_count={self.delivery_count!r}, "
            f"decode_error={self.decode_error!r})"
        )


_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 4096


def _field_name(key: bytes | str) -> str:
    """A field name as text, decoded once per distinct name (entries of one layout share
    them); the cache is bounded, so arbitrary names cannot grow it without limit."""
    if not isinstance(key, bytes):
        return key
    name = _NAMES.get(key)
    if name is None:
        name = key.decode("utf-8", "surrogateescape")
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[key] = name
    return name


# A layout is an entry's field names in order, as sent: its names as text and, when it is
# streamlab's own, what picks `_OWN`'s values out of the flat reply (see `_decode_own`).
_Pick = Callable[[Sequence[Any]], tuple[Any, ...]]
_LAYOUTS: dict[tuple[bytes | str, ...], tuple[tuple[str, ...], _Pick | None]] = {}
_LAYOUTS_MAX = 1024

RawFields = Mapping[bytes, bytes] | Sequence[bytes]
"""An entry's fields as read: redis-py's dict, or the flat ``[name, value, ...]`` list Redis
sends (`streamlab.client.RawEntry`)."""


def _layout(layout: tuple[bytes | str, ...]) -> tuple[tuple[str, ...], _Pick | None]:
    """A layout's names, decoded once and reused (entries of one producer share a layout:
    the same names in the same order; a bounded cache)."""
    known = _LAYOUTS.get(layout)
    if known is None:
        names = tuple(_field_name(k) for k in layout)
        # Each known name exactly once: a repeated name can hide a missing one.
        own = len(names) == len(_KNOWN) and frozenset(names) == _KNOWN
        known = names, itemgetter(*(2 * names.index(n) + 1 for n in _OWN)) if own else None
        if len(_LAYOUTS) < _LAYOUTS_MAX:
            _LAYOUTS[layout] = known
    return known


def _flat_layout(flat: Sequence[bytes]) -> tuple[tuple[str, ...], _Pick | None]:
    global _last  # noqa: PLW0603  # one tuple, swapped whole: safe across threads
    names_sent = flat[0::2]
    last_sent, known = _last
    # Most entries have the layout of the one before: comparing the names costs a third of
    # hashing them for the cache (every reply brings new bytes objects).
    if names_sent != last_sent:
        known = _layout(tuple(names_sent))
        _last = names_sent, known
    return known


_last: tuple[Sequence[bytes], tuple[tuple[str, ...], _Pick | None]] = ([], ((), None))


def decode_message(
    stream: str,
    entry_id: bytes | str,
    raw_fields: RawFields | None,
    delivery_count: int = 1,
) -> StreamMessage:
    """Build a `StreamMessage` from a raw entry (redis-py's or as sent), never raising on bad
    content."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    extra_retries = delivery_count - 1 if delivery_count > 1 else 0
    fields: dict[str, Any]
    # A list first: the consumer's case, and cheaper to test than the Mapping ABC.
    if not raw_fields:
        fields = {}
    elif isinstance(raw_fields, list) or not isinstance(raw_fields, Mapping):
        names, pick = _flat_layout(raw_fields)
        if pick is not None:  # streamlab's own: decoded straight from the reply
            own: StreamEvent | None = None
            error: DecodeError | None = None
            try:
                own = _decode_own(pick(raw_fields), eid, extra_retries)
            except DecodeError as exc:
                error = exc
            return StreamMessage._as_sent(
                stream, eid, own, names, raw_fields, delivery_count, error
            )
        fields = dict(zip(names, raw_fields[1::2], strict=True))
    else:
        names, _ = _layout(tuple(raw_fields))
        fields = dict(zip(names, raw_fields.values(), strict=True))
    try:
        event = decode_event(fields, entry_id=eid, extra_retries=extra_retries)
    except DecodeError as exc:
        return StreamMessage(stream, eid, None, fields, delivery_count, exc)
    return StreamMessage(stream, eid, event, fields, delivery_count)


def decode_entries(
    stream: str, entries: Iterable[tuple[bytes, RawFields | None]]
) -> list[StreamMessage]:
    """Decode raw ``(id, fields)`` entries from XRANGE/XREADGROUP (delivered once), never
    raising on bad content: each gives what `decode_message` gives it."""
    entries = entries if isinstance(entries, list) else list(entries)
    try:
        messages = _decode_own_entries(stream, entries)
    except ValueError:  # some entry's content is bad: `decode_message` names the field
        messages = None
    if messages is None:
        messages = [decode_message(stream, eid, raw) for eid, raw in entries]
    return messages


def _decode_own_entries(
    stream: str, entries: list[tuple[bytes, RawFields | None]]
) -> list[StreamMessage] | None:
    """Entries all of streamlab's own layout, as sent, decoded one step at a time across the
    list (every payload, then every auth context, then every event), as `_decode_own` decodes
    one: each step's code and data stay in the CPU's caches (runs of 16 took about 15% off a
    consumer's time per message against one entry after another; callgrind's simulated
    instruction-cache misses per message fell from ~1,500 to ~360). None when some entry has
    another layout; a ValueError (bad JSON, a failed validation) when some entry's content is
    bad."""
    flats: list[list[bytes]] = []
    names: list[tuple[str, ...]] = []
    picked: list[tuple[Any, ...]] = []
    for _, raw in entries:
        if not isinstance(raw, list) or not raw:
            return None
        layout, pick = _flat_layout(raw)
        if pick is None:
            return None
        flats.append(raw)
        names.append(layout)
        picked.append(pick(raw))
    payloads = [_payload(v[4], "payload", None) for v in picked]
    auths = [_auth_context(v[5], "auth_context", None) for v in picked]
    times = [_parse_time(v[6]) for v in picked]
    # A time of another shape (not UTC yet, or bad) needs the full validator.
    validate = (
        _own_validate
        if all(type(t) is datetime for t in times)
        else _event_validator.validate_python
    )
    events: list[StreamEvent] = [
        validate(_own_data(v, payload, auth, t))
        for v, payload, auth, t in zip(picked, payloads, auths, times, strict=True)
    ]
    as_sent = StreamMessage._as_sent
    return [
        as_sent(stream, eid.decode() if isinstance(eid, bytes) else eid, event, layout, flat, 1)
        for (eid, _), event, layout, flat in zip(entries, events, names, flats, strict=True)
    ]
