"""One event-time clock for the group: quiet customers move with no event of their own.

A 90-day history from 1997 (accepted as it is: no year floor by default) is fed in ten
waves of event time, as a live shop would send it. Lapsers stop after ten days; only the
other customers' events move the watermark on. The sweep re-decides them as their
timers come due, in transactions like any batch's, and their last change says why. Run
once as it is and once with SIGKILLs at random moments: every change is published once.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer

from consumers.app import Segmenter
from stream.events import parse_timestamp
from stream.settings import Settings
from tests.integration.conftest import produce, spawn, stop_gracefully
from tests.integration.kafka_read import read_topic
from tests.integration.lapses import DAY_MS, Totals, lapse_history
from tests.integration.test_faults import check_changes, wait_committed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = int(datetime(1997, 3, 3, tzinfo=UTC).timestamp() * 1000)
DAYS = 90


def event_time_settings(s: Settings) -> Settings:
    return s.replace(
        n_clusters=3,
        warmup_users=40,
        model_sync_interval_s=0.5,
        model_publish_interval_s=1.0,
        model_refit_min_interval_s=0.5,
        catalogue_interval_s=1.0,
        watermark_sync_interval_s=0.2,
        watermark_idle_s=3.0,
    )


def feed_in_waves(
    s: Settings,
    messages: list[tuple[str, bytes, bytes]],
    between: Any,
    waves: int = 10,
) -> None:
    """Produce the history in ``waves`` stretches of event time, each once the previous
    one is committed, calling ``between(i)`` after wave ``i`` was produced."""
    ends: dict[tuple[str, int], int] = {}
    step = DAYS * DAY_MS // waves
    for i in range(waves):
        lo, hi = START + i * step, START + (i + 1) * step
        wave = [m for m in messages if lo <= orjson.loads(m[2])["ts"] < hi]
        if i == waves - 1:
            wave = [m for m in messages if orjson.loads(m[2])["ts"] >= lo]
        for key, end in produce(s, wave).items():
            ends[key] = max(ends.get(key, 0), end)
        between(i)
        wait_committed(s, ends, timeout=180)
        time.sleep(1.0)  # the model syncs and refits, the sweep catches up


def check_history(s: Settings, rds: redis.Redis, totals: dict[str, Totals]) -> dict[str, Any]:
    """Exact totals, every change once and chained; return what the lapsers became."""
    p = s.redis_prefix
    for uid, t in totals.items():
        f = orjson.loads(rds.hget(f"{p}user:{{{uid}}}", "features"))  # type: ignore[arg-type]
        assert f.get("purchases_lifetime", 0) == t.orders, uid
        assert f.get("spend_lifetime", 0.0) == pytest.approx(t.spend, abs=0.01), uid
    figures = check_changes(s, rds, totals)  # type: ignore[arg-type]
    assert read_topic(s.kafka_bootstrap, s.deadletter_topic) == []  # 1997 is history
    catalogue = {int(k): orjson.loads(v) for k, v in rds.hgetall(f"{p}segments").items()}
    last: dict[str, dict[str, Any]] = {}
    quiet: set[str] = set()  # users moved at least once because they had gone quiet
    for rec in read_topic(s.kafka_bootstrap, s.changes_topic):
        msg = orjson.loads(rec.value)  # type: ignore[arg-type]
        last[msg["user_id"]] = msg  # one partition per user: in order
        if str(msg["explanation"]["reason"]).startswith(("no purchase for", "no activity")):
            quiet.add(msg["user_id"])
    names = {
        uid: catalogue[int(rds.hget(f"{p}user:{{{uid}}}", "segment"))]["name"]  # type: ignore[arg-type]
        for uid in totals
    }
    lapsers = [u for u, t in totals.items() if t.kind == "lapser"]
    by_time = [
        u
        for u in lapsers
        if last[u]["explanation"]["reason"]
        and parse_timestamp(last[u]["event_time"]) > totals[u].last_ms
    ]
    dormant = [u for u in lapsers if names[u] == "dormant"]
    buyers_dormant = [u for u, t in totals.items() if t.kind == "buyer" and names[u] == "dormant"]
    return {
        **figures,
        "lapsers": len(lapsers),
        "moved_by_time": len(by_time),
        "moved_for_quiet": len(quiet & set(lapsers)),
        "dormant": len(dormant),
        "buyers_dormant": len(buyers_dormant),
        "reasons": sorted({last[u]["explanation"]["reason"] for u in by_time})[:3],
        "segments": sorted({e["name"] for e in catalogue.values()}),
    }


def test_quiet_customers_move_to_dormant_with_no_event_of_their_own(
    txn_settings: Settings, rds: redis.Redis, tmp_path: Path
) -> None:
    s = event_time_settings(txn_settings)
    messages, totals = lapse_history(s, START, days=DAYS)
    proc = spawn(s, str(tmp_path / "segmenter.log"))
    try:
        feed_in_waves(s, messages, lambda i: None)
    finally:
        assert stop_gracefully(s, proc) == 0
    got = check_history(s, rds, totals)
    print(f"\nevent time, no kill: {len(messages)} events from 1997, {got}")
    # Every lapser moved with no event of their own, and the change says why.
    assert got["moved_by_time"] == got["lapsers"]
    assert got["dormant"] >= 0.9 * got["lapsers"]
    assert got["buyers_dormant"] == 0


def test_the_sweep_under_kill_minus_nine_publishes_each_change_once(
    txn_settings: Settings, rds: redis.Redis, tmp_path: Path
) -> None:
    s = event_time_settings(txn_settings.replace(batch_max_events=200))
    messages, totals = lapse_history(s, START, days=DAYS, seed=4)
    rng = random.Random(9)
    log = str(tmp_path / "segmenter.log")
    procs: list[subprocess.Popen[bytes]] = [spawn(s, log)]
    kills = 0

    def between(i: int) -> None:
        nonlocal kills
        if i in (2, 4, 6, 8):  # lapsers' timers come due from the second wave on
            time.sleep(rng.uniform(0.3, 2.0))
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait(10)
            kills += 1
            procs.append(spawn(s, log))

    try:
        feed_in_waves(s, messages, between)
    finally:
        assert stop_gracefully(s, procs[-1]) == 0
    got = check_history(s, rds, totals)
    text = Path(log).read_text()
    print(
        f"\nevent time, SIGKILL x{kills}: {len(messages)} events, {got}, "
        f"sweeps logged {text.count('swept ')}"
    )
    assert got["duplicates"] == 0 and got["broken_chains"] == 0
    assert got["moved_by_time"] == got["lapsers"]


def test_an_idle_partition_does_not_stall_the_watermark(
    settings: Settings, run_segmenter: Any
) -> None:
    s = settings.replace(watermark_idle_s=2.0, watermark_lateness_s=0.0)
    t0 = 1_700_000_000_000
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})

    def send(part: int, uid: str, ts: int, n: int) -> None:
        ev = {"event_id": f"{uid}-{n}", "user_id": uid, "type": "view", "ts": ts}
        p.produce(s.clicks_topic, orjson.dumps(ev), uid.encode(), partition=part)

    # Partition 3 has one early event, then nothing; the others go on for a day.
    send(3, "quiet-user", t0, 0)
    for n in range(300):
        for part in range(3):
            send(part, f"u{part}", t0 + n * 300_000, n)
    assert p.flush(30) == 0
    newest = t0 + 299 * 300_000
    running = run_segmenter(s)
    running.wait(lambda st: st.messages >= 901)
    deadline = time.monotonic() + 20
    while running.segmenter.watermark.value < newest and time.monotonic() < deadline:
        time.sleep(0.2)
    wm = running.segmenter.watermark.value
    running.finish()
    print(f"\nidle partition: watermark {wm - t0} ms past the quiet partition's event")
    # The slowest busy partition's newest event, not the quiet one's only event.
    assert wm == newest


def test_a_backlog_read_one_partition_after_another_does_not_run_the_watermark_ahead(
    settings: Settings,
) -> None:
    # A month of history on every partition, produced before the segmenter starts: the
    # consumer reads the small purchase partitions and one click partition's fetch after
    # another, so a partition can be read to the end while another is not read at all.
    s = settings.replace(batch_max_events=300, watermark_lateness_s=0.0, watermark_idle_s=1.0)
    t0 = 1_700_000_000_000
    p = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 20})
    step = 30 * DAY_MS // 1500
    for part in range(4):
        for n in range(1500):
            ev = {
                "event_id": f"c{part}-{n}",
                "user_id": f"u{part}-{n % 50}",
                "type": "view",
                "ts": t0 + n * step,
            }
            p.produce(s.clicks_topic, orjson.dumps(ev), ev["user_id"].encode(), partition=part)
        for n in range(0, 1500, 100):
            ev = {
                "event_id": f"p{part}-{n}",
                "user_id": f"u{part}-{n % 50}",
                "type": "purchase",
                "ts": t0 + n * step,
                "amount": 10.0,
            }
            p.produce(s.purchases_topic, orjson.dumps(ev), ev["user_id"].encode(), partition=part)
    assert p.flush(30) == 0
    newest = t0 + 1499 * step
    last_ts = {f"{s.clicks_topic}:{i}": newest for i in range(4)}
    last_ts.update({f"{s.purchases_topic}:{i}": t0 + 1400 * step for i in range(4)})

    seg = Segmenter(s)
    seg.start()
    seen: dict[str, int] = {}  # highest event time read so far per input partition
    ahead: list[tuple[int, dict[str, int]]] = []
    handle = seg.handle

    def handle_and_check(msgs: list[Any]) -> Any:
        for m in msgs:
            if m.error() is None:
                pos = f"{m.topic()}:{m.partition()}"
                seen[pos] = max(seen.get(pos, 0), orjson.loads(m.value())["ts"])
        out = handle(msgs)
        # Every one of the 8 partitions has a month to read: the watermark may not pass
        # one not read to its end yet (one read to its end goes idle, and may be passed).
        slowest = min(
            (seen.get(pos, 0) for pos, end in last_ts.items() if seen.get(pos, 0) < end),
            default=newest,
        )
        if seg.watermark.value > slowest:
            ahead.append((seg.watermark.value, dict(seen)))
        return out

    seg.handle = handle_and_check  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=lambda: seg.run(stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while seg.stats.messages < 6060 and time.monotonic() < deadline:
            time.sleep(0.2)
        deadline = time.monotonic() + 20
        while seg.watermark.value < newest and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(60)
        seg.close()
    assert seg.stats.messages == 6060
    print(
        f"\nbacklog: {seg.stats.batches} batches; watermark ahead of a partition in "
        f"{len(ahead)}; final watermark {(seg.watermark.value - t0) / DAY_MS:.2f} days in"
    )
    assert ahead == []
    assert seg.watermark.value == newest  # read to the end, the clock reaches the newest


def test_a_refit_keeps_the_ids_of_groups_that_did_not_change(
    settings: Settings, rds: redis.Redis, run_segmenter: Any
) -> None:
    s = event_time_settings(settings).replace(model_refit_interval_days=3.0, n_clusters=3)
    start = 1_600_000_000_000
    messages, totals = lapse_history(s, start, n_per_kind=50, days=30, lapse_after=30)
    running = run_segmenter(s)
    docs = []
    sent = 0
    for day in range(3, 34, 3):  # three days of event time at a time, as they happen
        wave = [m for m in messages if day - 3 <= (orjson.loads(m[2])["ts"] - start) / DAY_MS < day]
        produce(s, wave)
        sent += len(wave)
        running.wait(lambda st, n=sent: st.messages >= n)
        time.sleep(1.0)  # syncs, and a refit when one is due
        docs.append(orjson.loads(rds.get(f"{s.redis_prefix}model")))  # type: ignore[arg-type]
    running.finish()
    assert sent == len(messages) and len(totals) == 150
    # From day 15 on the three groups are what they will stay (nobody lapses): refits
    # there make new centres in new epochs, and every segment keeps its id.
    before, doc = docs[4], docs[-1]
    later = [e for e in doc["events"] if e["version"] > before["version"]]
    refits = [e for e in later if "refit" in str(e.get("cause", ""))]
    print(f"\nrefit: ids {before['ids']} -> {doc['ids']}, {len(refits)} refits since: {later}")
    assert refits and all(e["event"] == "refit" for e in later)
    assert sorted(doc["ids"]) == sorted(before["ids"])
    assert doc["epoch"] > before["epoch"]
