"""Two segmenter processes in one group share one model: same version, same segment ids.

Twins (two users with one identical event each) are produced to partitions owned by
different processes; each process decides its twin alone, and a twin pair decided at the
same model version must land in the same segment. (One event each, so both twins are
decided on the same features, with no earlier segment for hysteresis to hold on to.)
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Producer

from loadtest.devstack import servers
from stream.settings import Settings
from tests.integration.conftest import produce, spawn, stop_gracefully
from tests.integration.kafka_read import read_topic
from tests.integration.shoppers import make_events
from tests.integration.test_faults import wait_committed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def scrape(settings: Settings) -> dict[str, float]:
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(segmenter_\w+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def produce_twins(settings: Settings, users: range) -> dict[tuple[str, int], int]:
    """The first event of ``n_users`` template users twice: as ``a-<user>`` to partition 0
    and as ``b-<user>`` to partition 3 (the range assignor gives them to different members)."""
    firsts: dict[bytes, tuple[str, bytes, bytes]] = {}
    for msg in make_events(settings, n_users=users.stop, seed=77)[0]:
        firsts.setdefault(msg[1], msg)
    template = list(firsts.values())[users.start : users.stop]
    ends: dict[tuple[str, int], int] = {}

    def on_delivery(err: object, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None, err
        key = (msg.topic(), msg.partition())
        ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    for topic, _, value in template:
        ev = orjson.loads(value)
        for twin, part in (("a", 0), ("b", 3)):
            copy = {
                **ev,
                "user_id": f"{twin}-{ev['user_id']}",
                "event_id": f"{twin}-{ev['event_id']}",
            }
            p.produce(
                topic,
                orjson.dumps(copy),
                copy["user_id"].encode(),
                partition=part,
                on_delivery=on_delivery,
            )
            p.poll(0)
    assert p.flush(30) == 0
    return ends


def test_two_processes_converge_on_one_model(
    settings: Settings, rds: redis.Redis, tmp_path: Path
) -> None:
    # The watermark held a month back: every twin's features are then taken as of its own
    # event (the later of the two), not as of each process's view of the group's clock,
    # which may differ by a moment, so twins stay twins.
    s = settings.replace(
        watermark_lateness_s=30 * 86_400.0,
        model_sync_interval_s=0.5,
        model_publish_interval_s=2.0,
        catalogue_interval_s=1.0,
    )
    ends = produce(s, make_events(s, n_users=800, seed=21)[0])
    a_s = s.replace(instance_id="a", metrics_port=servers.free_port())
    b_s = s.replace(instance_id="b", metrics_port=servers.free_port())
    procs: list[tuple[Settings, subprocess.Popen[bytes]]] = [
        (a_s, spawn(a_s, str(tmp_path / "a.log"))),
        (b_s, spawn(b_s, str(tmp_path / "b.log"))),
    ]
    try:
        wait_committed(s, ends)
        # Three rounds, a few publications apart, so twins meet several model versions.
        for start in (0, 100, 200):
            ends.update(produce_twins(s, range(start, start + 100)))
            wait_committed(s, ends)
            time.sleep(2.5)
        time.sleep(2 * s.model_sync_interval_s + 1)  # idle: both adopt the newest version
        ma, mb = scrape(a_s), scrape(b_s)
    finally:
        for own, proc in procs:
            assert stop_gracefully(own, proc) == 0

    # Both processes merged their learning into the shared model, and both use its
    # newest version: the same centres and ids, exactly.
    assert ma['segmenter_model_syncs_total{outcome="merged"}'] >= 1
    assert mb['segmenter_model_syncs_total{outcome="merged"}'] >= 1
    assert ma["segmenter_model_version"] == mb["segmenter_model_version"]
    # The live quality gauges are exported.
    for m in (ma, mb):
        assert m["segmenter_model_segments"] == s.n_clusters
        assert 0.0 < m["segmenter_model_silhouette"] <= 1.0
        assert 0.0 < m["segmenter_segment_size_entropy"] <= 1.0
        assert 0.0 <= m["segmenter_segment_flap_ratio"] <= 1.0
    doc = orjson.loads(rds.get(f"{s.redis_prefix}model"))
    assert doc["version"] >= ma["segmenter_model_version"]

    first: dict[str, dict[str, object]] = {}
    for rec in read_topic(s.kafka_bootstrap, s.changes_topic):
        msg = orjson.loads(rec.value)
        if msg["previous_segment"] is None and msg["user_id"][:2] in ("a-", "b-"):
            first[msg["user_id"]] = msg
    same_version = agree = 0
    for u in range(300):
        a, b = first[f"a-user-{u:04d}"], first[f"b-user-{u:04d}"]
        assert a["features"] == b["features"]  # twins indeed
        if a["model_version"] == b["model_version"]:
            same_version += 1
            agree += a["segment"] == b["segment"]
    print(
        f"\ntwins decided at the same model version: {same_version} of 300, of which "
        f"{agree} in the same segment; model version {int(doc['version'])}, "
        f"segments {doc['ids']}"
    )
    assert same_version >= 100
    assert agree == same_version
    assert doc["version"] >= 2  # the twins were decided while versions moved on
