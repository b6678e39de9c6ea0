"""Schemathesis against the running server's ``/openapi.json``: no 5xx, and every response
(errors included) matches the schema and media type it documents."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server import UnityProcess, wait_for

pytestmark = pytest.mark.slow


def test_openapi_conformance(tmp_path: Path) -> None:
    server = UnityProcess(
        tmp_path / "data",
        enable={"steady": '{"collection_interval": 1}', "boom": '{"collection_interval": 1}'},
        # Thousands of requests in seconds, many with deliberately wrong keys: the per-key
        # and the brute-force limits would turn most answers into 429s.
        env={
            "UNITY_DEFAULT_RATE_LIMIT_PER_MINUTE": "1000000",
            "UNITY_RATE_LIMIT_FAILED_AUTH_PER_MINUTE": "1000000",
        },
    )
    server.start()
    try:
        # some data and executions exist, so reads return full shapes
        wait_for(
            lambda: (
                httpx.get(
                    f"{server.url}/api/plugins/steady/executions", headers=server.headers
                ).json()["total"]
                >= 2
            ),
            30,
            "two executions",
        )
        st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
        assert st is not None
        result = subprocess.run(
            [
                st,
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                # Valid-by-schema requests that Unity rightly rejects: a plugin's config is
                # validated against that plugin's own schema, and start must precede end.
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "25",
                "--seed",
                "20261123",
                "--request-timeout",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-6000:]
    finally:
        server.stop()
