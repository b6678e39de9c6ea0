"""Two tenants on one server: neither can read, list, change or stream the other's resources."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import websockets

from tests.live_server import live_server


async def test_two_tenants_cannot_see_or_touch_each_other(tmp_path: Path) -> None:
    async with live_server(tmp_path, ws_heartbeat_s=3600) as server:
        c = server.components
        admin = {"authorization": f"Bearer {server.key}"}
        async with httpx.AsyncClient(base_url=server.http) as http:
            created = await http.post(
                "/api/tenants", json={"id": "beta", "name": "Beta"}, headers=admin
            )
            assert created.status_code == 201, created.text
            scopes = ["plugins:read", "plugins:write", "metrics:read", "keys:admin"]
            keys = {}
            for tenant in ("default", "beta"):
                response = await http.post(
                    "/api/keys",
                    json={"name": tenant, "scopes": scopes, "tenant": tenant},
                    headers=admin,
                )
                assert response.status_code == 201, response.text
                keys[tenant] = {"authorization": f"Bearer {response.json()['key']}"}
            a, b = keys["default"], keys["beta"]

            for headers, start in ((a, 100), (b, 200)):
                enabled = await http.post(
                    "/api/plugins/steady/enable",
                    json={"enabled": True, "config": {"collection_interval": 3600, "start": start}},
                    headers=headers,
                )
                assert enabled.status_code == 200, enabled.text

            async with websockets.connect(
                server.ws_url("/ws/metrics", key=b["authorization"][7:])
            ) as beta_ws:
                await asyncio.sleep(0.1)
                instance_a = await c.plugins.default_instance("steady", "default")
                instance_b = await c.plugins.default_instance("steady", "beta")
                await c.pipeline.execute(instance_a)
                await c.pipeline.execute(instance_b)
                seen = [json.loads(await asyncio.wait_for(beta_ws.recv(), 5)) for _ in range(2)]
                assert {m["instance_id"] for m in seen} == {str(instance_b.id)}

            detail_b = (await http.get("/api/plugins/steady", headers=b)).json()
            assert [i["id"] for i in detail_b["instances"]] == [str(instance_b.id)]
            assert detail_b["config"]["start"] == 200
            latest_b = (await http.get("/api/plugins/steady/metrics", headers=b)).json()
            assert {m["instance_id"] for m in latest_b["metrics"]} == {str(instance_b.id)}
            executions_b = (await http.get("/api/plugins/steady/executions", headers=b)).json()
            assert {e["instance_id"] for e in executions_b["items"]} == {str(instance_b.id)}
            history = await http.get(
                "/api/plugins/steady/metrics/history",
                params={"instance_id": str(instance_a.id)},
                headers=b,
            )
            assert history.json()["series"] == []  # a's instance id does not open a's data
            status_b = (await http.get("/api/plugins/steady/status", headers=b)).json()
            assert [i["instance_id"] for i in status_b["instances"]] == [str(instance_b.id)]
            prometheus = (await http.get("/metrics", headers=b)).text
            assert 'steady_value{instance="default",plugin="steady"} 201.0' in prometheus
            assert "101.0" not in prometheus

            # changing: disabling in beta leaves default's instance scheduled
            await http.post("/api/plugins/steady/enable", json={"enabled": False}, headers=b)
            assert [r.tenant_id for r in await c.plugins.runnable_instances()] == ["default"]

            # another tenant's resources by id or by ?tenant=
            assert (
                await http.get("/api/plugins", params={"tenant": "default"}, headers=b)
            ).status_code == 403
            keys_a = (await http.get("/api/keys", headers=a)).json()["items"]
            foreign = next(k for k in keys_a if k["tenant_id"] == "default")
            assert (await http.get(f"/api/keys/{foreign['id']}", headers=b)).status_code == 404
            assert (
                await http.post(f"/api/keys/{foreign['id']}/revoke", headers=b)
            ).status_code == 404
            assert {
                k["tenant_id"] for k in (await http.get("/api/keys", headers=b)).json()["items"]
            } == {"beta"}
            # streaming another tenant's events is refused
            async with websockets.connect(
                server.ws_url("/ws/metrics", key=b["authorization"][7:], tenant="default")
            ) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await _drain(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4403

            # the admin key may look into a tenant on purpose
            as_admin = await http.get(
                "/api/plugins/steady", params={"tenant": "beta"}, headers=admin
            )
            assert [i["id"] for i in as_admin.json()["instances"]] == [str(instance_b.id)]


async def _drain(ws: websockets.ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 5)
