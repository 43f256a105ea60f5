"""Privacy and security on the real broker and Redis: pseudonymised ids, `segmenter forget`,
Redis credentials and TLS."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import generate_latest

from consumers import topics
from consumers.forget import forget_user
from loadtest.devstack import servers
from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from state.user_states import STATE_FIELD, loaded_state
from stream.errors import RedisError
from stream.privacy import pseudonymise
from stream.settings import Settings
from stream.state_codec import plain_blob
from tests.integration.certs import make_server_cert
from tests.integration.conftest import cli, produce
from tests.integration.kafka_read import Record, read_topic
from tests.integration.shoppers import make_events

pytestmark = pytest.mark.integration

SECRET = "integration-test-secret-32-bytes"
#: The Redis commands the segmenter needs (docs/security.md).
SEGMENTER_ACL = (
    "+@read +@write +@transaction +@connection -@dangerous +eval +evalsha +script|load +config|get"
)


def dump(rds: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its whole value, whatever its type (as bytes)."""
    kw = rds.connection_pool.connection_kwargs
    raw = redis.Redis(host=kw["host"], port=kw["port"])  # bytes: states are binary
    out: dict[str, Any] = {}
    for key in raw.scan_iter(match=f"{prefix}*", count=1000):
        kind = raw.type(key).decode()
        if kind == "string":
            value: Any = raw.get(key)
        elif kind == "hash":
            value = raw.hgetall(key)
        elif kind == "set":
            value = raw.smembers(key)
        elif kind == "list":
            value = raw.lrange(key, 0, -1)
        elif kind == "zset":  # member -> score, as text like every other value here
            value = {m: b"%d" % s for m, s in raw.zrange(key, 0, -1, withscores=True)}
        else:
            raise AssertionError(f"unexpected {kind} at {key!r}")
        out[key.decode()] = value
    raw.close()
    return out


def flat_bytes(value: Any) -> bytes:
    """A value of :func:`dump` as one byte string, to search for ids in; a user hash's
    state field with its plain state (neither base64 nor deflated) beside it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        if value.get(STATE_FIELD.encode()):
            plain = plain_blob(loaded_state(value[STATE_FIELD.encode()]))
            value = {**value, b"_plain": plain}
        return b"\0".join(k + b"\0" + v for k, v in sorted(value.items()))
    return b"\0".join(sorted(value))


def last_by_key(records: list[Record]) -> dict[bytes | None, Record]:
    out: dict[bytes | None, Record] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        out[r.key] = r
    return out


def run_once(settings: Settings, run_segmenter: Any, n_users: int, seed: int) -> list[str]:
    """Produce ``n_users`` users' events, run the segmenter over them, stop it; the ids."""
    messages, expected = make_events(settings, n_users=n_users, seed=seed)
    produce(settings, messages)
    running = run_segmenter(settings)
    running.wait(lambda st: st.messages >= len(messages))
    stats = running.finish()
    assert stats.messages == len(messages) and stats.dead_letters == 0
    return sorted(expected)


@pytest.fixture
def private(settings: Settings) -> Settings:
    return settings.replace(pseudonymise_user_ids=True, user_id_secret=SECRET)


