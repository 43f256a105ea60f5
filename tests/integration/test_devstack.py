"""The local stack: servers start on loopback, are tracked by PID, and stop by PID."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from loadtest.devstack import servers, stack

pytestmark = pytest.mark.integration


def test_redis_starts_and_stops_by_pid(tmp_path: Path) -> None:
    server = servers.start_redis(tmp_path / "r")
    assert server.alive()
    assert redis.Redis(host=servers.HOST, port=server.port).ping()
    assert server.stop()
    assert not server.alive()
    assert not servers.port_open(server.port)
    assert not server.stop()  # stopping twice is harmless


def test_a_pid_running_something_else_is_never_signalled(tmp_path: Path) -> None:
    server = servers.start_redis(tmp_path / "r")
    try:
        impostor = servers.Server("redis", server.port, server.pid, "not-our-marker", "", "")
        assert not impostor.alive()
        assert not impostor.stop()
        assert server.alive()
    finally:
        server.stop()


def test_stack_up_status_down(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    running = stack.up(root, broker="tansu", kafka_port=None, redis_port=None)
    try:
        assert {k: v.alive() for k, v in running.items()} == {"redis": True, "broker": True}
        again = stack.up(root, broker="tansu", kafka_port=None, redis_port=None)
        assert {k: v.pid for k, v in again.items()} == {k: v.pid for k, v in running.items()}
    finally:
        stopped = stack.down(root)
    assert len(stopped) == 2
    assert all(not s.alive() for s in running.values())
    assert stack.read(root) == {}
