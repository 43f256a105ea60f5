"""What every part of the store shares: the base class its mixins subclass, and the
helpers that run Redis calls and turn their failures into a readable :class:`RedisError`.

Stores nothing itself; the key names are in :mod:`state.keys`.
"""

from __future__ import annotations

from typing import Any

import redis

from state.keys import Keys
from stream.errors import RedisError


class StoreBase:
    """The attributes every mixin of :class:`state.redis_store.RedisStore` uses, declared
    for type checkers; ``RedisStore.__init__`` sets them."""

    #: The client: ``redis.Redis``, or ``RedisCluster`` when ``cluster`` is set.
    _r: Any
    keys: Keys
    cluster: bool


def safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def run(pipe: Any, what: str) -> list[Any]:
    return call(pipe.execute, what)


def call(fn: Any, what: str) -> Any:
    try:
        return fn()
    except redis.RedisError as exc:
        raise RedisError(f"Redis failed to {what}: {exc}") from exc
