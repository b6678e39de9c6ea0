"""Plugin discovery: built-ins, installed third-party packages, and broken plugins."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import CapturingLogger, LogCapture

from unity.errors import NotFoundError
from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import (
    Collected,
    Collector,
    Context,
    Manifest,
    PluginConfig,
    Sample,
)

FIXTURES = Path(__file__).parent / "fixtures"
BUILTIN_IDS = {"system_info", "docker_monitor", "http_check"}
NO_ENTRY_POINTS = "unity.plugins.none"

MakePackage = Callable[[dict[str, str]], str]
MakeDist = Callable[[dict[str, str], dict[str, str]], str]


def collector(plugin_id: str, class_name: str = "Sample", *, as_plugin: bool = True) -> str:
    """Source of a module holding a minimal valid collector with id ``plugin_id``."""
    source = f"""
        from unity.plugins.sdk import Collected, Collector, Context, Manifest, PluginConfig, Sample

        class {class_name}(Collector[PluginConfig]):
            manifest = Manifest(id={plugin_id!r}, name={plugin_id!r}, version="1.0.0")

            async def collect(self, ctx: Context[PluginConfig]) -> Collected:
                return Collected(samples=[Sample("up", 1.0)])
        """
    if as_plugin:
        source += f"\n        PLUGIN = {class_name}\n"
    return source


class LogRecorder:
    """A logger for the registry that keeps what it was told."""

    def __init__(self) -> None:
        self._capture = LogCapture()
        self.log: structlog.stdlib.BoundLogger = structlog.wrap_logger(
            CapturingLogger(),
            processors=[self._capture],
            wrapper_class=structlog.stdlib.BoundLogger,
        )

    @property
    def entries(self) -> list[MutableMapping[str, Any]]:
        return self._capture.entries


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return 0.0


def _forget_modules(top_level: set[str]) -> None:
    for key in list(sys.modules):
        if key.split(".")[0] in top_level:
            del sys.modules[key]


@pytest.fixture
def make_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakePackage]:
    """Write a package standing in for ``unity.plugins.builtin``; return its import name."""
    root = tmp_path / "packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    created: set[str] = set()

    def make(files: dict[str, str]) -> str:
        name = f"builtins_{uuid.uuid4().hex[:10]}"
        package = root / name
        package.mkdir()
        (package / "__init__.py").write_text('"""Temporary built-in plugins."""\n')
        for relative, source in files.items():
            path = package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dedent(source))
        created.add(name)
        importlib.invalidate_caches()
        return name

    yield make
    _forget_modules(created)


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeDist]:
    """Install (by hand, as a ``.dist-info``) a distribution declaring entry points.

    Takes module sources and ``{entry point name: value}``; returns the entry-point group,
    unique to the test so that nothing else installed in the venv shows up.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    group = f"unity.plugins.test_{uuid.uuid4().hex[:10]}"
    created: set[str] = set()

    def make(modules: dict[str, str], entry_points: dict[str, str]) -> str:
        for name, source in modules.items():
            (site / f"{name}.py").write_text(dedent(source))
            created.add(name)
        info = site / "fake_plugins-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
        importlib.invalidate_caches()
        return group

    yield make
    _forget_modules(created)


def test_the_builtin_plugins_are_discovered() -> None:
    registry = PluginRegistry(entry_point_group=NO_ENTRY_POINTS)

    specs = {spec.plugin_id: spec for spec in registry.discover()}

    assert set(specs) >= BUILTIN_IDS
    for plugin_id in BUILTIN_IDS:
        spec = specs[plugin_id]
        assert not spec.broken, spec.error
        assert spec.source == "builtin"
        assert spec.verified
        assert spec.origin == f"unity.plugins.builtin.{plugin_id}"
        assert spec.manifest is not None
        assert spec.manifest.id == plugin_id
        assert spec.cls is not None
        assert registry.get(plugin_id) is spec
    assert {spec.plugin_id for spec in registry.healthy()} >= BUILTIN_IDS


