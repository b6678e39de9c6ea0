"""Webhooks: signed deliveries of catalog events to other systems, from a durable outbox.

Modules: ``models`` (tables), ``schemas`` (API shapes), ``signing`` (Standard Webhooks
secrets, signatures and the receivers' verifier), ``crypto`` (secrets encrypted at rest),
``urls`` (which targets are allowed), ``service`` (endpoints, outbox, deliveries, stats),
``dispatcher`` (bus → outbox, outbox → HTTP with retries) and ``api`` (``/api/webhooks``).

Receivers verify a delivery with :func:`verify` (standard library only)::

    from unity.webhooks import verify
    payload = verify("whsec_…", request.headers, body_bytes)
"""

from __future__ import annotations

from unity.webhooks.signing import WebhookVerificationError, generate_secret, sign, verify

__all__ = ["WebhookVerificationError", "generate_secret", "sign", "verify"]
