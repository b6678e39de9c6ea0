"""``/api/webhooks``: the event catalog, endpoints, deliveries, stats, tests and recovery.

Webhooks belong to the caller's tenant (admin keys may pass ``?tenant=``); another
tenant's webhook answers 404, like a missing one. Reading needs ``webhooks:read``,
changing anything (and sending a test) ``webhooks:write``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from unity.core.events.catalog import CATALOG, CATEGORIES, check_pattern
from unity.core.pagination import Page, PageDep
from unity.deps import Caller, ComponentsDep, access
from unity.errors import BadRequestError, problem_responses
from unity.webhooks.schemas import (
    CategoryOut,
    DeliveryOut,
    DeliveryStatus,
    EventCatalogOut,
    EventTypeOut,
    RecoverOut,
    RecoverRequest,
    RotateSecret,
    SecretRotated,
    StatsOut,
    TestOutcome,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/api/webhooks",
    tags=["webhooks"],
    responses=problem_responses(400, 401, 403, 422, 429),
)

Reader = Annotated[Caller, access("webhooks:read")]
Writer = Annotated[Caller, access("webhooks:write")]
WebhookIdPath = Annotated[uuid.UUID, Path(description="The webhook's id.")]
DeliveryIdPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="The delivery's id.")]


@router.get("/events", summary="Event catalog")
async def event_catalog(caller: Reader) -> EventCatalogOut:
    """Every event type a webhook can subscribe to, with its category, meaning and the JSON
    Schema of its ``data``; the whole catalog, unpaged."""
    items = [
        EventTypeOut.model_validate(
            {
                "type": t.name,
                "category": t.category,
                "description": t.description,
                "schema": t.schema(),
            }
        )
        for t in CATALOG.values()
    ]
    categories = [
        CategoryOut(
            name=name,
            pattern=f"{name}.*",
            events=[t.name for t in CATALOG.values() if t.category == name],
        )
        for name in sorted(CATEGORIES)
    ]
    return EventCatalogOut(items=items, total=len(items), categories=categories)


@router.post("", status_code=201, summary="Create a webhook", responses=problem_responses(404))
async def create_webhook(body: WebhookCreate, caller: Writer, c: ComponentsDep) -> WebhookCreated:
    """The secret (``whsec_…``, generated unless given) is in this response and after a
    rotation only; it is stored encrypted. The URL must be http(s) and may not point at
    link-local or cloud-metadata addresses (422)."""
    webhook, secret = await c.webhooks.create(caller.tenant, body)
    return WebhookCreated(**webhook.model_dump(), secret=secret)


@router.get("", summary="List webhooks")
async def list_webhooks(
    caller: Reader,
    c: ComponentsDep,
    page: PageDep,
    active: Annotated[bool | None, Query(description="Only active (or inactive) ones.")] = None,
) -> Page[WebhookOut]:
    """The tenant's webhooks, newest first."""
    items, total = await c.webhooks.list_webhooks(
        caller.tenant, skip=page.skip, limit=page.limit, active=active
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@router.get("/{webhook_id}", summary="Get a webhook", responses=problem_responses(404))
async def get_webhook(webhook_id: WebhookIdPath, caller: Reader, c: ComponentsDep) -> WebhookOut:
    """One webhook, with why Unity disabled it if it did."""
    return await c.webhooks.get(webhook_id, caller.tenant)


@router.put("/{webhook_id}", summary="Update a webhook", responses=problem_responses(404))
async def update_webhook(
    webhook_id: WebhookIdPath, body: WebhookUpdate, caller: Writer, c: ComponentsDep
) -> WebhookOut:
    """Change name, description, URL, events or ``active``; fields left out keep their
    value. ``active: true`` re-enables a disabled endpoint and resumes its pending
    deliveries."""
    return await c.webhooks.update(webhook_id, caller.tenant, body)


@router.delete(
    "/{webhook_id}", status_code=204, summary="Delete a webhook", responses=problem_responses(404)
)
async def delete_webhook(webhook_id: WebhookIdPath, caller: Writer, c: ComponentsDep) -> Response:
    """The webhook, its deliveries and their attempts are removed."""
    await c.webhooks.delete(webhook_id, caller.tenant)
    return Response(status_code=204)


@router.post("/{webhook_id}/test", summary="Send a test event", responses=problem_responses(404))
async def test_webhook(webhook_id: WebhookIdPath, caller: Writer, c: ComponentsDep) -> TestOutcome:
    """Sends a ``webhook.test`` event to this webhook now (whatever it subscribes to) and
    answers with the attempt's outcome. A failed test is retried like any delivery."""
    delivery_id = await c.webhooks.create_test_delivery(webhook_id, caller.tenant)
    result = await c.webhook_dispatcher.deliver_now(delivery_id)
    return TestOutcome(
        success=result.success,
        status_code=result.status_code,
        response_ms=result.response_ms,
        response_body=result.response_body,
        error=result.error,
        delivery=await c.webhooks.delivery(webhook_id, caller.tenant, delivery_id),
    )


@router.get(
    "/{webhook_id}/deliveries", summary="Deliveries of a webhook", responses=problem_responses(404)
)
async def list_deliveries(
    webhook_id: WebhookIdPath,
    caller: Reader,
    c: ComponentsDep,
    page: PageDep,
    status: Annotated[DeliveryStatus | None, Query(description="Only this status.")] = None,
    event_type: Annotated[
        str | None,
        Query(max_length=100, description="An event type or `<category>.*`.", examples=["run.*"]),
    ] = None,
) -> Page[DeliveryOut]:
    """Newest first, each with every attempt: status code, response time, the first 2 KB of
    the response body, error."""
    if event_type is not None:
        try:
            check_pattern(event_type)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from exc
    items, total = await c.webhooks.deliveries(
        webhook_id,
        caller.tenant,
        status=status,
        event_type=event_type,
        skip=page.skip,
        limit=page.limit,
    )
    return Page(items=items, total=total, skip=page.skip, limit=page.limit)


@router.get(
    "/{webhook_id}/deliveries/{delivery_id}",
    summary="One delivery",
    responses=problem_responses(404),
)
async def get_delivery(
    webhook_id: WebhookIdPath, delivery_id: DeliveryIdPath, caller: Reader, c: ComponentsDep
) -> DeliveryOut:
    """A delivery with its payload and every attempt."""
    return await c.webhooks.delivery(webhook_id, caller.tenant, delivery_id)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    summary="Retry a delivery",
    responses=problem_responses(404),
)
async def retry_delivery(
    webhook_id: WebhookIdPath, delivery_id: DeliveryIdPath, caller: Writer, c: ComponentsDep
) -> DeliveryOut:
    """Queue the delivery again now, with a fresh retry schedule and the same ``webhook-id``.
    It goes out in order with the endpoint's other pending deliveries."""
    return await c.webhooks.retry(webhook_id, caller.tenant, delivery_id)


