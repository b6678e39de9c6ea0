"""The list envelope every collection endpoint returns: ``{"items", "total", "skip", "limit"}``."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field

T = TypeVar("T")

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    total: int = Field(description="How many items match the filters, over all pages.")
    skip: int
    limit: int


class PageParams(BaseModel):
    """``skip`` and ``limit`` query parameters."""

    skip: int = 0
    limit: int = DEFAULT_LIMIT


def _page_params(
    skip: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip.")] = 0,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (max {MAX_LIMIT}).")
    ] = DEFAULT_LIMIT,
) -> PageParams:
    return PageParams(skip=skip, limit=limit)


PageDep = Annotated[PageParams, Depends(_page_params)]
