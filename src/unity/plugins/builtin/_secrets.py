"""Masking secrets in what a plan shows: header, environment and query names that carry them.

A plan is stored with its run and shown to whoever approves it, so a value that looks like a
credential is replaced by :data:`MASK` there; the action reads the real value from the task's
parameters when it applies the plan.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "is_secret_name", "mask_mapping", "mask_url", "mask_value"]

MASK = "********"
SECRET_NAMES = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
SECRET_WORDS = re.compile(r"token|secret|passw(or)?d|api[-_]?key|credential", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a header, variable or field called ``name`` holds a credential."""
    return name.strip().lower() in SECRET_NAMES or SECRET_WORDS.search(name) is not None


def mask_value(name: str, value: str) -> str:
    """``value`` with its secret part hidden; an ``Authorization`` scheme word stays visible."""
    if name.strip().lower() in {"authorization", "proxy-authorization"}:
        scheme, _, credentials = value.partition(" ")
        if credentials:
            return f"{scheme} {MASK}"
    return MASK


def mask_mapping(values: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``values`` with the secret ones masked."""
    return {
        name: mask_value(name, value) if is_secret_name(name) else value
        for name, value in values.items()
    }


def mask_url(url: str) -> str:
    """``url`` with a password in its user part and secret query parameters masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{parts.username or ''}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(name) for name, _ in pairs):
            query = urlencode([(n, MASK if is_secret_name(n) else v) for n, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
