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


def test_inspect_explain_and_segments_read_what_the_run_wrote(
    settings: Settings, rds: redis.Redis, run_segmenter
) -> None:
    messages, _ = make_events(settings, n_users=80, seed=6)
    produce(settings, messages)
    running = run_segmenter(settings)
    running.wait(lambda st: st.messages >= len(messages))
    running.finish()
    env = env_of(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "consumers.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    segment = rds.hget(f"{settings.redis_prefix}user:{{user-0007}}", "segment")
    explained = cli("explain", "user-0007")
    assert explained.returncode == 0, explained.stderr
    assert f"segment {segment} (" in explained.stdout
    assert "<- current" in explained.stdout and "margin to the runner-up" in explained.stdout
    inspected = cli("inspect", "user-0007")
    assert inspected.returncode == 0 and f"segment                      {segment}" in (
        inspected.stdout
    )
    listed = cli("segments")
    assert listed.returncode == 0
    assert len([ln for ln in listed.stdout.splitlines() if ln[:2].strip().isdigit()]) == 4
    missing = cli("explain", "nobody")
    assert missing.returncode == 3
