"""The exact-count fault test once more, on a real three-node Redis Cluster."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from loadtest.devstack import servers
from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from stream.settings import Settings
from tests.integration.conftest import produce, spawn, stop_gracefully
from tests.integration.shoppers import make_events
from tests.integration.test_faults import check_exact, wait_committed, wait_settled
from tests.integration.test_user_states import check_states_round_trip

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    nodes = servers.start_redis_cluster(tmp_path_factory.mktemp("cluster"))
    yield nodes
    for node in nodes:
        node.stop()


def test_exact_counts_on_a_redis_cluster_through_kills(
    txn_settings: Settings, cluster: list[Server], tmp_path: Path
) -> None:
    s = txn_settings.replace(redis_url=f"redis://{cluster[0].address}/0", redis_cluster=True)
    rc = RedisCluster(host=servers.HOST, port=cluster[0].port, decode_responses=True)
    try:
        messages, expected = make_events(s, n_users=1200, seed=14)
        ends = produce(s, messages)
        rng = random.Random(9)
        for _ in range(2):
            proc = spawn(s, str(tmp_path / "segmenter.log"))
            time.sleep(rng.uniform(2.5, 4.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        final = spawn(s, str(tmp_path / "segmenter.log"))
        try:
            wait_committed(s, ends)
            # A refit may retire segments while a killed member still holds partitions:
            # their members move once the final process owns them (after the session
            # timeout), as in the single-server fault test.
            wait_settled(s, rc)  # type: ignore[arg-type]
        finally:
            assert stop_gracefully(s, final) == 0
        # Users really are spread over the three nodes.
        per_node = [
            int(n.get("db0", {}).get("keys", 0))
            for n in rc.info("keyspace", target_nodes=RedisCluster.PRIMARIES).values()
        ]
        assert len(per_node) == 3 and all(n > 100 for n in per_node), per_node
        figures = check_exact(s, rc, expected)  # type: ignore[arg-type]
    finally:
        rc.close()
    print(
        f"\nRedis Cluster, kill -9 x2: produced {len(messages)}, counted {figures['counted']}, "
        f"changes {figures['changes']}, duplicate change ids {figures['duplicates']}, "
        f"keys per node {per_node}"
    )
    assert figures["counted"] == len(messages)


def test_timer_scripts_run_on_a_redis_cluster(cluster: list[Server]) -> None:
    # Each partition's index and buckets share a hash tag, so its scripts stay in one slot.
    store = RedisStore(f"redis://{cluster[0].address}/0", prefix="tc:", cluster=True)
    try:
        t = 1_700_000_000_000
        users = {f"u{i}": (i % 4, t + i * 1000) for i in range(200)}
        store.set_timers(users)
        assert store.timer_due({"u5": 1, "u6": 2}) == {"u5": t + 5000, "u6": t + 6000}
        due = store.due_users(range(4), t + 99_000, 1000)
        assert set(due) == {f"u{i}" for i in range(100)}
        assert store.timers_due_count(range(4), t + 99_000) == 100
        assert store.make_due(range(4), t) == 199
        assert len(store.due_users(range(4), t, 1000)) == 200
    finally:
        store.close()


def test_user_states_round_trip_on_a_redis_cluster(cluster: list[Server]) -> None:
    # A user's hash and state key share a hash tag; users spread over the three nodes.
    store = RedisStore(f"redis://{cluster[0].address}/0", prefix="us:", cluster=True)
    rc = RedisCluster(host=servers.HOST, port=cluster[0].port, decode_responses=True)
    try:
        check_states_round_trip(store, rc, "us:")
    finally:
        store.close()
        rc.close()
