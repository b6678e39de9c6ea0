"""Which URLs a webhook may target (server-side request forgery guard).

Always refused: schemes other than http(s), link-local addresses (169.254.0.0/16, fe80::/10,
which hold the cloud metadata services), the other known metadata addresses and names,
unspecified and multicast addresses. Loopback and private networks are allowed by default,
because a homelab's receivers (Home Assistant, n8n, ntfy) live there; the settings
``webhook_allow_networks`` (when set, only these) and ``webhook_deny_networks`` narrow it.

Checks happen twice: on the URL when a webhook is saved (its form, and the address when it
is written as one), and on every address a host name resolves to, by the sender's resolver
each time it opens a connection (a name may start pointing elsewhere; checking where the
connection is made leaves it no gap to change in).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["UnsafeUrl", "UrlPolicy"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_DENIED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "169.254.0.0/16",  # link-local, incl. 169.254.169.254 (AWS, GCP, Azure, OpenStack)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",
        "::/128",
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # IPv6 multicast
    )
)
DENIED_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)


class UnsafeUrl(ValueError):
    """The URL's scheme, host or resolved address is not allowed."""


def _networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """The networks webhooks may and may not reach."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, allow: Iterable[str], deny: Iterable[str]) -> UrlPolicy:
        """A policy from CIDR strings; ``ValueError`` for one that is not a network."""
        return cls(allow=_networks(allow), deny=_networks(deny))

    def check_url(self, url: str) -> str:
        """``url`` unchanged if its form is allowed; ``UnsafeUrl`` saying why not.

        An address written in the URL is checked here; a host name's addresses are checked
        when it is resolved (:meth:`check_address`, from the sender's resolver).
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeUrl(f"not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https"):
            raise UnsafeUrl("a webhook URL must start with http:// or https://")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise UnsafeUrl("a webhook URL needs a host")
        if port == 0:
            raise UnsafeUrl("port 0 cannot be reached")
        if host in DENIED_HOSTNAMES:
            raise UnsafeUrl(f"{host} is a cloud metadata service, which webhooks may not reach")
        address = _literal(host)
        if address is not None:
            self.check_address(address)
        return url

    def check_address(self, address: IPAddress) -> None:
        """``UnsafeUrl`` when webhooks may not reach ``address``."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in ALWAYS_DENIED):
            raise UnsafeUrl(
                f"{address} is a link-local, metadata or non-unicast address, "
                "which webhooks may not reach"
            )
        if any(address in network for network in self.deny):
            raise UnsafeUrl(f"{address} is in a network denied by webhook_deny_networks")
        if self.allow and not any(address in network for network in self.allow):
            raise UnsafeUrl(f"{address} is outside the networks in webhook_allow_networks")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
