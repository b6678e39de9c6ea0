"""Cache keys of collection read models, shared by the writers that invalidate them."""

from __future__ import annotations


def status_key(plugin_id: str) -> str:
    """Health and counters of a plugin's instances (TTL: status)."""
    return f"plugin:{plugin_id}:status"


def latest_key(plugin_id: str) -> str:
    """Latest samples and snapshot of a plugin (TTL: latest metrics)."""
    return f"plugin:{plugin_id}:latest"


def detail_key(plugin_id: str) -> str:
    """A plugin's catalog entry with its instances (TTL: dashboard)."""
    return f"plugin:{plugin_id}:detail"


SUMMARY_KEY = "dashboard:summary"
CATEGORIES_KEY = "dashboard:categories"
