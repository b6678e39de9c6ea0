"""Plugin discovery: which plugins exist, where each came from, and which are broken.

Two places are scanned, in this order:

* built-ins: every module or sub-package of ``unity.plugins.builtin`` that defines
  ``PLUGIN = <Plugin subclass>`` (modules whose name starts with ``_`` are helpers and
  are not imported);
* third-party packages: every entry point of the group ``unity.plugins``, whose value
  names a plugin class (``hello = "unity_hello:HelloCollector"``).

Plugins uploaded as bundles are added by their owner through :meth:`PluginRegistry.register`.

Nothing a plugin does can stop discovery: an import that raises, an object that is not a
plugin, an invalid manifest or an id that is already taken yields a *broken* spec that
says why, is logged once, and is listed next to the healthy ones. The manifest id is the
plugin id; an entry point's name (or a built-in module's name) is only used as the id of
a broken plugin whose manifest could not be read. The first plugin to claim an id keeps
it, so a third-party plugin can never shadow a built-in.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Collection
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from unity.errors import NotFoundError
from unity.plugins.sdk import Action, Collector, Manifest, Plugin, PluginConfig

__all__ = ["PluginRegistry", "PluginSpec", "Source"]

Source = Literal["builtin", "entrypoint", "installed"]


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One discovered plugin, usable or not."""

    plugin_id: str
    source: Source
    origin: str
    """Where it came from: a module path, ``"name = value"`` of an entry point, or a bundle."""
    cls: type[Plugin[Any]] | None
    """The plugin class; ``None`` when the plugin is broken, so nothing can run it."""
    manifest: Manifest | None
    """``None`` when the plugin broke before its manifest could be read."""
    verified: bool
    """Trusted to run in-process: built-ins, and entry points whose id is in ``trusted``."""
    error: str | None = None
    """Why the plugin is broken, in words meant for its author."""

    @property
    def broken(self) -> bool:
        """Whether the plugin cannot be used (see :attr:`error`)."""
        return self.error is not None


@dataclass(frozen=True, slots=True)
class _Registration:
    """A plugin added by hand, kept so that a rescan can add it again."""

    cls: type[Plugin[Any]]
    source: Source
    origin: str
    verified: bool


class PluginRegistry:
    """Finds plugins and answers which ones exist.

    ``discover`` fills the registry; ``register`` adds a plugin from elsewhere (an uploaded
    bundle). Built-ins are verified; an entry point is verified only when its plugin id is
    in ``trusted``.
    """

    def __init__(
        self,
        *,
        builtin_package: str = "unity.plugins.builtin",
        entry_point_group: str = "unity.plugins",
        trusted: Collection[str] = (),
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._builtin_package = builtin_package
        self._group = entry_point_group
        self._trusted = frozenset(trusted)
        self._log = log if log is not None else structlog.stdlib.get_logger("unity.plugins")
        # Every spec in the order it was added; ``_owners`` maps an id to the spec that won it
        # (the catalog has one row per id, so duplicates are only in ``_all``).
        self._all: list[PluginSpec] = []
        self._owners: dict[str, PluginSpec] = {}
        # Plugins added with register(), with the spec each got last.
        self._registered: dict[type[Plugin[Any]], tuple[_Registration, PluginSpec]] = {}
        # Each broken plugin is logged once, even across rescans.
        self._logged: set[tuple[str, str, str]] = set()

    def discover(self) -> list[PluginSpec]:
        """Scan built-ins, then entry points; return every spec, broken ones included.

        Unlike :meth:`specs`, the list also holds the plugins that lost their id to an
        earlier one (broken, "duplicate plugin id"), so that a listing can show them.
        A rescan replaces what earlier scans found. Plugins added with :meth:`register`
        are kept and checked again after the scan, in the order they were added.
        """
        self._all = []
        self._owners = {}
        self._scan_builtins()
        self._scan_entry_points()
        for cls, (registration, _) in self._registered.items():
            self._registered[cls] = (registration, self._admit_registration(registration))
        return sorted(self._all, key=lambda spec: spec.plugin_id)

    def register(
        self, cls: type[Plugin[Any]], *, source: Source, origin: str, verified: bool
    ) -> PluginSpec:
        """Validate ``cls`` and add it; return its spec, which is broken when ``cls`` is unusable.

        Registering the same class again returns the spec it already has.
        """
        if cls in self._registered:
            return self._registered[cls][1]
        for spec in self._all:
            if spec.cls is cls:
                return spec
        registration = _Registration(cls, source, origin, verified)
        spec = self._admit_registration(registration)
        self._registered[cls] = (registration, spec)
        return spec

    def get(self, plugin_id: str) -> PluginSpec:
        """The spec that owns ``plugin_id``; raises :class:`~unity.errors.NotFoundError`."""
        try:
            return self._owners[plugin_id]
        except KeyError:
            raise NotFoundError(f"unknown plugin {plugin_id!r}") from None

    def specs(self) -> list[PluginSpec]:
        """One spec per plugin id, the one that owns it (broken or not), sorted by id."""
        return sorted(self._owners.values(), key=lambda spec: spec.plugin_id)

    def healthy(self) -> list[PluginSpec]:
        """The specs that can be used, sorted by plugin id."""
        return [spec for spec in self.specs() if not spec.broken]

    def _scan_builtins(self) -> None:
        package = importlib.import_module(self._builtin_package)
        # Sorted so that which of two clashing built-ins wins does not depend on the filesystem.
        found = sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name)
        for info in found:
            if info.name.startswith("_"):
                continue
            module_path = f"{package.__name__}.{info.name}"
            try:
                module = importlib.import_module(module_path)
            except (Exception, SystemExit) as exc:  # a plugin's import may raise anything
                self._add_broken(
                    info.name, "builtin", module_path, True, _import_failure(exc), exc=exc
                )
                continue
            if not hasattr(module, "PLUGIN"):
                continue  # a helper module shared by plugins, not a plugin
            self._admit(
                module.PLUGIN,
                source="builtin",
                origin=module_path,
                fallback_id=info.name,
                verified=True,
            )

    def _scan_entry_points(self) -> None:
        found = importlib.metadata.entry_points(group=self._group)
        for entry_point in sorted(found, key=lambda ep: (ep.name, ep.value)):
            origin = f"{entry_point.name} = {entry_point.value}"
            try:
                loaded = entry_point.load()
            except (Exception, SystemExit) as exc:  # a plugin's import may raise anything
                self._add_broken(
                    entry_point.name,
                    "entrypoint",
                    origin,
                    entry_point.name in self._trusted,
                    _import_failure(exc),
                    exc=exc,
                )
                continue
            self._admit(
                loaded,
                source="entrypoint",
                origin=origin,
                fallback_id=entry_point.name,
                verified=None,
            )

    def _admit_registration(self, registration: _Registration) -> PluginSpec:
        return self._admit(
            registration.cls,
            source=registration.source,
            origin=registration.origin,
            fallback_id=_class_name(registration.cls),
            verified=registration.verified,
        )

    def _admit(
        self,
        obj: object,
        *,
        source: Source,
        origin: str,
        fallback_id: str,
        verified: bool | None,
    ) -> PluginSpec:
        """Check ``obj`` and add its spec. ``verified=None`` means: trusted if its id is."""
        manifest, error = _inspect(obj)
        plugin_id = manifest.id if manifest is not None else fallback_id
        if verified is None:
            verified = plugin_id in self._trusted
        if error is None and plugin_id in self._owners:
            error = f"duplicate plugin id, already provided by {self._owners[plugin_id].origin}"
        if error is not None:
            return self._add_broken(plugin_id, source, origin, verified, error, manifest=manifest)
        assert isinstance(obj, type)  # _inspect accepted it, so it is a Plugin subclass
        spec = PluginSpec(plugin_id, source, origin, obj, manifest, verified)
        self._add(spec)
        return spec

    def _add_broken(
        self,
        plugin_id: str,
        source: Source,
        origin: str,
        verified: bool,
        error: str,
        *,
        manifest: Manifest | None = None,
        exc: BaseException | None = None,
    ) -> PluginSpec:
        spec = PluginSpec(plugin_id, source, origin, None, manifest, verified, error)
        self._add(spec)
        key = (plugin_id, origin, error)
        if key not in self._logged:
            self._logged.add(key)
            details: dict[str, Any] = {"exc_info": exc} if exc is not None else {}
            self._log.warning(
                "plugin is broken",
                plugin_id=plugin_id,
                source=source,
                origin=origin,
                error=error,
                **details,
            )
        return spec

    def _add(self, spec: PluginSpec) -> None:
        self._all.append(spec)
        self._owners.setdefault(spec.plugin_id, spec)


