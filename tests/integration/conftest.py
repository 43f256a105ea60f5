"""Real servers for integration tests: a Kafka-protocol broker and Redis, started by this
test session on free loopback ports and stopped by PID at the end.

``SEGMENTER_TEST_BROKER`` picks the broker: ``auto`` (default: Apache Kafka when Java 17
and its jars are available, else Tansu), ``kafka`` or ``tansu``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from consumers import topics
from consumers.app import RunStats, Segmenter
from loadtest.devstack import install, servers
from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from stream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = servers.start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


#: The broker the session ran, for the summary at the end of the run.
_BROKER: dict[str, str] = {}
#: The reason a test gives when it needs Kafka transactions and the broker has none.
NEEDS_TRANSACTIONS = "needs Kafka transactions: Tansu delivers aborted records"


def broker_choice() -> str:
    """``SEGMENTER_TEST_BROKER`` as the session uses it: ``auto`` means Apache Kafka
    wherever Java 17 is here (so a Kafka that cannot start fails the run rather than
    falling back, which would skip the effectively-once tests), else Tansu."""
    prefer = os.environ.get("SEGMENTER_TEST_BROKER", "auto")
    if prefer == "auto" and install.java_bin() is not None:
        return "kafka"
    return prefer


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = servers.start_broker(tmp_path_factory.mktemp("broker"), prefer=broker_choice())
    _BROKER["kind"] = server.kind
    print(f"\nbroker under test: {server.kind} on {server.address}")
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say in the run's last lines which broker ran and how many tests it made skip."""
    if "kind" not in _BROKER:
        return
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if NEEDS_TRANSACTIONS in str(getattr(r, "longrepr", ""))
    ]
    terminalreporter.write_sep("-", "broker")
    terminalreporter.write_line(
        f"integration tests ran on {_BROKER['kind']}; "
        f"{len(skipped)} skipped for want of Kafka transactions"
    )


@pytest.fixture
def settings(broker: Server, redis_server: Server) -> Settings:
    """Settings with topics, group and Redis prefix of this test's own; input topics made."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(
        kafka_bootstrap=broker.address,
        redis_url=f"redis://{redis_server.address}/0",
        redis_prefix=f"t{tag}:",
        group_id=f"g-{tag}",
        clicks_topic=f"clicks-{tag}",
        purchases_topic=f"purchases-{tag}",
        changes_topic=f"changes-{tag}",
        current_topic=f"current-{tag}",
        deadletter_topic=f"deadletter-{tag}",
        warmup_users=40,
        n_clusters=4,
        metrics_port=servers.free_port(),
        metrics_host="127.0.0.1",
        batch_max_events=2000,
        # Tansu delivers aborted transactional records to read_committed consumers.
        transactional=broker.kind == "kafka",
    )
    admin = topics.admin_client(s)
    topics.create_topics(admin, {s.clicks_topic: (4, {}), s.purchases_topic: (4, {})})
    return s


@pytest.fixture
def txn_settings(settings: Settings, broker: Server) -> Settings:
    if broker.kind != "kafka":
        pytest.skip(NEEDS_TRANSACTIONS)
    # Small batches: many commits, so kills land at every step of a batch.
    return settings.replace(batch_max_events=300, checkpoint_interval_s=2.0)


@pytest.fixture
def store(redis_server: Server, request: pytest.FixtureRequest) -> Iterator[RedisStore]:
    """A RedisStore on the session's Redis under a key prefix of this test's own."""
    module = request.module.__name__.rpartition(".")[2]
    st = RedisStore(f"redis://{redis_server.address}/0", prefix=f"{module}-{request.node.name}:")
    yield st
    st.close()


@pytest.fixture
def rds(redis_server: Server) -> Iterator[redis.Redis]:
    client = redis.Redis(host=servers.HOST, port=redis_server.port, decode_responses=True)
    yield client
    client.close()


def segment_ids(rds: redis.Redis, prefix: str) -> list[int]:
    """Every segment id with a membership set (current and retired segments)."""
    keys = rds.scan_iter(match=f"{prefix}segment:{{*}}:members", count=1000)
    return sorted(int(str(k).split("{")[1].split("}")[0]) for k in keys)


def produce(
    settings: Settings, messages: list[tuple[str, bytes | None, bytes]]
) -> dict[tuple[str, int], int]:
    """Produce (topic, key, value) messages, wait until every one is acknowledged, and
    return the next offset of every (topic, partition) written to."""
    errors: list[str] = []
    ends: dict[tuple[str, int], int] = {}

    def on_delivery(err: object, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
            return
        key = (msg.topic(), msg.partition())
        ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    p = Producer({**settings.kafka_client_config(), "linger.ms": 5})
    for topic, key, value in messages:
        p.produce(topic, value, key, on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(30) == 0
    assert errors == []
    return ends


def env_of(settings: Settings) -> dict[str, str]:
    """The environment that makes `segmenter run` use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    for name in settings.describe():
        # The values themselves: describe() masks secrets, and the password of a URL.
        env[f"SEGMENTER_{name.upper()}"] = str(getattr(settings, name))
    for prop, value in settings.extra.items():
        env[f"SEGMENTER_KAFKA__{prop.upper().replace('.', '__')}"] = str(value)
    return env


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `segmenter ARGS` with ``settings``, as an operator would, without a terminal on
    stdin (a command that would ask for confirmation refuses instead of waiting)."""
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *args],
        env=env_of(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def spawn(settings: Settings, log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start `segmenter run` as its own process, as an operator would."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", "run"],
        env=env_of(settings),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop_gracefully(settings: Settings, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """Wait until `segmenter run` answers /readyz (its signal handlers are in place), then
    SIGTERM it and return its exit code."""
    url = f"http://127.0.0.1:{settings.metrics_port}/readyz"
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


@dataclass
class Running:
    segmenter: Segmenter
    stop: threading.Event
    thread: threading.Thread
    result: dict[str, RunStats]

    def wait(self, done: Callable[[RunStats], bool], timeout: float = 90.0) -> RunStats:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise AssertionError("the segmenter stopped on its own")
            if done(self.segmenter.stats):
                return self.segmenter.stats
            time.sleep(0.1)
        raise AssertionError(f"timed out; stats so far: {self.segmenter.stats}")

    def finish(self) -> RunStats:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.segmenter.close()
        return self.result["stats"]


@pytest.fixture
def run_segmenter() -> Iterator[Callable[[Settings], Running]]:
    """Start a Segmenter on a thread; stopped (and closed) at the end of the test."""
    started: list[Running] = []

    def start(settings: Settings) -> Running:
        seg = Segmenter(settings)
        seg.start()
        stop = threading.Event()
        result: dict[str, RunStats] = {}
        thread = threading.Thread(
            target=lambda: result.setdefault("stats", seg.run(stop)), daemon=True
        )
        thread.start()
        r = Running(seg, stop, thread, result)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop.set()
            r.thread.join(60)
            r.segmenter.close()
