"""The local stack (``python -m loadtest.dev devstack up|down|status``), remembered in a
state file."""

from __future__ import annotations

from pathlib import Path

import orjson

from loadtest.devstack import servers
from loadtest.devstack.servers import Server
from stream.errors import DevstackError

STATE_FILE = "stack.json"


def _state_path(root: Path) -> Path:
    return root / STATE_FILE


def read(root: Path) -> dict[str, Server]:
    path = _state_path(root)
    if not path.exists():
        return {}
    raw = orjson.loads(path.read_bytes())
    return {role: Server(**d) for role, d in raw.items()}


def _write(root: Path, stack: dict[str, Server]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _state_path(root).write_bytes(
        orjson.dumps({k: v.to_dict() for k, v in stack.items()}, option=orjson.OPT_INDENT_2)
    )


def up(
    root: Path,
    broker: str = "auto",
    kafka_port: int | None = 9092,
    redis_port: int | None = 6379,
) -> dict[str, Server]:
    """Start Redis and a broker (unless already running); return the running stack."""
    stack = {k: v for k, v in read(root).items() if v.alive()}
    try:
        if "redis" not in stack:
            port = redis_port if redis_port and not servers.port_open(redis_port) else None
            stack["redis"] = servers.start_redis(root / "redis", port, persistent=True)
        if "broker" not in stack:
            port = kafka_port if kafka_port and not servers.port_open(kafka_port) else None
            stack["broker"] = servers.start_broker(root / "broker", port, broker)
    finally:
        _write(root, stack)
    return stack


def down(root: Path) -> list[str]:
    """Stop every server of the stack by PID; return what was stopped."""
    stopped = []
    for role, server in read(root).items():
        if server.stop():
            stopped.append(f"{role} ({server.kind}, pid {server.pid})")
    path = _state_path(root)
    if path.exists():
        path.unlink()
    return stopped


def require(root: Path) -> dict[str, Server]:
    stack = {k: v for k, v in read(root).items() if v.alive()}
    if "redis" not in stack or "broker" not in stack:
        raise DevstackError("the local stack is not running; start it with: make up")
    return stack