def test_pseudonymised_ids_never_reach_redis_topics_metrics_or_logs(
    private: Settings, rds: redis.Redis, run_segmenter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ids = run_once(private, run_segmenter, n_users=60, seed=11)
    pseudonyms = {u: pseudonymise(SECRET.encode(), u) for u in ids}
    raw_ids = [u.encode() for u in ids]
    p = private.redis_prefix

    everything = dump(rds, p)
    assert len(everything) > len(ids)  # user hashes, timers, sets, model, catalogue
    for key, value in everything.items():
        blob = key.encode() + b"\0" + flat_bytes(value)
        leaked = [u for u in raw_ids if u in blob]
        assert leaked == [], f"raw ids {leaked[:3]} in {key}"
    # The users are there, under their pseudonyms, whole.
    members: set[bytes] = set()
    for key, value in everything.items():
        if key.startswith(f"{p}segment:"):
            members |= value
    for uid, pseud in pseudonyms.items():
        user = everything[f"{p}user:{{{pseud}}}"]
        assert user[b"segment"], uid
        # The state: in the hash, or in the state key when long.
        assert user[STATE_FIELD.encode()] or f"{p}user:{{{pseud}}}:state" in everything
        assert pseud.encode() in members

    # Every output topic: keys and values hold pseudonyms only.
    changes = read_topic(private.kafka_bootstrap, private.changes_topic)
    current = read_topic(private.kafka_bootstrap, private.current_topic)
    dead = read_topic(private.kafka_bootstrap, private.deadletter_topic, quiet_s=0.5)
    assert dead == []  # all input was valid (dead letters are copies of the input)
    assert {orjson.loads(r.value)["user_id"] for r in changes} == set(pseudonyms.values())
    for r in [*changes, *current]:
        assert r.value is not None
        msg = orjson.loads(r.value)
        assert r.key == msg["user_id"].encode()
        leaked = [u for u in raw_ids if u in r.value or u in (r.key or b"")]
        assert leaked == []

    # No log line holds a raw id; none at INFO or above holds a pseudonym either.
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage()
        assert not any(u in text for u in ids), text
        if record.levelno >= logging.INFO:
            assert not any(ps in text for ps in pseudonyms.values()), text


def test_metrics_carry_no_user_ids(private: Settings, run_segmenter: Any) -> None:
    messages, expected = make_events(private, n_users=45, seed=12)
    produce(private, messages)
    running = run_segmenter(private)
    running.wait(lambda st: st.messages >= len(messages))
    text = generate_latest(running.segmenter.registry).decode()
    running.finish()
    assert "segmenter_events_total" in text
    for uid in expected:
        assert uid not in text
        assert pseudonymise(SECRET.encode(), uid) not in text


def test_inspect_and_explain_take_the_raw_id(
    private: Settings, rds: redis.Redis, run_segmenter: Any
) -> None:
    ids = run_once(private, run_segmenter, n_users=50, seed=13)
    pseud = pseudonymise(SECRET.encode(), ids[0])
    out = cli(private, "inspect", ids[0])
    assert out.returncode == 0, out.stderr
    assert f"user:{{{pseud}}}" in out.stdout
    out = cli(private, "explain", ids[0])
    assert out.returncode == 0, out.stderr
    # The pseudonym itself is not a raw id: asking for it finds nobody.
    assert cli(private, "inspect", pseud).returncode == 3


def test_forget_erases_the_user_everywhere_and_only_them(
    private: Settings, rds: redis.Redis, run_segmenter: Any
) -> None:
    ids = run_once(private, run_segmenter, n_users=60, seed=14)
    p = private.redis_prefix
    target = ids[7]
    gone = pseudonymise(SECRET.encode(), target)
    # Queued for reassessment too (as during a warm-up), to see that entry go as well.
    other = pseudonymise(SECRET.encode(), ids[8])
    rds.hset(f"{p}model:reassess", mapping={gone: "0:11", other: "0:12"})
    before = dump(rds, p)
    user_key = f"{p}user:{{{gone}}}"
    segment = int(before[user_key][b"segment"])
    assert gone.encode() in before[f"{p}segment:{{{segment}}}:members"]

    out = cli(private, "forget", target, "--yes", "--settle", "0.3")
    assert out.returncode == 0, out.stderr
    assert f"user {target} (pseudonym {gone}): removed from Redis" in out.stdout
    assert f"user hash {user_key}" in out.stdout
    assert f"membership of segment {segment}" in out.stdout
    assert "entry in the reassessment queue" in out.stdout
    assert f"tombstone written to {private.current_topic}" in out.stdout

    after = dump(rds, p)
    # Exactly what was the user's is gone; every other key and member is as it was.
    expected = {k: v for k, v in before.items() if k not in (user_key, user_key + ":state")}
    for k, v in expected.items():
        if isinstance(v, set):
            expected[k] = v - {gone.encode()}
        elif isinstance(v, dict) and (k == f"{p}model:reassess" or k.startswith(f"{p}timers:")):
            expected[k] = {f: e for f, e in v.items() if f != gone.encode()}
        elif k == f"{p}model:sample":
            expected[k] = {f: e for f, e in v.items() if e != gone.encode()}
    expected = {k: v for k, v in expected.items() if v not in (set(), {})}
    assert after == expected
    assert all(gone.encode() not in k.encode() + flat_bytes(v) for k, v in after.items())

    # The last record of the user on the compacted topic is a tombstone (read_committed);
    # the other users' last records are their segments.
    current = last_by_key(read_topic(private.kafka_bootstrap, private.current_topic))
    assert current[gone.encode()].value is None
    others = [pseudonymise(SECRET.encode(), u).encode() for u in ids if u != target]
    assert all(current[k].value is not None for k in others)
    n_records = len(read_topic(private.kafka_bootstrap, private.current_topic))

    # Again: nothing left to remove, exit 0, Redis untouched, still a tombstone last.
    out = cli(private, "forget", target, "--yes", "--settle", "0")
    assert out.returncode == 0, out.stderr
    assert "nothing in Redis (already forgotten, or never seen)" in out.stdout
    assert dump(rds, p) == after
    again = read_topic(private.kafka_bootstrap, private.current_topic)
    assert len(again) == n_records + 1
    assert last_by_key(again)[gone.encode()].value is None


def test_forget_erases_again_what_a_batch_in_flight_wrote_back(
    settings: Settings, rds: redis.Redis
) -> None:
    p = settings.redis_prefix
    uid = "late-user"
    user = {"segment": "2", "segment_name": "x", "features": "{}"}

    def write_back() -> None:
        rds.hset(f"{p}user:{{{uid}}}", mapping=user)
        rds.set(f"{p}user:{{{uid}}}:state", b"\x02state")
        rds.sadd(f"{p}segment:{{2}}:members", uid)

    write_back()
    rds.sadd(f"{p}segment:{{2}}:members", "someone-else")
    admin = topics.admin_client(settings)
    topics.create_topics(admin, {settings.current_topic: (1, {"cleanup.policy": "compact"})})
    waits: list[float] = []

    def sleep(s: float) -> None:
        # The first wait sees a batch that read the user before the erasure write them
        # back; the second sees nothing more.
        waits.append(s)
        if len(waits) == 1:
            write_back()

    report = forget_user(settings, uid, settle_s=0.5, sleep=sleep)
    assert waits == [0.5, 0.5]
    assert report.settled and report.tombstone and len(report.erasures) == 2
    assert report.erasures[1].user_hash and report.erasures[1].segments == (2,)
    assert rds.exists(f"{p}user:{{{uid}}}", f"{p}user:{{{uid}}}:state") == 0
    assert rds.smembers(f"{p}segment:{{2}}:members") == {"someone-else"}
    current = read_topic(settings.kafka_bootstrap, settings.current_topic, quiet_s=0.5)
    assert [(r.key, r.value) for r in current] == [(uid.encode(), None)]

    # Written back every time: the user's events are still arriving.
    report = forget_user(settings, uid, settle_s=0.1, sleep=lambda s: write_back())
    assert not report.settled and len(report.erasures) == 4


def test_forget_refuses_without_confirmation_and_erases_nothing_when_a_server_is_down(
    settings: Settings, rds: redis.Redis
) -> None:
    p = settings.redis_prefix
    rds.hset(f"{p}user:{{u1}}", "segment", "0")

    out = cli(settings, "forget", "u1")  # stdin is not a terminal: nobody to ask
    assert out.returncode == 2 and "--yes" in out.stderr
    assert rds.exists(f"{p}user:{{u1}}")

    no_redis = settings.replace(redis_url=f"redis://:pw-xyz@127.0.0.1:{servers.free_port()}/0")
    out = cli(no_redis, "forget", "u1", "--yes")
    assert out.returncode == 1 and "cannot reach Redis" in out.stderr
    assert "pw-xyz" not in out.stderr + out.stdout and "Traceback" not in out.stderr

    no_broker = settings.replace(kafka_bootstrap=f"127.0.0.1:{servers.free_port()}")
    started = time.monotonic()
    out = cli(no_broker, "forget", "u1", "--yes")
    assert out.returncode == 1 and "cannot reach the Kafka broker" in out.stderr
    assert "Traceback" not in out.stderr and time.monotonic() - started < 60
    assert rds.exists(f"{p}user:{{u1}}")  # nothing was erased


# -- Redis credentials and TLS on a real server ----------------------------------------------


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, Path]]:
    """A Redis with a TLS port (certificate of a test CA, for 127.0.0.1) and an ACL user
    ``segmenter`` / ``tls-user-password`` allowed only :data:`SEGMENTER_ACL`; the plain port
    serves readiness checks only."""
    d = tmp_path_factory.mktemp("redis-tls")
    cert = make_server_cert(d)
    tls_port = servers.free_port()
    tls = f"--tls-port {tls_port} --tls-cert-file {cert.cert} --tls-key-file {cert.key} "
    tls += f"--tls-ca-cert-file {cert.ca} --tls-auth-clients no"
    # The least privileges docs/security.md documents; one option's values as words.
    acl = f"--user segmenter on >tls-user-password ~* resetchannels -@all {SEGMENTER_ACL}"
    server = servers.start_redis(d, extra_args=(*tls.split(), *acl.split()))
    yield server, tls_port, cert.ca
    server.stop()


