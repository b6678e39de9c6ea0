"""The ``unity`` command: serve, db, plugins, bench (Typer + Rich)."""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from unity import __version__
from unity.app import create_app
from unity.auth.cli import (
    create_key,
    created_details,
    keys_table,
    list_keys,
    parse_scopes,
    revoke_key,
)
from unity.auth.principal import DEFAULT_TENANT
from unity.auth.service import KeyService
from unity.components import build_components, close_components
from unity.config import Role, Settings, load_settings
from unity.core.clock import SystemClock
from unity.core.db import Database
from unity.core.logs import configure_logging
from unity.core.migrations import current_revision, head_revision, upgrade
from unity.errors import UnityError
from unity.plugins.registry import PluginRegistry

app = typer.Typer(help="Unity: self-hosted monitoring and automation hub.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
plugins_app = typer.Typer(help="Discover and run plugins.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(plugins_app, name="plugins")
app.add_typer(keys_app, name="keys")

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML file with the same keys as UNITY_* variables.")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Where Unity keeps its data.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except UnityError as exc:
        _fail(exc.detail)
    except ValueError as exc:  # pydantic ValidationError or a TOML syntax error
        _fail(f"invalid settings: {' '.join(str(exc).split())}")


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]unity:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _fail(f"port {port} on {host} is already in use")
            _fail(f"cannot listen on {host}:{port}: {exc.strerror}")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"unity {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Unity: self-hosted monitoring and automation hub."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDirOpt = None,
    role: Annotated[Role | None, typer.Option(help="all, api or scheduler.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run Unity: API, scheduler, collection and storage in one process."""
    settings = _settings(config, host=host, port=port, data_dir=data_dir, role=role)
    configure_logging(settings.log_format, settings.log_level)
    _check_port(settings.host, settings.port)
    try:
        admin_key = asyncio.run(_prepare(settings))
    except UnityError as exc:
        _fail(exc.detail, code=2)
    url = f"http://{settings.host}:{settings.port}"
    err.print(f"[bold green]Unity {__version__}[/] on {url}", highlight=False)
    err.print(f"  API docs: {url}/docs", highlight=False)
    key_file = (settings.data_dir / "admin.key").resolve()
    if admin_key is not None:
        err.print(
            f"  admin API key (shown only now; kept in {key_file}, mode 0600):\n    {admin_key}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        err.print(f"  admin API key: in {key_file}", highlight=False, soft_wrap=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
        timeout_graceful_shutdown=15,
    )


async def _prepare(settings: Settings) -> str | None:
    """Migrate, and on first start make the admin key (returned so it can be printed once)."""
    database = Database(settings.effective_database_url)
    try:
        await database.ping()
        await upgrade(database)
        keys = KeyService(database=database, clock=SystemClock())
        return await keys.ensure_admin_key(settings.data_dir)
    finally:
        await database.dispose()


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Apply the database migrations this version ships."""
    settings = _settings(config, data_dir=data_dir)
    configure_logging(settings.log_format, "WARNING")

    async def run() -> tuple[str | None, str | None]:
        database = Database(settings.effective_database_url)
        try:
            await database.ping()
            before = await current_revision(database)
            with console.status(f"Migrating {database.dialect} database to {head_revision()}…"):
                await upgrade(database)
            return before, await current_revision(database)
        finally:
            await database.dispose()

    try:
        before, after = asyncio.run(run())
    except UnityError as exc:
        _fail(exc.detail, code=2)
    if before == after:
        console.print(f"Database already at revision {after}.")
    else:
        console.print(f"Database migrated from {before or 'empty'} to {after}.")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated, e.g. plugins:read,metrics:read.")
    ],
    tenant: Annotated[str, typer.Option("--tenant", help="The key's tenant.")] = DEFAULT_TENANT,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime such as 30d or 12h.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API key; its secret goes to stdout, once (KEY=$(unity keys create ...))."""
    settings = _settings(config, data_dir=data_dir)
    configure_logging(settings.log_format, "WARNING")
    try:
        key, secret = asyncio.run(
            create_key(
                settings,
                name=name,
                scopes=parse_scopes(scopes),
                tenant=tenant,
                expires_in=expires_in,
                description=description,
            )
        )
    except UnityError as exc:
        _fail(exc.detail, code=2)
    console.print(secret, highlight=False, soft_wrap=True)
    err.print(created_details(key))


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked keys.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List API keys (never their secrets)."""
    settings = _settings(config, data_dir=data_dir)
    configure_logging(settings.log_format, "WARNING")
    try:
        keys = asyncio.run(list_keys(settings, tenant=tenant, include_revoked=revoked))
    except UnityError as exc:
        _fail(exc.detail, code=2)
    console.print(keys_table(keys))


@keys_app.command("revoke")
def keys_revoke(
    reference: Annotated[str, typer.Argument(help="The key's id or its prefix (unity_XXXXXXXX).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a key at once (a running server notices within its key cache TTL, 5 s)."""
    settings = _settings(config, data_dir=data_dir)
    configure_logging(settings.log_format, "WARNING")
    try:
        key = asyncio.run(revoke_key(settings, reference))
    except UnityError as exc:
        _fail(exc.detail, code=2)
    console.print(f"Revoked {key.prefix} ({key.name}).", highlight=False)


@plugins_app.command("list")
def plugins_list(config: ConfigOpt = None) -> None:
    """List every discovered plugin, broken ones included."""
    settings = _settings(config)
    registry = PluginRegistry(trusted=settings.trusted_plugins)
    specs = registry.discover()
    table = Table(title=f"{len(specs)} plugins")
    for column in ("id", "name", "version", "kind", "category", "source", "status"):
        table.add_column(column)
    for spec in sorted(specs, key=lambda s: s.plugin_id):
        m = spec.manifest
        status = f"[red]broken: {spec.error}[/]" if spec.broken else "[green]ok[/]"
        table.add_row(
            spec.plugin_id,
            m.name if m else "-",
            m.version if m else "-",
            m.kind if m else "-",
            m.category if m else "-",
            spec.source + (" (verified)" if spec.verified else ""),
            status,
        )
    console.print(table)


@plugins_app.command("run")
def plugins_run(
    plugin_id: Annotated[str, typer.Argument(help="Plugin id, e.g. system_info.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run one execution of a plugin's default instance now, record it, and print its samples."""
    settings = _settings(config, data_dir=data_dir)
    configure_logging(settings.log_format, "WARNING")

    async def run() -> Any:
        components = await build_components(settings, with_scheduler=False)
        try:
            instance = await components.plugins.default_instance(plugin_id)
            return await components.pipeline.execute(instance)
        finally:
            await close_components(components)

    try:
        result = asyncio.run(run())
    except UnityError as exc:
        _fail(exc.detail, code=2)
    if not result.success:
        _fail(f"{plugin_id}: {result.status}: {result.error}", code=3)
    table = Table(
        title=f"{plugin_id}: {len(result.samples)} samples in {result.duration_ms:.0f} ms"
    )
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    for s in result.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        table.add_row(s.name, labels, f"{s.value:,.3f}".rstrip("0").rstrip("."))
    console.print(table)


def _bench_dir() -> Path:
    for candidate in (Path.cwd() / "bench", Path(__file__).resolve().parents[2] / "bench"):
        if (candidate / "__init__.py").is_file():
            return candidate
    _fail("benchmarks live in Unity's source checkout (bench/); run this from there")


@app.command()
def bench(
    scenario: Annotated[str | None, typer.Argument(help="One scenario; default all.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes, for a smoke run.")] = False,
) -> None:
    """Run benchmarks; each scenario prints one JSON object with its figures and ratios."""
    directory = _bench_dir()
    names = sorted(
        p.stem
        for p in directory.glob("*.py")
        if not p.stem.startswith("_") and p.stem != "__init__"
    )
    if scenario is not None:
        if scenario not in names:
            _fail(f"unknown scenario {scenario!r}; known: {', '.join(names)}")
        names = [scenario]
    failed = 0
    for name in names:
        err.print(f"[bold]bench {name}[/]")
        argv = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
        # progress bars go to stderr (inherited); the JSON result is the child's stdout
        proc = subprocess.run(
            argv, cwd=directory.parent, stdout=subprocess.PIPE, text=True, check=False
        )
        if proc.returncode != 0:
            failed += 1
            err.print(f"[red]bench {name} failed with exit code {proc.returncode}[/]")
            continue
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
    if failed:
        raise typer.Exit(1)
