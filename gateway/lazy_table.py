"""The Table plumbing every store shares: a client made on first use, its table created once, and the
conditional write that lets instances share a row without a lock.

Stores start before storage may be reachable and tables may be wiped under a running app (a new or reset
account), so each store asks for its client per use and says when a call found the table gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import UpdateMode

__all__ = ["LazyTable", "write_unless_changed"]


async def write_unless_changed(
    table: Any, entity: dict[str, Any], etag: str | None, mode: UpdateMode = UpdateMode.REPLACE
) -> Any:
    """Creates the row if none was seen (`etag` None), else updates it only if it still has `etag`; returns the
    write's metadata. Raises ResourceExistsError or ResourceModifiedError when another writer came first."""
    if etag is None:
        return await table.create_entity(entity)
    return await table.update_entity(entity, mode=mode, etag=etag, match_condition=MatchConditions.IfNotModified)


class LazyTable:
    """`factory()` makes the client; `count()` is called before each storage call made here (the store's meter)."""

    def __init__(self, factory: Callable[[], Any], count: Callable[[], object]) -> None:
        self._factory = factory
        self._count = count
        self._client: Any = None
        self._created = False

    @property
    def opened(self) -> bool:
        return self._client is not None

    @property
    def created(self) -> bool:
        """The table is known to exist (False again after `lost()`)."""
        return self._created

    async def client(self) -> Any:
        """The client, creating the table first if this process has not yet (or has seen it gone)."""
        if self._client is None:
            self._client = self._factory()
        if not self._created:
            self._count()
            with contextlib.suppress(ResourceExistsError):
                await self._client.create_table()
            self._created = True
        return self._client

    def lost(self) -> None:
        """A call found the table gone: the next `client()` creates it again."""
        self._created = False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._created = None, False
