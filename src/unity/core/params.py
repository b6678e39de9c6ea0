"""Parameter types shared by routes."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

_NUMBER = re.compile(r"^\s*[-+]?\d+(\.\d*)?([eE][-+]?\d+)?\s*$")


def _iso_only(value: Any) -> Any:
    # Pydantic would read "0.5" as seconds since the epoch; the spec promises ISO 8601.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("expected an ISO 8601 date-time such as 2026-01-01T00:00:00Z")
    return value


#: An ISO 8601 date-time with a timezone (``Z`` or ``+02:00``).
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_only)]
