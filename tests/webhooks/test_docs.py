"""docs/webhooks.md shows a valid example delivery for every event type in the catalog."""

from __future__ import annotations

import json
import re
from pathlib import Path

from unity.core.events.catalog import CATALOG

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def test_every_event_type_has_an_example_that_validates() -> None:
    text = DOC.read_text()
    examples = re.findall(r"#### `([a-z_.]+)`\n\n[^\n]*\n\n```json\n(.*?)\n```", text, re.S)
    seen = set()
    for name, block in examples:
        body = json.loads(block)
        assert body["type"] == name
        assert set(body) == {"type", "timestamp", "data"}
        CATALOG[name].validate(body["data"])
        seen.add(name)
    assert seen == set(CATALOG)
