"""Two processes and a retired segment: every change published once, nobody left behind.

Two `segmenter run` processes share one group. One syncs its model often, the other
rarely, so when a segment is retired the second keeps deciding users with the older
version (which still has the segment) for several seconds, including users whose input
partitions it owns and whom the retirement queued to move. A refit to four segments and a
rollback to the three-segment version make the retirement, with `segmenter model`, as an
operator would. Optionally the slow process is killed with SIGKILL right after the
retirement and started again (a rebalance each way).

Read back with ``read_committed``: no change id twice; each user's changes chain
(``previous_segment`` of one is the ``segment`` of the one before, the first from
``null``); each user's last change is their segment in Redis; no user is in a segment
the newest model lacks, and the retired segments' membership sets are empty.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from loadtest.devstack import servers
from state.redis_store import RedisStore
from stream.settings import Settings
from tests.integration.conftest import cli, produce, spawn, stop_gracefully
from tests.integration.shoppers import make_events
from tests.integration.test_faults import chain_breaks, check_exact, wait_committed
from tests.integration.test_shared_model import scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The slow process syncs its model this rarely: it lags every publication by up to this.
SLOW_SYNC_S = 6.0


def wait_queue_empty(store: RedisStore, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while store.queue_length() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.queue_length() == 0, "users still queued to move"


@pytest.mark.parametrize("kill", [False, True], ids=["no-kill", "sigkill"])
def test_a_retired_segment_with_a_process_on_the_older_version(
    txn_settings: Settings, rds: redis.Redis, tmp_path: Path, kill: bool
) -> None:
    s = txn_settings.replace(
        n_clusters=3,
        model_sync_interval_s=0.5,
        model_publish_interval_s=1.0,
        catalogue_interval_s=1.0,
    )
    messages, expected = make_events(s, n_users=1000, seed=41)
    random.Random(5).shuffle(messages)
    n = len(messages)
    waves = [messages[: n * 2 // 5], messages[n * 2 // 5 : n * 3 // 5]]
    waves += [messages[n * 3 // 5 : n * 4 // 5], messages[n * 4 // 5 :]]
    fast = s.replace(instance_id="fast", metrics_port=servers.free_port())
    slow = s.replace(
        instance_id="slow",
        metrics_port=servers.free_port(),
        model_sync_interval_s=SLOW_SYNC_S,
        model_sync_updates=10**6,
    )
    store = RedisStore.from_settings(s)
    procs: list[tuple[Settings, subprocess.Popen[bytes]]] = [
        (fast, spawn(fast, str(tmp_path / "fast.log"))),
        (slow, spawn(slow, str(tmp_path / "slow.log"))),
    ]
    try:
        ends = produce(s, waves[0])
        wait_committed(s, ends)
        before = store.load_model()
        assert before is not None and before.ready and len(before.ids) == 3
        time.sleep(SLOW_SYNC_S + 1)  # both on the three-segment model

        # A refit to four segments: at least one is born. Users arriving next join it.
        out = cli(s.replace(n_clusters=4), "model", "refit")
        assert out.returncode == 0, out.stderr
        time.sleep(SLOW_SYNC_S + 1)
        for key, end in produce(s, waves[1]).items():
            ends[key] = max(ends.get(key, 0), end)
        wait_committed(s, ends)
        refitted = store.load_model()
        assert refitted is not None
        born = sorted(set(refitted.ids) - set(before.ids))
        assert born, refitted.ids
        in_born = sum(rds.scard(f"{s.redis_prefix}segment:{{{i}}}:members") for i in born)
        assert in_born > 0, "nobody joined the new segment: the test would show nothing"

        # Roll back to the three-segment version: the born segments retire. The slow
        # process keeps the four-segment model for up to SLOW_SYNC_S while events arrive.
        kept = [v["version"] for v in store.model_versions() if v["segments"] == list(before.ids)]
        out = cli(s, "model", "rollback", str(max(kept)))
        assert out.returncode == 0, out.stderr
        queued = int(re.search(r"(\d+) users queued to move", out.stdout).group(1))  # type: ignore[union-attr]
        assert queued > 0  # the born segments' members (and any re-seeded since)
        for key, end in produce(s, waves[2]).items():
            ends[key] = max(ends.get(key, 0), end)
        if kill:
            time.sleep(1.0)
            procs[1][1].send_signal(signal.SIGKILL)
            procs[1][1].wait(10)
            time.sleep(3.0)  # the fast process takes every partition over ...
            procs.append((slow, spawn(slow, str(tmp_path / "slow.log"))))  # ... and back
        wait_committed(s, ends)
        time.sleep(SLOW_SYNC_S + 1)  # both on the newest version
        wait_queue_empty(store)
        for key, end in produce(s, waves[3]).items():
            ends[key] = max(ends.get(key, 0), end)
        wait_committed(s, ends)
        wait_queue_empty(store)
        republished = sum(
            scrape(own).get("segmenter_republished_changes_total", 0.0)
            for own, proc in procs
            if proc.poll() is None
        )
    finally:
        for own, proc in procs:
            if proc.poll() is None:
                assert stop_gracefully(own, proc) == 0
    newest = store.load_model()
    assert newest is not None
    store.close()
    # The rollback retired every segment the refit gave birth to (the model may have
    # re-seeded a dead centre since, retiring more).
    assert not set(born) & set(newest.ids)
    figures = check_exact(s, rds, expected)
    assert figures["counted"] == len(messages)
    print(
        f"\nretired segment {'with' if kill else 'without'} SIGKILL: {len(messages)} events, "
        f"{queued} users queued to move, committed changes {figures['changes']}, change ids "
        f"seen twice {figures['duplicates']}, users left in retired segments "
        f"{figures['in_retired']}, broken chains {figures['broken_chains']}, republished "
        f"{republished:.0f} (by the processes still running)"
    )
    assert figures["in_retired"] == 0


def test_a_broken_chain_is_caught() -> None:
    msgs = [
        {"user_id": "u", "previous_segment": None, "segment": 1},
        {"user_id": "u", "previous_segment": 1, "segment": 2},
        {"user_id": "v", "previous_segment": None, "segment": 0},
        {"user_id": "u", "previous_segment": 1, "segment": 3},
    ]
    assert chain_breaks(msgs) == ["u"]
    assert chain_breaks(msgs[:3]) == []