def test_redis_user_password_and_tls_from_settings(tls_redis: tuple[Server, int, Path]) -> None:
    _, port, ca = tls_redis
    s = Settings(
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_username="segmenter",
        redis_password="tls-user-password",
        redis_tls_ca_file=str(ca),
    )
    store = RedisStore.from_settings(s)
    store.ping()
    assert store.client.client_info()["user"] == "segmenter"
    assert store.forget("nobody").removed_anything is False
    store.close()

    # Wrong password, and no CA to check the server's certificate with: readable errors
    # that never show the password.
    for bad, says in (
        (s.replace(redis_password="not-the-password"), "refused the credentials"),
        (s.replace(redis_tls_ca_file=""), "SEGMENTER_REDIS_TLS_CA_FILE"),
    ):
        store = RedisStore.from_settings(bad)
        with pytest.raises(RedisError, match=says) as info:
            store.ping()
        assert "tls-user-password" not in str(info.value)
        assert "not-the-password" not in str(info.value)
        store.close()


def test_the_segmenter_runs_over_tls_as_a_least_privilege_user(
    settings: Settings, run_segmenter: Any, tls_redis: tuple[Server, int, Path]
) -> None:
    _, port, ca = tls_redis
    s = settings.replace(
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_username="segmenter",
        redis_password="tls-user-password",
        redis_tls_ca_file=str(ca),
    )
    ids = run_once(s, run_segmenter, n_users=45, seed=15)
    store = RedisStore.from_settings(s)
    users = [store.read_user(u) for u in ids]
    assert all(u is not None and u["segment"] for u in users)
    # A user whose state is long enough for the state key (most are in the hash), so that
    # erasing it is done by this user too.
    target = next(u for u, h in zip(ids, users, strict=True) if h is not None and h["_s"] == "")
    erased = store.forget(target)
    assert erased.user_hash and erased.state and len(erased.segments) == 1
    with pytest.raises(redis.ResponseError, match="no permissions"):
        store.client.flushall()
    store.close()
