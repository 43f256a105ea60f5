"""The HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Health:
    """What the probes report: alive while the loop turns, ready once it consumes."""

    def __init__(self, stall_after_s: float = 60.0) -> None:
        self.stall_after_s = stall_after_s
        self.started = False
        self.last_loop = time.monotonic()
        self.reason = "starting"
        #: Input partitions being rebuilt from Kafka after Redis lost writes.
        self.rebuilding = 0

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_loop > self.stall_after_s
        return (not stalled, "consume loop stalled" if stalled else "ok")

    def ready(self) -> tuple[bool, str]:
        ok, why = self.alive()
        if not ok:
            return ok, why
        if self.rebuilding:
            return False, f"rebuilding {self.rebuilding} input partitions from Kafka"
        return (self.started, "ok" if self.started else self.reason)


def serve(
    host: str, port: int, registry: CollectorRegistry, health: Health
) -> tuple[ThreadingHTTPServer, Callable[[], None]]:
    """Serve metrics and probes on a daemon thread; returns the server and its stopper."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif path in ("/healthz", "/readyz"):
                ok, why = health.alive() if path == "/healthz" else health.ready()
                body, status, ctype = why.encode() + b"\n", 200 if ok else 503, "text/plain"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return server, stop