def _inspect(obj: object) -> tuple[Manifest | None, str | None]:
    """The manifest of a plugin class and, when it cannot be used, why."""
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        return None, f"not a Plugin subclass: {_describe(obj)}"
    declared = getattr(obj, "manifest", None)
    if declared is None:
        return None, "no manifest: set `manifest = Manifest(...)` on the class"
    if not isinstance(declared, Manifest):
        return None, f"manifest must be a Manifest, not {type(declared).__name__}"
    try:
        # Validated again: Manifest.model_construct() or later mutation skips the checks.
        manifest = Manifest.model_validate(declared.model_dump())
    except ValidationError as exc:
        return None, f"invalid manifest: {_errors(exc)}"
    kind = getattr(obj, "kind", None)
    if kind is None:
        return manifest, "subclass a plugin kind such as Collector, not Plugin itself"
    if manifest.kind != kind:
        return manifest, f"manifest kind {manifest.kind!r} does not match the class kind {kind!r}"
    config_model = obj.config_model
    if not (isinstance(config_model, type) and issubclass(config_model, PluginConfig)):
        return manifest, f"config_model must be a PluginConfig subclass, not {config_model!r}"
    try:
        obj.config_schema()
    except Exception as exc:  # pydantic raises several types for models it cannot describe
        return manifest, f"config model has no JSON Schema: {type(exc).__name__}: {exc}"
    if issubclass(obj, Collector) and obj.collect is Collector.collect:
        return manifest, "collect() is not implemented"
    if issubclass(obj, Action):
        missing = [f"{name}()" for name in ("plan", "apply") if not _overrides(obj, name)]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            return manifest, f"{' and '.join(missing)} {verb} not implemented"
    return manifest, None


def _overrides(cls: type[Action[Any]], name: str) -> bool:
    """Whether ``cls`` implements ``name`` rather than inheriting the SDK's placeholder."""
    return getattr(cls, name) is not getattr(Action, name)


def _import_failure(exc: BaseException) -> str:
    if isinstance(exc, ValidationError) and exc.title == Manifest.__name__:
        # Manifest(...) in a class body is checked while the module is imported.
        return f"invalid manifest: {_errors(exc)}"
    if isinstance(exc, ValidationError):
        return f"import failed: ValidationError for {exc.title}: {_errors(exc)}"
    return f"import failed: {type(exc).__name__}: {str(exc) or repr(exc)}"


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}" for error in exc.errors()
    )


def _describe(obj: object) -> str:
    if isinstance(obj, ModuleType):
        return f"module {obj.__name__} (name a class: 'package.module:ClassName')"
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {obj!r:.80}"


def _class_name(cls: object) -> str:
    return getattr(cls, "__name__", type(cls).__name__)
