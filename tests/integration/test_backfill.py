"""Replaying last year's history into fresh topics is a backfill, not bad input."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
import redis

from consumers import topics
from stream.settings import Settings
from tests.integration.conftest import produce
from tests.integration.shoppers import make_events

pytestmark = pytest.mark.integration

YEAR_MS = 365 * 86_400_000


def test_last_years_events_give_the_features_and_segments_of_the_live_run(
    settings: Settings, rds: redis.Redis, run_segmenter
) -> None:
    live, expected = make_events(settings, n_users=300, seed=31, days=20)
    live.sort(key=lambda m: orjson.loads(m[2])["ts"])  # as they happened: oldest first

    back = settings.replace(
        group_id=settings.group_id + "-bf",
        redis_prefix="bf" + settings.redis_prefix,
        clicks_topic=settings.clicks_topic + "-bf",
        purchases_topic=settings.purchases_topic + "-bf",
        changes_topic=settings.changes_topic + "-bf",
        current_topic=settings.current_topic + "-bf",
        deadletter_topic=settings.deadletter_topic + "-bf",
    )
    topics.create_topics(
        topics.admin_client(back), {back.clicks_topic: (4, {}), back.purchases_topic: (4, {})}
    )
    history = []
    for topic, key, value in live:
        ev = orjson.loads(value)
        ev["ts"] -= YEAR_MS
        topic = back.purchases_topic if topic == settings.purchases_topic else back.clicks_topic
        history.append((topic, key, orjson.dumps(ev)))

    results = {}
    for s, messages in ((settings, live), (back, history)):
        produce(s, messages)
        # Room for the end-of-partition event of each of the 8 input partitions too.
        whole = len(messages) + 8
        running = run_segmenter(
            s.replace(batch_max_events=whole, batch_min_events=whole, batch_timeout_s=5.0)
        )
        n = len(messages)
        running.wait(lambda st, n=n: st.messages >= n)
        stats = running.finish()
        # One batch each (it waits, for up to 5 s, until all of it is ready), so both runs
        # cut the history the same way: an online model's learning depends on that cut.
        assert stats.batches == 1, f"the backlog arrived in {stats.batches} batches"
        assert stats.dead_letters == 0  # old event times are history, not bad input
        results[s.redis_prefix] = {
            uid: rds.hgetall(f"{s.redis_prefix}user:{{{uid}}}") for uid in expected
        }
    now_run, backfill = results[settings.redis_prefix], results[back.redis_prefix]
    for uid in expected:
        assert orjson.loads(backfill[uid]["features"]) == orjson.loads(now_run[uid]["features"])
    # Segment ids are labels; the grouping of users is what must agree.
    ari = adjusted_rand_index(
        [now_run[u]["segment"] for u in expected], [backfill[u]["segment"] for u in expected]
    )
    print(f"\nbackfill vs live: features identical for {len(expected)} users, ARI {ari:.3f}")
    assert ari >= 0.8


def adjusted_rand_index(a: list[str], b: list[str]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items."""

    def pairs(n: int) -> float:
        return n * (n - 1) / 2

    table = Counter(zip(a, b, strict=True))
    rows, cols = Counter(a), Counter(b)
    index = sum(pairs(n) for n in table.values())
    row_sum = sum(pairs(n) for n in rows.values())
    col_sum = sum(pairs(n) for n in cols.values())
    expected = row_sum * col_sum / pairs(len(a))
    top = (row_sum + col_sum) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)
