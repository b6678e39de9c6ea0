"""What ``unity keys create|list|revoke`` do and print, against a SQLite file in a data dir."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from unity.auth.cli import (
    create_key,
    created_details,
    keys_table,
    list_keys,
    parse_scopes,
    revoke_key,
)
from unity.auth.keys import looks_valid
from unity.config import Settings
from unity.errors import NotFoundError, ValidationFailed


def _render(renderable: object) -> str:
    console = Console(record=True, width=300)
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


async def test_create_prints_the_secret_once_and_list_never_does(settings: Settings) -> None:
    key, secret = await create_key(
        settings, name="ci", scopes=parse_scopes("runs:read, runs:write"), expires_in="30d"
    )
    assert looks_valid(secret)
    assert key.expires_at is not None
    assert key.expires_at - datetime.now(UTC) > timedelta(days=29)
    shown = _render(created_details(key))
    assert key.prefix in shown
    assert "shown only this once" in shown
    assert secret not in shown  # the secret goes alone to stdout

    listed = [k for k in await list_keys(settings) if k.name != "admin"]
    assert [k.id for k in listed] == [key.id]
    table = _render(keys_table(listed))
    assert key.prefix in table
    assert "runs:read, runs:write" in table
    assert "active" in table
    assert secret not in table


async def test_revoke_accepts_the_id_or_the_prefix(settings: Settings) -> None:
    first, _ = await create_key(settings, name="a", scopes=["metrics:read"])
    second, _ = await create_key(settings, name="b", scopes=["metrics:read"], tenant="default")
    assert (await revoke_key(settings, str(first.id))).status == "revoked"
    assert (await revoke_key(settings, second.prefix)).status == "revoked"
    assert [k.name for k in await list_keys(settings)] == ["admin"]  # only the admin key is left
    everything = await list_keys(settings, include_revoked=True)
    assert {k.name: k.status for k in everything} == {
        "a": "revoked",
        "b": "revoked",
        "admin": "active",
    }
    assert "revoked" in _render(keys_table(everything))
    with pytest.raises(NotFoundError):
        await revoke_key(settings, "unity_unknown0")


@pytest.mark.parametrize("text", ["", " , ", "metrics:read,root", "everything"])
def test_bad_scope_lists_name_the_valid_scopes(text: str) -> None:
    with pytest.raises(ValidationFailed, match="metrics:read"):
        parse_scopes(text)


async def test_a_bad_lifetime_or_tenant_is_refused(settings: Settings) -> None:
    with pytest.raises(ValidationFailed, match="--expires-in"):
        await create_key(settings, name="x", scopes=["admin"], expires_in="forever")
    with pytest.raises(NotFoundError, match="tenant"):
        await create_key(settings, name="x", scopes=["admin"], tenant="nobody")


async def test_the_first_key_made_from_the_cli_comes_after_the_admin_key(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_key(settings, name="grafana", scopes=["metrics:read"])
    admin_file = settings.data_dir / "admin.key"
    assert admin_file.stat().st_mode & 0o777 == 0o600
    assert "created the admin API key" in capsys.readouterr().err
    keys = await list_keys(settings)
    assert sorted((k.name, tuple(k.scopes)) for k in keys) == [
        ("admin", ("admin",)),
        ("grafana", ("metrics:read",)),
    ]
    # the next command finds it there and makes no other
    await list_keys(settings)
    assert "created the admin API key" not in capsys.readouterr().err
    assert len(await list_keys(settings)) == 2
