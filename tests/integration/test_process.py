"""`segmenter run` as a user runs it: a separate process, stopped by a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis

from stream.settings import Settings
from tests.integration.conftest import env_of, produce
from tests.integration.kafka_read import committed
from tests.integration.shoppers import make_events

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_batch_commits_and_exits_zero(
    settings: Settings, rds: redis.Redis, sig: signal.Signals
) -> None:
    messages, _ = make_events(settings, n_users=60, seed=5)
    ends = produce(settings, messages)
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumers.cli", "run"],
        env=env_of(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        key = f"{settings.redis_prefix}user:{{user-0059}}"
        deadline = time.monotonic() + 60
        while not rds.exists(key):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "segmenter processed nothing in 60 s"
            time.sleep(0.2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopped:" in out
    for topic in (settings.clicks_topic, settings.purchases_topic):
        want = {p: ends.get((topic, p), -1001) for p in range(4)}
        assert committed(settings.kafka_bootstrap, settings.group_id, topic, 4) == want
    assert rds.exists(f"{settings.redis_prefix}model")
