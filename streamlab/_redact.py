"""Passwords out of everything streamlab prints: one helper for URLs and for texts."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["redact", "redact_url"]

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with its password (and any ``password=`` query value) replaced by ``***``.

    ``redis://:secret@host:6379/0`` becomes ``redis://:***@host:6379/0``. A URL that cannot be
    parsed is masked whole after its scheme, since where the password sits is then unknown.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if sep else f"{MASK}@{host}"
        query = "&".join(
            f"{name}={MASK}" if name.lower() == "password" else f"{name}{sep}{value}"
            for name, sep, value in (item.partition("=") for item in parts.query.split("&"))
            if name or sep
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{MASK}" if sep else MASK


def _secrets(url: str) -> list[str]:
    found: list[str] = []
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo = netloc.rpartition("@")[0]
            found.append(userinfo.partition(":")[2] if ":" in userinfo else userinfo)
        for item in parts.query.split("&"):
            name, _, value = item.partition("=")
            if name.lower() == "password":
                found.append(value)
    except ValueError:
        found.append(url)
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


# Any URL's ``user:password@`` part, for texts that quote a URL we were not told about.
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)


def redact(text: str, url: str | None = None) -> str:
    """``text`` with ``url`` and the password in it masked wherever they appear, and the
    password of any other URL in it."""
    if url:
        text = text.replace(url, redact_url(url))
        for secret in sorted(_secrets(url), key=len, reverse=True):
            text = text.replace(secret, MASK)
    return _USERINFO.sub(rf"\g<head>{MASK}@", text)
