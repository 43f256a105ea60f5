"""Redis credentials and TLS settings reach redis-py's connection arguments (no I/O:
redis-py connects on the first command, not when the client is built)."""

from __future__ import annotations

import redis

from state.redis_store import RedisStore
from stream.settings import Settings


def connection(settings: Settings) -> tuple[type, dict[str, object]]:
    store = RedisStore.from_settings(settings)
    pool = store.client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    store.close()
    return pool.connection_class, kwargs


def test_user_password_and_ca_file_from_settings() -> None:
    cls, kw = connection(
        Settings(
            redis_url="rediss://cache.internal:6380/2",
            redis_username="segmenter",
            redis_password="hunter2",
            redis_tls_ca_file="/etc/ssl/redis-ca.pem",
        )
    )
    assert issubclass(cls, redis.SSLConnection)
    assert (kw["host"], kw["port"], kw["db"]) == ("cache.internal", 6380, 2)
    assert (kw["username"], kw["password"]) == ("segmenter", "hunter2")
    assert kw["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem"


def test_credentials_in_the_url_are_kept() -> None:
    cls, kw = connection(Settings(redis_url="redis://app:pw@cache:6379/0"))
    assert not issubclass(cls, redis.SSLConnection)
    assert (kw["username"], kw["password"]) == ("app", "pw")
    assert "ssl_ca_certs" not in kw


def test_nothing_added_when_unset() -> None:
    _, kw = connection(Settings(redis_url="redis://cache:6379/0"))
    assert kw.get("username") is None and kw.get("password") is None
    assert kw["socket_timeout"] == 10.0
