"""Who is calling: the authenticated key, its tenant and scopes.

Scopes are ``<area>:<right>``; ``admin`` implies every scope and lets a key act on any
tenant (``?tenant=``). ``keys:admin`` manages keys of the key's own tenant.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from unity.errors import UnityError

Scope = Literal[
    "plugins:read",
    "plugins:write",
    "plugins:install",
    "metrics:read",
    "metrics:write",
    "runs:read",
    "runs:write",
    "runs:approve",
    "alerts:read",
    "alerts:write",
    "webhooks:read",
    "webhooks:write",
    "keys:admin",
    "admin",
]
ALL_SCOPES: tuple[str, ...] = Scope.__args__  # type: ignore[attr-defined]
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests allowed per window; ``None`` means no limit for that window."""

    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API key."""

    key_id: uuid.UUID
    name: str
    tenant_id: str
    scopes: frozenset[str]
    limits: RateLimits = field(default_factory=RateLimits)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        """Whether this key may do what ``scope`` names (``admin`` may do everything)."""
        return self.is_admin or scope in self.scopes

    def tenant_for(self, requested: str | None) -> str:
        """The tenant a request acts on: its own, or ``requested`` for an admin key."""
        if requested is None or requested == self.tenant_id:
            return self.tenant_id
        if not self.is_admin:
            raise Forbidden("only a key with the admin scope can act on another tenant")
        return requested


class Unauthorized(UnityError):
    """401: no key, an unknown key, or one that expired or was revoked (distinct messages)."""

    status_code = 401
    title = "Unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="unity"'}


class Forbidden(UnityError):
    """403: the key lacks the scope (or tenant) the request needs."""

    status_code = 403
    title = "Forbidden"
