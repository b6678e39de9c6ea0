"""What ``unity keys create|list|revoke`` do, and the Rich output they print.

Each function opens the configured database itself (migrating it first, like ``serve``),
so the commands work with or without a running server. Keys made here publish no event:
there is no event bus outside a server process. A running server notices a revocation
made here within its key cache TTL (at most 5 s).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from unity.auth.principal import ALL_SCOPES, DEFAULT_TENANT
from unity.auth.schemas import ApiKeyOut, parse_duration
from unity.auth.service import KeyService
from unity.config import Settings
from unity.core.clock import SystemClock
from unity.core.db import Database
from unity.core.migrations import upgrade
from unity.errors import ValidationFailed

__all__ = [
    "create_key",
    "created_details",
    "keys_table",
    "list_keys",
    "parse_scopes",
    "revoke_key",
]


@asynccontextmanager
async def _key_service(settings: Settings) -> AsyncIterator[KeyService]:
    database = Database(settings.effective_database_url)
    try:
        await database.ping()
        await upgrade(database)
        keys = KeyService(database=database, clock=SystemClock())
        # On a new database the admin key must be the first key, whichever command comes
        # first: `unity serve` makes it only while no key exists.
        if await keys.ensure_admin_key(settings.data_dir) is not None:
            admin_key_notice(settings.data_dir / "admin.key")
        yield keys
    finally:
        await database.dispose()


def admin_key_notice(path: Path) -> None:
    """Tell the operator (on stderr) where the admin key made just now was saved."""
    print(f"created the admin API key in {path.resolve()} (mode 0600)", file=sys.stderr)


def parse_scopes(text: str) -> list[str]:
    """``"metrics:read, runs:write"`` as a list; :class:`ValidationFailed` for unknown scopes."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise ValidationFailed(
            f"unknown scope {', '.join(unknown)}; valid scopes: {', '.join(ALL_SCOPES)}"
        )
    if not scopes:
        raise ValidationFailed(f"give at least one scope: {', '.join(ALL_SCOPES)}")
    return scopes


async def create_key(
    settings: Settings,
    *,
    name: str,
    scopes: Sequence[str],
    tenant: str = DEFAULT_TENANT,
    expires_in: str | None = None,
    description: str | None = None,
) -> tuple[ApiKeyOut, str]:
    """Create a key (``expires_in`` such as ``30d``, ``12h``); returns it and its secret."""
    try:
        lifetime = parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        raise ValidationFailed(f"--expires-in: {exc}") from exc
    async with _key_service(settings) as keys:
        return await keys.create(
            tenant_id=tenant,
            name=name,
            scopes=scopes,
            description=description,
            expires_in=lifetime,
        )


async def list_keys(
    settings: Settings, *, tenant: str | None = None, include_revoked: bool = False
) -> list[ApiKeyOut]:
    """Every key (of ``tenant``, or of all tenants), newest first."""
    found: list[ApiKeyOut] = []
    async with _key_service(settings) as keys:
        while True:
            page, total = await keys.list(
                tenant, skip=len(found), limit=500, include_revoked=include_revoked
            )
            found.extend(page)
            if not page or len(found) >= total:
                return found


async def revoke_key(settings: Settings, reference: str) -> ApiKeyOut:
    """Revoke the key with this id or visible prefix (``unity_XXXXXXXX``), in any tenant."""
    async with _key_service(settings) as keys:
        key = await keys.find(reference)
        return await keys.revoke(key.id, None)


def created_details(key: ApiKeyOut) -> RenderableType:
    """What was created, for stderr; the secret itself goes alone to stdout (scriptable)."""
    return Group(
        Text.assemble(
            ("Created API key ", "green"),
            (key.name, "bold"),
            ("\n  id      ", "dim"),
            str(key.id),
            ("\n  prefix  ", "dim"),
            key.prefix,
            ("\n  tenant  ", "dim"),
            key.tenant_id,
            ("\n  scopes  ", "dim"),
            ", ".join(key.scopes),
            ("\n  expires ", "dim"),
            _when(key.expires_at, "never"),
        ),
        Text("The key is shown only this once: store it now.", style="yellow"),
    )


def keys_table(keys: Sequence[ApiKeyOut]) -> Table:
    """A table of keys: prefix, name, tenant, scopes, status, dates, limits."""
    table = Table(title=f"{len(keys)} API keys")
    for column in ("prefix", "name", "tenant", "scopes", "status", "expires", "last used"):
        table.add_column(column)
    table.add_column("limits (min/h/day)", justify="right")
    table.add_column("id", style="dim")
    styles = {"active": "green", "expired": "yellow", "revoked": "red"}
    for key in keys:
        limits = (key.rate_limit_per_minute, key.rate_limit_per_hour, key.rate_limit_per_day)
        table.add_row(
            key.prefix,
            key.name,
            key.tenant_id,
            ", ".join(key.scopes),
            Text(key.status, style=styles[key.status]),
            _when(key.expires_at, "never"),
            _when(key.last_used_at, "never"),
            "/".join("-" if n is None else str(n) for n in limits),
            str(key.id),
        )
    return table


def _when(moment: datetime | None, default: str) -> str:
    return default if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")
