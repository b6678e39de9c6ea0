"""Cache keys of collection read models, shared by the writers that invalidate them.

Everything a tenant reads is cached per tenant: the same plugin shows different instances,
health and metrics to different tenants.
"""

from __future__ import annotations


def status_key(plugin_id: str, tenant_id: str) -> str:
    """Health and counters of a plugin's instances in a tenant (TTL: status)."""
    return f"plugin:{plugin_id}:{tenant_id}:status"


def latest_key(plugin_id: str, tenant_id: str) -> str:
    """Latest samples and snapshot of a plugin in a tenant (TTL: latest metrics)."""
    return f"plugin:{plugin_id}:{tenant_id}:latest"


def detail_key(plugin_id: str, tenant_id: str) -> str:
    """A plugin's catalog entry with the tenant's instances (TTL: status)."""
    return f"plugin:{plugin_id}:{tenant_id}:detail"


def plugin_keys(plugin_id: str, tenant_id: str) -> tuple[str, str, str]:
    """Every per-plugin key of a tenant: what one execution or change invalidates."""
    return (
        status_key(plugin_id, tenant_id),
        latest_key(plugin_id, tenant_id),
        detail_key(plugin_id, tenant_id),
    )


def summary_key(tenant_id: str) -> str:
    """Front-page figures of a tenant (TTL: dashboard)."""
    return f"dashboard:{tenant_id}:summary"


def categories_key(tenant_id: str) -> str:
    """Category counts as a tenant sees them (TTL: dashboard)."""
    return f"dashboard:{tenant_id}:categories"


def dashboard_keys(tenant_id: str) -> tuple[str, str]:
    """The tenant's dashboard keys."""
    return summary_key(tenant_id), categories_key(tenant_id)