@router.post(
    "/{webhook_id}/recover", summary="Resend failed deliveries", responses=problem_responses(404)
)
async def recover(
    webhook_id: WebhookIdPath, body: RecoverRequest, caller: Writer, c: ComponentsDep
) -> RecoverOut:
    """Queue again every ``exhausted`` or ``failed`` delivery created at or after ``since``
    (oldest first, same ``webhook-id`` each). An inactive webhook gets them once re-enabled."""
    return RecoverOut(requeued=await c.webhooks.recover(webhook_id, caller.tenant, body.since))


@router.get("/{webhook_id}/stats", summary="Delivery figures", responses=problem_responses(404))
async def stats(webhook_id: WebhookIdPath, caller: Reader, c: ComponentsDep) -> StatsOut:
    """Success rate, average and p95 response time, deliveries by status, last success and
    failure."""
    return await c.webhooks.stats(webhook_id, caller.tenant)


@router.post(
    "/{webhook_id}/rotate-secret", summary="Rotate the secret", responses=problem_responses(404)
)
async def rotate_secret(
    webhook_id: WebhookIdPath,
    caller: Writer,
    c: ComponentsDep,
    body: RotateSecret | None = None,
) -> SecretRotated:
    """A new secret (given or generated), shown this once. For 24 hours every delivery
    carries two signatures, with the new and the old secret, so the receiver can switch
    without missing one."""
    secret = None if body is None else body.secret
    return await c.webhooks.rotate_secret(webhook_id, caller.tenant, secret)
