"""The soak test, outside CI: hours of faults compressed into one steady live run.

    make soak                                   # 30 minutes at 300 events/s
    python -m loadtest.soak --minutes 10 --rate 200

Two ``segmenter run`` processes consume live events (event time = now) from 2,000
simulated shoppers while the faults of the fault tests come at random times: SIGKILL of a
process (restarted), SIGTERM of one (a rebalance, then restarted), Redis paused for
5 s, the broker stopped for 5 s; and once each, Redis restarted without persistence (it
comes back empty) and a failover to its replica, promoted while the primary still takes
writes (so it lacks the last ones). At the end the producer stops, the group drains, and
the run checks every user's counts in Redis against what the broker acknowledged, and
every change id on ``segments.changes`` for duplicates. RSS of the processes and Redis's
memory are sampled every minute.

It writes ``soak.md`` and ``soak.json`` to ``loadtest/results/<UTC date>/`` (or
``--out``). Servers are started here on free loopback ports and stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from loadtest.devstack import servers
from loadtest.personas import ShopperSimulator
from loadtest.stack import OffsetWatcher, SegmenterProcess, Stack, StackError, rss_bytes
from stream.events import TYPE_INDEX
from stream.feature_registry import TYPE_NAMES
from stream.features import full_features
from stream.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
#: Event type -> the count in the user hash that holds it (30 days hold the whole run).
TYPE_FIELDS = {t: f"{TYPE_NAMES[i]}_30d" for t, i in TYPE_INDEX.items()}
#: Faults repeated through the run, and those done once, by name.
REPEATED = ("kill", "rebalance", "redis_pause", "broker_stop")
ONCE = ("redis_restart_empty", "redis_failover")


@dataclass
class Expected:
    """What the broker acknowledged, per user and event type."""

    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    sent: int = 0
    failed: int = 0


class LiveShoppers(threading.Thread):
    """Produces simulated shoppers' events at ``rate`` with event time = now."""

    def __init__(self, s: Settings, users: int, rate: float, seed: int, events: int) -> None:
        super().__init__(daemon=True)
        self.s, self.rate, self.events = s, rate, events
        now = int(time.time() * 1000)
        self.sim = ShopperSimulator(users, seed, now - 30 * 86_400_000, now)
        self.expected = Expected()
        self.stop_flag = threading.Event()
        self.producer = Producer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 600_000,
            }
        )

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.expected.failed += 1
            return
        doc = orjson.loads(msg.value() or b"{}")
        self.expected.counts[str(doc["user_id"])][str(doc["type"])] += 1

    def run(self) -> None:
        last_ts: dict[str, int] = {}
        started = time.monotonic()
        # The simulated span only orders the sessions; each event is sent with time = now.
        for i, ev in enumerate(self.sim.events(self.events)):
            if self.stop_flag.is_set():
                break
            ahead = started + i / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            user = str(ev["user_id"])
            now = time.time_ns() // 1_000_000
            ts = max(now, last_ts.get(user, 0) + 1)
            last_ts[user] = ts
            topic = self.s.purchases_topic if ev["type"] == "purchase" else self.s.clicks_topic
            value = orjson.dumps({**ev, "ts": ts})
            while True:
                try:
                    self.producer.produce(topic, value, user.encode(), on_delivery=self._delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.expected.sent += 1
            self.producer.poll(0)
        self.producer.flush(600)


class Soak:
    """The servers, the segmenter processes, and the faults done to them."""

    def __init__(self, workdir: Path, rng: random.Random) -> None:
        self.workdir, self.rng = workdir, rng
        self.redis = servers.start_redis(workdir / "redis-a")
        self.replica: servers.Server | None = servers.start_redis(
            workdir / "redis-b", extra_args=("--replicaof", servers.HOST, str(self.redis.port))
        )
        self.broker = servers.start_kafka(workdir / "kafka")
        self.stack = Stack(self.broker, self.redis, workdir)
        self.s = self.stack.settings(group_id="soak")
        self.stack.create_inputs(self.s, PARTITIONS)
        self.procs: list[SegmenterProcess | None] = [None, None]
        self.log: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    def start(self, i: int) -> None:
        own = self.s.replace(instance_id=f"soak-{i}", metrics_port=servers.free_port())
        self.procs[i] = SegmenterProcess(own, self.workdir / f"segmenter-{i}.log")

    def note(self, fault: str, detail: str = "") -> None:
        entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "fault": fault}
        if detail:
            entry["detail"] = detail
        self.log.append(entry)
        print(f"[{entry['at']}] {fault} {detail}".rstrip(), flush=True)

    def restart_dead(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None and not p.running():
                code = p.popen.returncode
                if code not in (0, -signal.SIGKILL):
                    self.note("exited", f"process {i} exited with code {code}: {p.tail(300)}")
                self.start(i)

    def do(self, fault: str) -> None:
        i = self.rng.randrange(len(self.procs))
        proc = self.procs[i]
        assert proc is not None
        if fault == "kill":
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(30)
            self.note(fault, f"process {i}")
        elif fault == "rebalance":
            proc.stop()
            self.note(fault, f"process {i} stopped, the other takes its partitions")
            time.sleep(5.0)
        elif fault == "redis_pause":
            os.kill(self.redis.pid, signal.SIGSTOP)
            time.sleep(5.0)
            os.kill(self.redis.pid, signal.SIGCONT)
            self.note(fault, "5 s")
        elif fault == "broker_stop":
            controller = int(self.broker.extra["controller_port"])
            self.broker.stop()
            time.sleep(5.0)
            self.broker = servers.start_kafka(
                self.workdir / "kafka", self.broker.port, controller_port=controller
            )
            self.note(fault, "5 s")
        elif fault == "redis_restart_empty":
            port = self.redis.port
            self.redis.stop()
            self.redis = servers.start_redis(self.workdir / "redis-a", port)
            self.note(fault, "no persistence: it came back empty (its replica resyncs, empty)")
        elif fault == "redis_failover":
            assert self.replica is not None
            with contextlib.closing(redis.Redis(host=servers.HOST, port=self.replica.port)) as c:
                c.replicaof("NO", "ONE")
            time.sleep(2.0)  # the primary still takes writes the promoted replica lacks
            for p in self.procs:
                if p is not None:
                    p.stop()
            self.redis.stop()
            self.redis, self.replica = self.replica, None
            self.s = self.s.replace(redis_url=f"redis://{self.redis.address}/0")
            for j in range(len(self.procs)):
                self.start(j)
            self.note(fault, "replica promoted 2 s before the primary stopped")
        else:
            raise ValueError(f"unknown fault {fault}")

    def sample(self, started: float) -> None:
        rss = [rss_bytes(p.pid) for p in self.procs if p is not None and p.running()]
        try:
            with contextlib.closing(redis.Redis(host=servers.HOST, port=self.redis.port)) as c:
                mem = int(c.info("memory")["used_memory"])
                users = sum(
                    1 for _ in c.scan_iter(match=f"{self.s.redis_prefix}user:*", count=5000)
                )
        except redis.RedisError:
            mem, users = -1, -1
        self.samples.append(
            {
                "minute": round((time.monotonic() - started) / 60, 1),
                "rss_bytes": rss,
                "redis_used_memory": mem,
                "redis_user_keys": users,
            }
        )

    def stop(self) -> None:
        for p in self.procs:
            if p is not None:
                p.stop()
        for srv in (self.broker, self.redis, self.replica):
            if srv is not None:
                srv.stop()


def _schedule(rng: random.Random, duration_s: float) -> list[tuple[float, str]]:
    """Fault times: each repeated fault about every 6 minutes, the once-only ones in the
    second and fourth fifth of the run, nothing in the first and last minute."""
    out: list[tuple[float, str]] = []
    n = max(1, int(duration_s // 360))
    for fault in REPEATED:
        out += [(rng.uniform(60, duration_s - 60), fault) for _ in range(n)]
    out.append((rng.uniform(0.2, 0.4) * duration_s, "redis_restart_empty"))
    out.append((rng.uniform(0.6, 0.8) * duration_s, "redis_failover"))
    return sorted(out)


def _changes(s: Settings) -> tuple[int, int, list[list[dict[str, Any]]]]:
    """(changes, duplicate change ids, the first duplicated messages) on
    ``segments.changes``, read_committed."""
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"soak-reader-{random.getrandbits(32)}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        parts = sorted(
            c.list_topics(s.changes_topic, timeout=10).topics[s.changes_topic].partitions
        )
        c.assign([TopicPartition(s.changes_topic, p, 0) for p in parts])
        pending: set[int] = set(parts)
        ids: Counter[str] = Counter()
        seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(int(m.partition() or 0))
                    continue
                doc = orjson.loads(m.value() or b"{}")
                ids[doc["change_id"]] += 1
                seen[doc["change_id"]].append(
                    {
                        "partition": m.partition(),
                        "offset": m.offset(),
                        **{
                            k: doc.get(k)
                            for k in ("user_id", "previous_segment", "segment", "model_version")
                        },
                        "event_time": doc.get("event_time"),
                        "emitted_at": doc.get("emitted_at"),
                        "reason": doc.get("explanation", {}).get("reason"),
                    }
                )
        twice = [seen[cid] for cid, n in ids.items() if n > 1][:10]
        return sum(ids.values()), sum(n - 1 for n in ids.values()), twice
    finally:
        c.close()


def _counts(s: Settings, port: int, expected: Expected) -> dict[str, int]:
    wrong = missing = counted = 0
    with contextlib.closing(redis.Redis(host=servers.HOST, port=port, decode_responses=True)) as c:
        for user, want in expected.counts.items():
            raw = c.hget(f"{s.redis_prefix}user:{{{user}}}", "features")
            if raw is None:
                missing += 1
                continue
            f = full_features(orjson.loads(raw))
            got = {t: int(f[field] or 0) for t, field in TYPE_FIELDS.items()}
            counted += sum(got.values())
            if any(got[t] != want.get(t, 0) for t in TYPE_FIELDS):
                wrong += 1
    return {"users": len(expected.counts), "counted": counted, "wrong": wrong, "missing": missing}


def run(
    minutes: float, rate: float, users: int, seed: int, keep_logs: Path | None = None
) -> dict[str, Any]:
    """One soak run (see the module); ``keep_logs``: where to copy the processes' logs."""
    rng = random.Random(seed)
    duration = minutes * 60
    with tempfile.TemporaryDirectory(prefix="segmenter-soak-") as tmp:
        soak = Soak(Path(tmp), rng)
        try:
            for i in range(len(soak.procs)):
                soak.start(i)
            shoppers = LiveShoppers(soak.s, users, rate, seed, int(rate * duration * 1.2) + 1)
            started = time.monotonic()
            shoppers.start()
            plan = _schedule(rng, duration)
            next_sample = started
            while time.monotonic() - started < duration:
                now = time.monotonic()
                if plan and now - started >= plan[0][0]:
                    soak.do(plan.pop(0)[1])
                if now >= next_sample:
                    soak.sample(started)
                    next_sample += 60
                soak.restart_dead()
                time.sleep(1.0)
            shoppers.stop_flag.set()
            shoppers.join(700)
            soak.note("producer stopped", f"{shoppers.expected.sent} events sent")
            watcher = OffsetWatcher(soak.s, PARTITIONS)
            ends = watcher.ends()
            deadline = time.monotonic() + 900
            while not all(watcher.committed()[tp] >= e for tp, e in ends.items()):
                if time.monotonic() > deadline:
                    raise StackError("the group did not drain within 15 minutes")
                soak.restart_dead()
                time.sleep(1.0)
            watcher.close()
            drained = time.monotonic() - started - duration
            soak.sample(started)
            for p in soak.procs:
                if p is not None:
                    p.stop()
            counts = _counts(soak.s, soak.redis.port, shoppers.expected)
            changes, duplicates, twice = _changes(soak.s)
            logs = "".join(
                (Path(tmp) / f"segmenter-{i}.log").read_text(errors="replace") for i in (0, 1)
            )
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                for i in (0, 1):
                    shutil.copy(Path(tmp) / f"segmenter-{i}.log", keep_logs)
        finally:
            soak.stop()
    return {
        "minutes": minutes,
        "rate": rate,
        "users": users,
        "seed": seed,
        "sent": shoppers.expected.sent,
        "delivery_failures": shoppers.expected.failed,
        "acknowledged": sum(sum(c.values()) for c in shoppers.expected.counts.values()),
        "drain_s": round(drained, 1),
        "counts": counts,
        "changes": changes,
        "duplicate_change_ids": duplicates,
        "duplicated_changes": twice,
        "gaps_found": logs.count("Redis holds less than the consumer group committed"),
        "rebuilds": logs.count("rebuilt Redis from Kafka"),
        "batches_retried": logs.count("batch not committed"),
        "faults": soak.log,
        "samples": soak.samples,
    }


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _cell(text: str) -> str:
    """A detail fit for one table cell: what it says first (up to a colon) and the last
    line of the log excerpt after it, pipes escaped.

    >>> _cell("process 1 exited with code 1: ...(after 0ms)\\n2026 ERROR it | stopped\\n")
    'process 1 exited with code 1: 2026 ERROR it \\\\| stopped'
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    cell = lines[0] if len(lines) == 1 else f"{lines[0].split(': ', 1)[0]}: {lines[-1]}"
    return cell.replace("|", "\\|")


def render(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    exact = c["wrong"] == 0 and c["missing"] == 0 and c["counted"] == doc["acknowledged"]
    lines = [
        f"# Soak run, {datetime.now(UTC).date().isoformat()}",
        "",
        f"{doc['minutes']:g} minutes of live events at {doc['rate']:g} events/s from "
        f"{doc['users']:,} simulated shoppers (seed {doc['seed']}), two `segmenter run` "
        "processes, Apache Kafka and Redis with a replica on loopback (`loadtest/soak.py`).",
        "",
        "| check | result |",
        "|---|---|",
        f"| events acknowledged by the broker | {doc['acknowledged']:,} of {doc['sent']:,} sent "
        f"({doc['delivery_failures']} delivery failures) |",
        f"| events counted in Redis | {c['counted']:,} |",
        f"| users with exact counts | {c['users'] - c['wrong'] - c['missing']:,} of {c['users']:,} "
        f"({c['wrong']} wrong, {c['missing']} missing) |",
        f"| exact per-user counts | {'yes' if exact else 'no'} |",
        f"| changes on segments.changes | {doc['changes']:,} |",
        f"| duplicate change ids | {doc['duplicate_change_ids']} |",
        f"| gaps found in Redis / rebuilds finished | {doc['gaps_found']} / {doc['rebuilds']} |",
        f"| batches retried (outages, kills) | {doc['batches_retried']} |",
        f"| drained after the producer stopped | {doc['drain_s']} s |",
        "",
        "## Faults",
        "",
        "| at (UTC) | fault | detail |",
        "|---|---|---|",
        *(f"| {f['at']} | {f['fault']} | {_cell(f.get('detail', ''))} |" for f in doc["faults"]),
        "",
        "## Memory, sampled every minute",
        "",
        "| minute | RSS of each process (MiB) | Redis used_memory (MiB) | user keys |",
        "|---:|---|---:|---:|",
        *(
            f"| {s['minute']} | {', '.join(_mib(r) for r in s['rss_bytes'])} | "
            f"{_mib(s['redis_used_memory'])} | {s['redis_user_keys']:,} |"
            for s in doc["samples"]
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=300.0, help="events/s")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", help="output directory (default: loadtest/results/<UTC date>)")
    ap.add_argument("--logs", help="keep the segmenter processes' logs in this directory")
    args = ap.parse_args(argv)
    ap_logs = Path(args.logs) if args.logs else None
    doc = run(args.minutes, args.rate, args.users, args.seed, ap_logs)
    out = Path(args.out or ROOT / "loadtest" / "results" / datetime.now(UTC).date().isoformat())
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    (out / "soak.md").write_text(render(doc))
    print(render(doc))
    c = doc["counts"]
    ok = not c["wrong"] and not c["missing"] and not doc["duplicate_change_ids"]
    return 0 if ok and c["counted"] == doc["acknowledged"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