def test_builtin_modules_and_folders_defining_plugin_are_discovered(
    make_builtins: MakePackage,
) -> None:
    package = make_builtins(
        {
            "ping.py": collector("ping"),
            "weather/__init__.py": "from .station import Station as PLUGIN\n",
            "weather/station.py": collector("weather", "Station", as_plugin=False),
            "shared.py": "TIMEOUT = 5\n",  # a helper, not a plugin
            "_private.py": "raise RuntimeError('helpers starting with _ are not imported')\n",
        }
    )
    registry = PluginRegistry(builtin_package=package, entry_point_group=NO_ENTRY_POINTS)

    specs = registry.discover()

    assert [(s.plugin_id, s.origin, s.broken) for s in specs] == [
        ("ping", f"{package}.ping", False),
        ("weather", f"{package}.weather", False),
    ]
    assert all(s.source == "builtin" and s.verified for s in specs)


def test_a_builtin_that_fails_to_import_is_broken_and_discovery_goes_on(
    make_builtins: MakePackage,
) -> None:
    package = make_builtins(
        {
            "alpha.py": "import no_such_library_for_unity_tests\n",
            "beta.py": collector("beta"),
        }
    )
    recorder = LogRecorder()
    registry = PluginRegistry(
        builtin_package=package, entry_point_group=NO_ENTRY_POINTS, log=recorder.log
    )

    registry.discover()
    registry.discover()  # a rescan must not log the same breakage again

    alpha = registry.get("alpha")
    assert alpha.broken
    assert alpha.cls is None
    assert alpha.manifest is None
    assert alpha.error == (
        "import failed: ModuleNotFoundError: No module named 'no_such_library_for_unity_tests'"
    )
    assert [s.plugin_id for s in registry.healthy()] == ["beta"]
    assert [s.plugin_id for s in registry.specs()] == ["alpha", "beta"]
    warnings = [e for e in recorder.entries if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["plugin_id"] == "alpha"
    assert warnings[0]["error"] == alpha.error


def test_an_invalid_manifest_makes_a_broken_plugin_named_after_its_module(
    make_builtins: MakePackage,
) -> None:
    package = make_builtins({"lamp.py": collector("Living Room Lamp")})
    registry = PluginRegistry(builtin_package=package, entry_point_group=NO_ENTRY_POINTS)

    registry.discover()

    spec = registry.get("lamp")
    assert spec.broken
    assert spec.manifest is None
    assert spec.error is not None
    assert spec.error.startswith("invalid manifest: id: Value error, must be 2-64 chars")


def test_a_plugin_object_that_is_not_a_plugin_class_is_broken(
    make_builtins: MakePackage,
) -> None:
    package = make_builtins({"counter.py": "PLUGIN = {'id': 'counter'}\n"})
    registry = PluginRegistry(builtin_package=package, entry_point_group=NO_ENTRY_POINTS)

    registry.discover()

    assert registry.get("counter").error == "not a Plugin subclass: dict {'id': 'counter'}"


def test_the_first_plugin_keeps_an_id_and_the_duplicate_is_broken(
    make_builtins: MakePackage,
) -> None:
    package = make_builtins({"a_first.py": collector("twin"), "b_second.py": collector("twin")})
    registry = PluginRegistry(builtin_package=package, entry_point_group=NO_ENTRY_POINTS)

    specs = registry.discover()

    assert [(s.origin, s.error) for s in specs] == [
        (f"{package}.a_first", None),
        (
            f"{package}.b_second",
            f"duplicate plugin id, already provided by {package}.a_first",
        ),
    ]
    assert registry.get("twin").origin == f"{package}.a_first"
    # The catalog has one entry per id: the owner's.
    assert [s.origin for s in registry.specs()] == [f"{package}.a_first"]
    assert [s.origin for s in registry.healthy()] == [f"{package}.a_first"]


def test_entry_points_are_discovered_and_their_failures_reported(
    make_builtins: MakePackage, make_dist: MakeDist
) -> None:
    package = make_builtins({"ping.py": collector("ping")})
    group = make_dist(
        {
            "greeter_mod": collector("greeter", "Greeter", as_plugin=False),
            "impostor_mod": collector("ping", "Impostor", as_plugin=False),
            "badmeta_mod": collector("bad manifest", "BadMeta", as_plugin=False),
        },
        {
            "greeter": "greeter_mod:Greeter",
            "impostor": "impostor_mod:Impostor",
            "bad_meta": "badmeta_mod:BadMeta",
            "missing": "greeter_mod:Nope",
            "module_only": "greeter_mod",
        },
    )
    registry = PluginRegistry(builtin_package=package, entry_point_group=group)

    specs = {(s.plugin_id, s.source): s for s in registry.discover()}

    greeter = specs["greeter", "entrypoint"]
    assert not greeter.broken
    assert greeter.origin == "greeter = greeter_mod:Greeter"
    assert not greeter.verified
    # A third-party package cannot take a built-in's id.
    impostor = specs["ping", "entrypoint"]
    assert impostor.error == f"duplicate plugin id, already provided by {package}.ping"
    assert registry.get("ping").source == "builtin"
    # Without a readable manifest, the entry point's name stands in for the id.
    assert specs["bad_meta", "entrypoint"].error is not None
    assert specs["bad_meta", "entrypoint"].error.startswith("invalid manifest: id:")
    assert specs["missing", "entrypoint"].error == (
        "import failed: AttributeError: module 'greeter_mod' has no attribute 'Nope'"
    )
    assert specs["module_only", "entrypoint"].error == (
        "not a Plugin subclass: module greeter_mod (name a class: 'package.module:ClassName')"
    )
    assert [s.plugin_id for s in registry.healthy()] == ["greeter", "ping"]


def test_an_entry_point_is_verified_only_when_its_id_is_trusted(
    make_builtins: MakePackage, make_dist: MakeDist
) -> None:
    package = make_builtins({})
    group = make_dist(
        {"two_mod": collector("first", "First", as_plugin=False) + collector("second", "Second")},
        {"first": "two_mod:First", "second": "two_mod:Second"},
    )
    registry = PluginRegistry(builtin_package=package, entry_point_group=group, trusted={"second"})

    registry.discover()

    assert not registry.get("first").verified
    assert registry.get("second").verified


class _NotAPlugin:
    pass


class _NoManifest(Collector[PluginConfig]):
    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        return Collected()


class _ConstructedBadManifest(Collector[PluginConfig]):
    # model_construct skips validation; the registry checks the manifest again.
    manifest = Manifest.model_construct(id="x", name="x", version="1", kind="collector")

    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        return Collected()


class _WrongKind(Collector[PluginConfig]):
    manifest = Manifest(id="wrong_kind", name="Wrong kind", version="1.0.0", kind="action")

    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        return Collected()


class _NoCollect(Collector[PluginConfig]):
    manifest = Manifest(id="no_collect", name="No collect", version="1.0.0")


@pytest.mark.parametrize(
    ("cls", "plugin_id", "error"),
    [
        (
            _NotAPlugin,
            "_NotAPlugin",
            f"not a Plugin subclass: class {__name__}._NotAPlugin",
        ),
        (_NoManifest, "_NoManifest", "no manifest: set `manifest = Manifest(...)` on the class"),
        (
            _ConstructedBadManifest,
            "_ConstructedBadManifest",
            "invalid manifest: id: Value error, must be 2-64 chars: lowercase letters, "
            "digits, '_', starting with a letter; version: String should match pattern "
            "'^\\d+\\.\\d+(\\.\\d+)?([.+-][0-9A-Za-z.+-]+)?$'",
        ),
        (
            _WrongKind,
            "wrong_kind",
            "manifest kind 'action' does not match the class kind 'collector'",
        ),
        (_NoCollect, "no_collect", "collect() is not implemented"),
    ],
)
def test_register_reports_why_a_class_cannot_be_used(cls: Any, plugin_id: str, error: str) -> None:
    registry = PluginRegistry(entry_point_group=NO_ENTRY_POINTS)

    spec = registry.register(cls, source="installed", origin="bundle.zip", verified=False)

    assert spec.broken
    assert spec.cls is None
    assert spec.error == error
    assert registry.get(plugin_id) is spec
    assert registry.healthy() == []
    again = registry.register(cls, source="installed", origin="bundle.zip", verified=False)
    assert again is spec
    assert registry.specs() == [spec]


class _Uploaded(Collector[PluginConfig]):
    manifest = Manifest(id="uploaded", name="Uploaded", version="2.1.0")

    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        return Collected(samples=[Sample("uploaded_up", 1.0)])


def test_a_registered_plugin_is_kept_across_rescans(make_builtins: MakePackage) -> None:
    package = make_builtins({"ping.py": collector("ping")})
    registry = PluginRegistry(builtin_package=package, entry_point_group=NO_ENTRY_POINTS)
    registry.discover()

    spec = registry.register(
        _Uploaded, source="installed", origin="bundles/uploaded-2.1.0", verified=False
    )
    again = registry.register(
        _Uploaded, source="installed", origin="bundles/uploaded-2.1.0", verified=False
    )
    rescanned = registry.discover()

    assert again is spec
    assert not spec.broken
    assert spec.cls is _Uploaded
    assert spec.manifest is not None
    assert spec.manifest.version == "2.1.0"
    assert [(s.plugin_id, s.source) for s in rescanned] == [
        ("ping", "builtin"),
        ("uploaded", "installed"),
    ]


def test_getting_an_unknown_plugin_raises_not_found() -> None:
    registry = PluginRegistry(entry_point_group=NO_ENTRY_POINTS)
    registry.discover()

    with pytest.raises(NotFoundError, match="unknown plugin 'no_such_plugin'") as caught:
        registry.get("no_such_plugin")
    assert caught.value.status_code == 404


@pytest.fixture
def hello_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The sample distribution built as a wheel and installed into a private directory."""
    source = tmp_path / "src"
    shutil.copytree(FIXTURES / "unity-hello-plugin", source)
    dist, site = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", dist, source],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("unity_hello_plugin-1.0.0-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    # importlib.metadata scans sys.path, so this is all "installing" takes; the venv is untouched.
    monkeypatch.syspath_prepend(str(site))
    yield site
    _forget_modules({"unity_hello"})


@pytest.mark.slow
async def test_an_installed_package_is_discovered_and_its_collector_runs(
    hello_site: Path,
) -> None:
    recorder = LogRecorder()
    registry = PluginRegistry(log=recorder.log)

    specs = registry.discover()

    hello = registry.get("hello")
    assert not hello.broken
    assert hello.source == "entrypoint"
    assert hello.origin == "hello = unity_hello:HelloCollector"
    assert not hello.verified
    assert hello.manifest == Manifest(
        id="hello",
        name="Hello",
        version="1.0.0",
        category="example",
        description="Greets someone; a sample third-party plugin.",
        author="Unity tests",
    )
    assert hello.cls is not None
    assert hello.cls.__module__ == "unity_hello"
    assert Path(sys.modules["unity_hello"].__file__ or "").is_relative_to(hello_site)

    broken = registry.get("broken")
    assert broken.broken
    assert broken.source == "entrypoint"
    assert broken.origin == "broken = unity_hello.broken:Nope"
    assert broken.error == (
        "import failed: RuntimeError: unity_hello.broken fails on import on purpose"
    )
    assert [e["plugin_id"] for e in recorder.entries if e["log_level"] == "warning"] == ["broken"]

    assert {s.plugin_id for s in specs if s.source == "builtin" and not s.broken} >= BUILTIN_IDS

    assert issubclass(hello.cls, Collector)
    plugin = hello.cls()
    config = hello.cls.config_model.model_validate({"name": "Ada", "collection_interval": 30})
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    async with httpx.AsyncClient() as http:
        ctx: Context[Any] = Context(
            config=config,
            http=http,
            clock=FixedClock(at),
            log=recorder.log,
            plugin_id="hello",
            instance_id=str(uuid.uuid4()),
        )
        collected = await plugin.collect(ctx)
    assert collected.samples == [
        Sample("hello_up", 1.0, {"name": "Ada"}),
        Sample("hello_greeting_chars", float(len("Hello, Ada!")), {"name": "Ada"}),
    ]
    assert all(sample.problem() is None for sample in collected.samples)
    assert collected.snapshot == {"greeting": "Hello, Ada!", "at": at.isoformat()}

    trusting = PluginRegistry(trusted={"hello"})
    trusting.discover()
    assert trusting.get("hello").verified
