"""`segmenter replay` of a JSON-lines and a CSV file, the segmenter over them, and both
reading examples against the result, on the real broker and Redis."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from consumers.replay import FIELDS
from examples import campaign_engine
from examples.recommendation_service import SegmentFeed, SegmentView
from loadtest.devstack.servers import Server
from stream.features import full_features
from stream.settings import Settings
from tests.integration.conftest import env_of, produce
from tests.integration.kafka_read import read_topic
from tests.integration.shoppers import Expected, make_events

pytestmark = pytest.mark.integration

N_USERS = 80
BAD_LINE = b'{"event_id": "half a line'


def shopper_events(settings: Settings, seed: int) -> tuple[list[dict[str, object]], dict]:
    messages, expected = make_events(settings, n_users=N_USERS, seed=seed)
    return [orjson.loads(value) for _, _, value in messages], expected


def replay(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", "replay", *args],
        env=env_of(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_to_end(run_segmenter, settings: Settings, n_messages: int):
    running = run_segmenter(settings)
    running.wait(lambda st: st.messages >= n_messages)
    return running.finish()


def redis_segments(rds: redis.Redis, settings: Settings) -> dict[str, int]:
    """User -> segment, from every user hash."""
    p = settings.redis_prefix
    out = {}
    for key in rds.scan_iter(match=f"{p}user:{{*}}", count=1000):
        if not key.endswith(":state"):
            out[key[len(f"{p}user:{{") : -1]] = int(rds.hget(key, "segment"))
    return out


def view_segments(view: SegmentView) -> dict[str, int]:
    return {user: held.segment for user, held in view.users.items()}


def follow_until_caught_up(feed: SegmentFeed, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not feed.caught_up():
        assert time.monotonic() < deadline, "the feed did not catch up"
        feed.poll(0.5)


def test_replayed_files_feed_both_examples(
    settings: Settings, rds: redis.Redis, broker: Server, run_segmenter, tmp_path: Path
) -> None:
    # Phase 1: JSON lines, with one line that is not an event, and a blank line.
    first, expected = shopper_events(settings, seed=21)
    lines = [orjson.dumps(e) for e in first]
    lines.insert(len(lines) // 2, BAD_LINE)
    lines.insert(10, b"")
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    done = replay(settings, str(jsonl))
    assert done.returncode == 0, done.stderr
    assert f"sent {len(first):,} events and 1 malformed line" in done.stdout
    assert f"line {len(first) // 2 + 2}: malformed: not JSON" in done.stderr
    purchases = sum(e["type"] == "purchase" for e in first)
    assert f"{purchases:,} to {settings.purchases_topic}" in done.stdout

    stats = run_to_end(run_segmenter, settings, len(first) + 1)
    assert stats.dead_letters == 1
    dead = read_topic(settings.kafka_bootstrap, settings.deadletter_topic)
    assert [(r.value, r.headers["reason"]) for r in dead] == [(BAD_LINE, b"not_json")]

    # The recommendation service bootstraps from segments.current: Redis's view exactly.
    feed = SegmentFeed(
        {"bootstrap.servers": settings.kafka_bootstrap},
        settings.changes_topic,
        settings.current_topic,
    )
    try:
        assert feed.bootstrap() == N_USERS
        assert view_segments(feed.view) == redis_segments(rds, settings)
        changes_before = len(read_topic(settings.kafka_bootstrap, settings.changes_topic))

        # Phase 2: CSV (more events of the same users), while the service follows.
        second, more = shopper_events(settings, seed=22)
        for uid, exp in more.items():
            expected[uid].counts.update(exp.counts)
            expected[uid].spend += exp.spend
        table = tmp_path / "events.csv"
        with table.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(FIELDS)
            w.writerows([e.get(name, "") for name in FIELDS] for e in second)
        done = replay(settings, str(table))
        assert done.returncode == 0, done.stderr
        assert f"sent {len(second):,} events and 0 malformed lines" in done.stdout
        stats = run_to_end(run_segmenter, settings, len(second))
        assert stats.dead_letters == 0

        follow_until_caught_up(feed)
        assert view_segments(feed.view) == redis_segments(rds, settings)
        changes = read_topic(settings.kafka_bootstrap, settings.changes_topic)
        # The segmenter was stopped during the bootstrap: every later change is newer.
        assert feed.view.stats["applied"] == len(changes) - changes_before
        if broker.kind == "kafka":
            # Followed from exactly where segments.changes ended. (Tansu reports the end of
            # a partition short, at its last record batch: those changes come again, and
            # are recognised as duplicates.)
            assert feed.view.stats["older"] == feed.view.stats["duplicate"] == 0
        assert feed.view.stats["applied"] > 0  # users moved: twice the events each

        # A tombstone on segments.current (what `segmenter forget` writes) erases a user.
        produce(settings, [(settings.current_topic, b"user-0003", None)])
        follow_until_caught_up(feed)
        assert feed.view.get("user-0003") is None
        assert "user-0003" not in view_segments(feed.view)
        assert len(feed.view.users) == N_USERS - 1
    finally:
        feed.close()

    # The whole of both topics through one view, the worst overlap there is: every change
    # is at most as new as what segments.current gave, so none applies.
    view = SegmentView()
    now_ms = int(time.time() * 1000)  # the tombstone's time: it was written after all changes
    for r in read_topic(settings.kafka_bootstrap, settings.current_topic):
        view.load(r.key.decode(), None if r.value is None else json.loads(r.value), now_ms)
    for r in changes:
        assert not view.apply(json.loads(r.value))
    assert view.stats["older"] + view.stats["duplicate"] == len(changes)
    assert view_segments(view) == {
        u: s for u, s in redis_segments(rds, settings).items() if u != "user-0003"
    }

    check_campaign_engine(settings, rds, expected)


def check_campaign_engine(
    settings: Settings, rds: redis.Redis, expected: dict[str, Expected]
) -> None:
    p = settings.redis_prefix
    catalogue = campaign_engine.read_catalogue(rds, p)
    biggest = max(catalogue.values(), key=lambda e: e["size"])
    segment = campaign_engine.resolve_segment(catalogue, biggest["name"])
    # A small page: several SSCAN rounds, each a pipelined round trip.
    got = {m.user_id: m for m in campaign_engine.members(rds, segment, p, page=7)}
    assert len(got) > 7
    assert set(got) == rds.smembers(f"{p}segment:{{{segment}}}:members")
    for uid, m in got.items():
        h = rds.hgetall(f"{p}user:{{{uid}}}")
        assert (m.segment, m.segment_name) == (segment, h["segment_name"])
        assert m.features == full_features(orjson.loads(h["features"]))
        exp = expected[uid]
        assert m.features["events_30d"] == sum(exp.counts.values())
        # A zero count is absent from the stored JSON, yet there, as 0, in the member's.
        for name, n in (("purchases_30d", "purchase"), ("searches_30d", "search")):
            assert m.features[name] == exp.counts[n]
        assert m.features["spend_30d"] == pytest.approx(exp.spend, abs=0.01)

    spends = sorted(expected[u].spend for u in got)
    threshold = spends[len(spends) // 2] + 0.005  # between two users' spends
    rich = {m.user_id for m in campaign_engine.within(got.values(), {"spend_30d": threshold})}
    assert rich == {u for u in got if expected[u].spend >= threshold}
    assert 0 < len(rich) < len(got)

    # The script itself: the segment by name, JSON lines out.
    kw = rds.connection_pool.connection_kwargs
    url = f"redis://{kw['host']}:{kw['port']}/0"
    args = ["--json", "--redis-url", url, "--prefix", p, "--min", f"spend_30d={threshold}"]
    done = subprocess.run(
        [sys.executable, "-m", "examples.campaign_engine", biggest["name"], *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["user_id"] for r in rows} == rich
    assert Counter(r["segment"] for r in rows) == Counter({segment: len(rich)})
    assert f"{len(rich)} users of segment {segment}" in done.stderr
