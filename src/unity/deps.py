"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they need by type.

The components are built by ``create_app``'s lifespan and live on ``app.state``; these
aliases hand them to routes so a test can swap any of them without monkeypatching.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from unity.components import Components


def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(_components)]
