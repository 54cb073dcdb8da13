"""Error signatures: variable parts normalised away, traceback frames hashed (no Redis)."""

from __future__ import annotations

import pytest

from streamlab.signatures import error_signature, normalise_error, traceback_frames

TB = """Traceback (most recent call last):
  File "/srv/app/.venv/lib/streamlab/consumer.py", line 210, in _handle
    handler(message)
  File "/srv/app/handlers.py", line {line}, in {func}
    raise KeyError(key)
KeyError: 'x'
"""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("order 4411 not found", "order <n> not found"),
        ("user 'alice' has no role \"admin\"", "user <str> has no role <str>"),
        ("event 0b6f9c52-1e2f-4c1a-9d7e-0a1b2c3d4e5f rejected", "event <uuid> rejected"),
        ("entry 1795838476493-12 missing", "entry <id> missing"),
        ("object at 0x7f3a2b1c0d90 is closed", "object at <hex> is closed"),
        ("commit 9fceb02d0ae598e95dc970b74767f19372d61af8 unknown", "commit <hex> unknown"),
        ("connect to 10.0.3.17:443 failed", "connect to <ip> failed"),
        ("GET https://api.github.com/repos/x?page=2 gave 502", "GET <url> gave <n>"),
        ("mail bob@example.com bounced", "mail <email> bounced"),
        ("took 5.25s,   retrying\n now", "took <n>s, retrying now"),
    ],
)
def test_normalise_error(error: str, expected: str) -> None:
    assert normalise_error(error) == expected


def test_same_bug_same_signature_different_bug_differs() -> None:
    one = error_signature("order 1 not found for 'acme'", TB.format(line=7, func="load"))
    two = error_signature("order 2 not found for 'globex'", TB.format(line=9, func="load"))
    other = error_signature("order 2 not found for 'globex'", TB.format(line=9, func="save"))
    assert one == two
    assert one.startswith("order <n> not found for <str> [")
    assert one != other
    assert error_signature("order 1 not found") == "order <n> not found"


def test_key_only_messages_and_fallback() -> None:
    assert error_signature("KeyError: 'release_notes'") == "KeyError: 'release_notes'"
    assert error_signature("'release_notes'") == "'release_notes'"
    assert error_signature("", "Traceback...\nValueError: bad 42\n") == "ValueError: bad <n>"
    assert len(error_signature("x" * 1000)) == 200


def test_traceback_frames() -> None:
    assert traceback_frames(TB.format(line=7, func="load")) == [
        ("consumer.py", "_handle"),
        ("handlers.py", "load"),
    ]
    assert traceback_frames("no frames here") == []


def test_data_keys_ipv6_and_short_shas_fold() -> None:
    # A missing key that is data (an id) folds; a missing key that is a name stays.
    assert error_signature("KeyError: 'evt-0-00000012'") == error_signature(
        "KeyError: 'evt-7-00000913'"
    )
    assert error_signature("KeyError: 'evt-0-00000012'") == "KeyError: 'evt-<n>-<n>'"
    assert error_signature("KeyError: '1795839300822-0'") == "KeyError: '<id>'"
    assert error_signature("ValueError: 'a9f3c2d1e0b4'") == "ValueError: '<hex>'"
    assert error_signature("KeyError: 'v2_field'") == "KeyError: 'v2_field'"
    assert normalise_error("connect to 2001:db8::1 failed") == "connect to <ip> failed"
    assert normalise_error("dial [fe80::1]:6379: refused") == "dial <ip>: refused"
    assert normalise_error("::1 refused") == "<ip> refused"
    assert normalise_error("Foo::bar at 12:30:45") == "Foo::bar at <n>:<n>:<n>"
    assert normalise_error("bad commit 1a2b3c4") == "bad commit <hex>"
    assert normalise_error("offset -5 of x-1") == "offset <n> of x-<n>"
