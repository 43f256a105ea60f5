"""The segmenter's Redis: :class:`RedisStore`, one client composed of a mixin per thing
stored, so callers reach all of it as ``store.<method>(...)``. Key names are in
:mod:`state.keys`, the base and call helpers the mixins share in :mod:`state.client`.

- :mod:`state.user_states`: users' state and public hash, written fenced by input offset
- :mod:`state.segments`: segment membership sets and the segment catalogue
- :mod:`state.model_store`: the model checkpoint and its kept versions
- :mod:`state.sample`: the model's user sample and the snapshot taken of it
- :mod:`state.timers`: event-time timers, per input partition
- :mod:`state.shared_watermark`: every input partition's clock, shared by the group
- :mod:`state.reassess_queue`: users queued for a decision without an event of theirs
- :mod:`state.applied_offsets`: how far Redis holds every write, and its identity
- :mod:`state.erasure`: removing one user from all of the above

This module keeps the connection (settings, ping, close) and the advice on the server's
hash encoding.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from state.applied_offsets import AppliedOffsets
from state.client import safe_url
from state.erasure import Erasing
from state.keys import Keys
from state.model_store import ModelCheckpoints
from state.reassess_queue import ReassessQueue
from state.sample import UserSample
from state.segments import Segments
from state.shared_watermark import SharedWatermark
from state.timers import Timers
from state.user_states import UserStates
from stream.errors import RedisError
from stream.settings import Settings

#: ``hash-max-listpack-value`` at which user hashes stay in Redis's compact encoding.
RECOMMENDED_LISTPACK_VALUE = 1024


class RedisStore(
    UserStates,
    Segments,
    ModelCheckpoints,
    UserSample,
    Timers,
    SharedWatermark,
    ReassessQueue,
    AppliedOffsets,
    Erasing,
):
    """The segmenter's Redis: user states, membership, catalogue, model checkpoint."""

    def __init__(
        self,
        url: str,
        prefix: str = "seg:",
        socket_timeout: float = 10.0,
        cluster: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.cluster = cluster
        # options: redis-py connection arguments (credentials, TLS) the URL leaves out.
        opts = {"socket_timeout": socket_timeout, "socket_connect_timeout": 5.0, **(options or {})}
        # Every write touches one user's keys (one hash slot) or one segment's set, so the
        # same pipelines work on one server and on a Redis Cluster.
        self._r: Any = (
            RedisCluster.from_url(url, **opts) if cluster else redis.Redis.from_url(url, **opts)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        """The store the settings describe: the URL, plus the user name, password and TLS
        CA file of ``redis_username``, ``redis_password`` and ``redis_tls_ca_file``."""
        options = {
            name: value
            for name, value in (
                ("username", settings.redis_username),
                ("password", settings.redis_password),
                ("ssl_ca_certs", settings.redis_tls_ca_file),
            )
            if value
        }
        return cls(
            settings.redis_url,
            settings.redis_prefix,
            cluster=settings.redis_cluster,
            options=options,
        )

    @property
    def client(self) -> Any:
        return self._r

    def ping(self) -> None:
        """Check Redis answers; raise a readable :class:`RedisError` if not."""
        try:
            self._r.ping()
        except redis.AuthenticationError as exc:
            raise RedisError(
                f"Redis at {safe_url(self.url)} refused the credentials ({exc}). Check "
                "SEGMENTER_REDIS_USERNAME and SEGMENTER_REDIS_PASSWORD (or the URL's)."
            ) from None
        except redis.RedisError as exc:
            hint = (
                "Check the server's certificate against SEGMENTER_REDIS_TLS_CA_FILE."
                if "SSL" in str(exc)
                else "Start Redis (locally: make up) or point SEGMENTER_REDIS_URL at a "
                "running server."
            )
            raise RedisError(
                f"cannot reach Redis at {safe_url(self.url)} ({exc}). {hint}"
            ) from None

    def encoding_advice(self) -> str | None:
        """A sentence for the operator if user hashes will take more memory than needed.

        User hashes hold values of a few hundred bytes (the state and the features), so
        with Redis's default ``hash-max-listpack-value`` of 64 they are kept as hash
        tables, about a third larger than the compact listpack encoding. Servers that do
        not allow ``CONFIG GET`` (some managed services) give no advice.
        """
        try:
            raw = self._r.config_get("hash-max-listpack-value")
        except redis.RedisError:
            return None
        values = [int(v) for k, v in raw.items() if "listpack-value" in str(k)]
        if not values or min(values) >= RECOMMENDED_LISTPACK_VALUE:
            return None
        return (
            f"Redis has hash-max-listpack-value {min(values)}: user hashes will be kept as "
            "hash tables, about a third more memory per user. Set it to "
            f"{RECOMMENDED_LISTPACK_VALUE} (redis.conf or CONFIG SET) to keep them compact."
        )

    def close(self) -> None:
        self._r.close()
