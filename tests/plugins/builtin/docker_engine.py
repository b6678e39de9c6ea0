"""A small Docker Engine API server for the Docker action tests: the images and containers
part, with removal and restart, answering from state a test sets and inspects."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import docker

from tests.http_handlers import JsonHandler

VERSIONED = re.compile(r"^/v\d+\.\d+(/.*)$")
NO_TAG = "<none>:<none>"


@dataclass
class Engine:
    """Images and containers; tests change them between calls and read what was done."""

    images: list[dict[str, Any]] = field(default_factory=list)
    containers: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[tuple[str, str]] = field(default_factory=list)
    refuse_removal: dict[str, str] = field(default_factory=dict)
    base_url: str = ""

    def image(self, ref: str) -> dict[str, Any] | None:
        for image in self.images:
            if image["Id"] == ref or ref in (image.get("RepoTags") or []):
                return image
        return None

    def container(self, ref: str) -> dict[str, Any] | None:
        for container in self.containers:
            if container["Id"] == ref or f"/{ref}" in container["Names"]:
                return container
        return None


def image(
    image_id: str, tags: list[str] | None = None, size: int = 0, created: int = 0
) -> dict[str, Any]:
    return {
        "Id": f"sha256:{image_id * 16}",
        "RepoTags": tags or [NO_TAG],
        "Size": size,
        "Created": created,
    }


def container(
    cid: str,
    name: str,
    state: str = "running",
    labels: dict[str, str] | None = None,
    image_id: str = "",
) -> dict[str, Any]:
    return {
        "Id": cid * 16,
        "Names": [f"/{name}"],
        "Image": f"{name}:latest",
        "ImageID": image_id,
        "State": state,
        "Status": "Up 1 hour" if state == "running" else "Exited (0)",
        "Labels": labels or {},
    }


def engine_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _route(self) -> tuple[str, dict[str, list[str]]]:
            parts = urlsplit(self.path)
            match = VERSIONED.match(parts.path)
            return unquote(match.group(1) if match else parts.path), parse_qs(parts.query)

        def do_GET(self) -> None:
            path, query = self._route()
            if path == "/version":
                self._json(200, {"Version": "27.3.1", "ApiVersion": "1.47"})
            elif path == "/images/json":
                filters = json.loads(query.get("filters", ["{}"])[0])
                images = engine.images
                if filters.get("dangling") == ["true"]:
                    images = [i for i in images if i["RepoTags"] == [NO_TAG]]
                self._json(200, images)
            elif path == "/containers/json":
                everything = query.get("all", ["0"])[0] in {"1", "True", "true"}
                self._json(
                    200,
                    [c for c in engine.containers if everything or c["State"] == "running"],
                )
            elif path.startswith("/images/") and path.endswith("/json"):
                found = engine.image(path[len("/images/") : -len("/json")])
                if found is None:
                    self._json(404, {"message": "No such image"})
                else:
                    self._json(200, found)
            elif path.startswith("/containers/") and path.endswith("/json"):
                found = engine.container(path[len("/containers/") : -len("/json")])
                if found is None:
                    self._json(404, {"message": "No such container"})
                else:
                    self._json(
                        200,
                        {
                            "Id": found["Id"],
                            "Name": found["Names"][0],
                            "State": {"Running": found["State"] == "running"},
                        },
                    )
            else:
                self._json(404, {"message": f"page not found: {path}"})

        def do_DELETE(self) -> None:
            path, _ = self._route()
            ref = path.removeprefix("/images/")
            found = engine.image(ref)
            if found is None:
                self._json(404, {"message": f"No such image: {ref}"})
                return
            if ref in engine.refuse_removal:
                self._json(409, {"message": engine.refuse_removal[ref]})
                return
            engine.removed.append(ref)
            tags = found["RepoTags"]
            if ref in tags and len(tags) > 1:
                tags.remove(ref)
                self._json(200, [{"Untagged": ref}])
            else:
                engine.images.remove(found)
                self._json(200, [{"Deleted": found["Id"]}])

        def do_POST(self) -> None:
            path, query = self._route()
            match = re.match(r"^/containers/([^/]+)/restart$", path)
            found = engine.container(match.group(1)) if match else None
            if found is None:
                self._json(404, {"message": "No such container"})
                return
            engine.restarted.append((found["Names"][0].lstrip("/"), query.get("t", [""])[0]))
            found["State"] = "running"
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def start_engine(serve: Callable[..., Any]) -> Engine:
    """An empty engine listening on ``engine.base_url`` (tcp://127.0.0.1:PORT)."""
    state = Engine()
    server = serve(engine_handler(state))
    state.base_url = f"tcp://127.0.0.1:{server.port}"
    return state


def real_engine_reachable() -> bool:
    """Whether a Docker daemon answers on this machine (DOCKER_HOST or the local socket)."""
    try:
        client = docker.from_env(timeout=5)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:  # any failure means there is no usable daemon
        return False
    finally:
        client.close()
