"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they need by type.

The components are built by ``create_app``'s lifespan and live on ``app.state``; these
aliases hand them to routes so a test can swap any of them without monkeypatching.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from unity.auth.principal import DEFAULT_TENANT
from unity.components import Components


def _components(connection: HTTPConnection) -> Components:
    components: Components = connection.app.state.components
    return components


def _tenant() -> str:
    return DEFAULT_TENANT


ComponentsDep = Annotated[Components, Depends(_components)]
#: The tenant a request acts on.
TenantDep = Annotated[str, Depends(_tenant)]
