"""What the registry and the API rely on in every built-in collector module."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from unity.plugins.builtin import docker_monitor, http_check, system_info
from unity.plugins.sdk import METRIC_NAME, Collector


@pytest.mark.parametrize(
    ("module", "category", "permission"),
    [
        (system_info, "system", "system"),
        (docker_monitor, "containers", "docker"),
        (http_check, "network", "network"),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)).rsplit(".", 1)[-1],
)
def test_builtin_collectors_expose_plugin(
    module: ModuleType, category: str, permission: str
) -> None:
    plugin = module.PLUGIN

    assert issubclass(plugin, Collector)
    assert plugin.kind == "collector"
    assert plugin.manifest.id == module.__name__.rsplit(".", 1)[-1]
    assert plugin.manifest.category == category
    assert plugin.manifest.permissions == (permission,)
    names = [metric.name for metric in plugin.metrics]
    assert len(names) == len(set(names))
    assert all(
        METRIC_NAME.match(name) and metric.description
        for name, metric in zip(names, plugin.metrics, strict=True)
    )
    schema = plugin.config_schema()
    assert schema["type"] == "object"
    json.dumps(schema)  # the API serves it as JSON
    assert "collection_interval" in schema["properties"]
