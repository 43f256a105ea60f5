"""The benchmark suite: every measurement of the segmenter, side by side, in one command.

    python -m loadtest.suite            # the full run: 20-30 minutes on 2 idle cores
    python -m loadtest.suite --quick    # everything small: a smoke run of about 2 minutes

Parts, one after another, each on servers it starts and stops by PID:

1. on one stack, one backlog (default 1,000,000 events from 100,000 shoppers):

   - **ceiling** (:mod:`loadtest.ceiling`): one process only consuming the backlog, then
     consuming and ``orjson``-decoding it, then pipelined Redis writes of the same shape
     as the segmenter's;
   - **throughput**: one ``segmenter run`` process draining it
     (:func:`loadtest.bench_throughput.measure_processes`);
   - **redis_wait**: one process again, with a replica of the stack's Redis and
     ``SEGMENTER_REDIS_WAIT_REPLICAS=1``: what waiting for a replica costs;
   - **scaling**: two processes in one group draining it again, Redis emptied, the
     same way;
   - **peers** (:mod:`loadtest.peers`): the same job event by event, in a
     confluent-kafka loop, in Quix Streams and in a Bytewax dataflow (each from a
     virtual environment of its own, ``.venv-quix`` and ``.venv-bytewax``, created here:
     Quix Streams pins an older confluent-kafka than the project), and in micro-batches
     with pipelined Redis;

2. **latency** (:mod:`loadtest.latency`): end-to-end latency at fixed rates, on a stack
   of its own;
3. **memory** (:mod:`loadtest.memory`): RSS and Redis memory as users grow to a million,
   on a stack of its own, and again once the sweep after the backlog has settled.

Then it writes ``report.md``, ``report.json`` and the PNG plots to ``loadtest/out/``
(:mod:`loadtest.report`). A part that fails is reported as not run, with the reason, and
the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from consumers.app import tune_collector
from loadtest import bench_throughput, ceiling, hotpath, latency, memory, report
from loadtest.devstack import servers
from loadtest.peers import bytewax_flow, micro_batch, per_event, quix
from loadtest.peers import run as peers_run
from loadtest.peers.run import PeerOutcome
from loadtest.stack import Stack, StackError, local_stack
from stream.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "loadtest" / "out"
QUIX_VENV = ROOT / ".venv-quix"


@dataclass(frozen=True, slots=True)
class OwnVenvPeer:
    """A peer whose library lives in a virtual environment of its own."""

    name: str
    #: The environment, beside the project's.
    venv: Path
    #: What it installs besides the project.
    requirement: str
    #: The module its library is imported as (to check the environment works).
    module: str
    #: The peer's module in this project.
    peer_module: str


#: The peers run from their own environments, in the order they run.
OWN_VENV_PEERS = (
    OwnVenvPeer(quix.NAME, QUIX_VENV, "quixstreams>=3,<4", "quixstreams", "loadtest.peers.quix"),
    OwnVenvPeer(
        bytewax_flow.NAME,
        ROOT / ".venv-bytewax",
        "bytewax[kafka]>=0.21,<0.22",
        "bytewax",
        "loadtest.peers.bytewax_flow",
    ),
)
#: Why a part left out with ``--skip`` was not run.
SKIPPED = "skipped (--skip)"
#: Parts the backlog stack serves, in order.
BACKLOG_PARTS = ("ceiling", "throughput", "redis_wait", "scaling", "peers")


class SuiteError(RuntimeError):
    """A part could not be run (its reason goes into the report)."""


@dataclass(frozen=True, slots=True)
class SuiteConfig:
    """The suite's parameters.

    Attributes
    ----------
    users, events, partitions, batch
        The backlog of the ceiling, throughput, scaling and peers parts, its input
        partitions, and the segmenter's batch size.
    peer_events, peer_timeout_s
        Events each peer processes from the start of the backlog, and its time limit.
    rates, duration_s, warmup_s, live_users, sample_every, poll_ms
        The latency part (:func:`loadtest.latency.measure`).
    memory_users
        Distinct users of the memory part.
    broker
        ``auto`` (Apache Kafka if Java 17 is here, else Tansu), ``kafka`` or ``tansu``.
    """

    users: int = 100_000
    events: int = 1_000_000
    partitions: int = 4
    batch: int = 5000
    peer_events: int = 50_000
    peer_timeout_s: float = 900.0
    rates: tuple[float, ...] = latency.DEFAULT_RATES
    duration_s: float = 20.0
    warmup_s: float = 10.0
    live_users: int = 100_000
    sample_every: int = 50
    poll_ms: float = 5.0
    memory_users: int = 1_000_000
    broker: str = "auto"


#: ``--quick``: every part, small.
QUICK = SuiteConfig(
    users=10_000,
    events=100_000,
    peer_events=3_000,
    peer_timeout_s=300.0,
    rates=(2_000.0, 20_000.0),
    duration_s=5.0,
    warmup_s=3.0,
    live_users=20_000,
    memory_users=20_000,
)


# -- the machine ---------------------------------------------------------------------------


def cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` of ``/proc/cpuinfo`` text (``unknown`` without one).

    >>> cpu_model("processor : 0\\nmodel name\\t: AMD EPYC 7B13\\n")
    'AMD EPYC 7B13'
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def ram_gib(meminfo: str) -> float:
    """``MemTotal`` of ``/proc/meminfo`` text, GiB (0 without it).

    >>> round(ram_gib("MemTotal:       24683656 kB\\n"), 2)
    23.54
    """
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine(versions: dict[str, str]) -> report.Machine:
    """This machine, now, with the servers' ``versions`` (:meth:`Stack.versions`)."""
    return report.Machine(
        cores=os.cpu_count() or 0,
        cpu_model=cpu_model(_read("/proc/cpuinfo")),
        ram_gib=ram_gib(_read("/proc/meminfo")),
        python=platform.python_version(),
        platform=platform.platform(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        broker=versions.get("broker", "not started"),
        broker_version=versions.get("broker_version", "n/a"),
        redis_version=versions.get("redis_version", "n/a"),
    )


# -- running parts -------------------------------------------------------------------------


class Runner:
    """Runs parts one after another, recording each result, failure and duration."""

    def __init__(self, cfg: SuiteConfig, skip: set[str]) -> None:
        self.cfg = cfg
        self.skip = skip
        self.versions: dict[str, str] = {}
        self.results = report.SuiteResults(machine=machine({}), config=_config_doc(cfg))

    def part(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` as part ``name``; a failure is recorded as the part not run."""
        if name in self.skip:
            self.results.not_run[name] = SKIPPED
            return
        print(f"\n== {report.PARTS.get(name, name)}", flush=True)
        started = time.monotonic()
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            self.results.not_run[name] = _reason(exc)
            print(f"{name}: not run: {self.results.not_run[name]}", flush=True)
        finally:
            self.results.durations[name] = time.monotonic() - started

    @contextlib.contextmanager
    def stack(self, names: tuple[str, ...], prefix: str) -> Iterator[Stack | None]:
        """A stack for parts ``names``; if it cannot start, they are recorded as not run.

        Yields ``None`` when every one of ``names`` is skipped (no servers are started).
        """
        if all(n in self.skip for n in names):
            for n in names:
                self.results.not_run[n] = SKIPPED
            yield None
            return
        try:
            with local_stack(prefix, self.cfg.broker) as st:
                if not self.versions:
                    self.versions = st.versions()
                yield st
        except Exception as exc:
            traceback.print_exc()
            for n in names:
                if n not in self.results.not_run and n not in self.results.durations:
                    self.results.not_run[n] = f"its stack failed: {_reason(exc)}"

    def finish(self) -> report.SuiteResults:
        """The results, with the machine and the servers' versions."""
        self.results.machine = machine(self.versions)
        return self.results


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _config_doc(cfg: SuiteConfig) -> dict[str, Any]:
    doc = dataclasses.asdict(cfg)
    doc["rates"] = ", ".join(f"{r:,.0f}" for r in cfg.rates)
    return doc


def run(cfg: SuiteConfig, skip: set[str], quix_venv: Path = QUIX_VENV) -> report.SuiteResults:
    """Run every part not in ``skip`` (see the module) and return the results."""
    runner = Runner(cfg, skip)
    with runner.stack(BACKLOG_PARTS, "segmenter-suite-backlog-") as st:
        if st is not None:
            _backlog_parts(runner, st, quix_venv)
    with runner.stack(("latency",), "segmenter-suite-latency-") as st:
        if st is not None:
            _latency_part(runner, st)
    with runner.stack(("memory",), "segmenter-suite-memory-") as st:
        if st is not None:
            _memory_part(runner, st)
    runner.part("hotpath", lambda: _hotpath_part(runner))
    return runner.finish()


def _hotpath_part(runner: Runner) -> None:
    """The batch path's CPU per event, on the same backlog, with no servers."""
    cfg = runner.cfg
    messages = hotpath.backlog_messages(cfg.users, cfg.events)
    tune_collector()  # the garbage collector as ``segmenter run`` sets it
    runner.results.hotpath = hotpath.run(messages, cfg.batch)
    print(runner.results.hotpath.report(), flush=True)


def _backlog_parts(runner: Runner, st: Stack, quix_venv: Path) -> None:
    """Produce the backlog, then the ceiling, one and two processes, and the peers."""
    cfg, r = runner.cfg, runner.results
    s = st.settings(batch_max_events=cfg.batch)
    print(f"backlog: {cfg.events} events from {cfg.users} shoppers", flush=True)
    gen = bench_throughput.prepare_backlog(st, s, cfg.partitions, cfg.users, cfg.events)
    print(f"produced at {gen.events_per_s:,.0f} events/s", flush=True)
    n = gen.events_sent

    def ceiling_part() -> None:
        r.ceiling = ceiling.measure(s, st.redis_url(), cfg.users, n, cfg.batch)
        print(r.ceiling.describe())

    def processes(count: int) -> bench_throughput.ThroughputResult:
        result = bench_throughput.measure_processes(st, s, count, cfg.partitions, n)
        print(result.describe())
        return result

    def one() -> None:
        r.one = processes(1)

    def two() -> None:
        r.two = processes(2)

    def redis_wait() -> None:
        r.redis_wait = _with_replica(st, lambda: processes_with(s.replace(redis_wait_replicas=1)))

    def processes_with(settings: Settings) -> bench_throughput.ThroughputResult:
        result = bench_throughput.measure_processes(st, settings, 1, cfg.partitions, n)
        print(result.describe())
        return result

    runner.part("ceiling", ceiling_part)
    runner.part("throughput", one)
    runner.part("redis_wait", redis_wait)
    runner.part("scaling", two)
    runner.part("peers", lambda: _peers(runner, st, s, min(n, cfg.peer_events), quix_venv))


def _with_replica(
    st: Stack, measure: Callable[[], bench_throughput.ThroughputResult]
) -> bench_throughput.ThroughputResult:
    """``measure()`` with a replica of the stack's Redis running beside it, in sync first."""
    with tempfile.TemporaryDirectory(prefix="segmenter-replica-") as tmp:
        replica = servers.start_redis(
            Path(tmp), extra_args=("--replicaof", servers.HOST, str(st.redis.port))
        )
        try:
            client = redis.Redis(host=servers.HOST, port=replica.port)
            deadline = time.monotonic() + 60
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise StackError("the Redis replica did not connect within 60 s")
                time.sleep(0.2)
            client.close()
            return measure()
        finally:
            replica.stop()


def _latency_part(runner: Runner, st: Stack) -> None:
    cfg, r = runner.cfg, runner.results

    def measure() -> None:
        r.latency = latency.measure(
            st,
            cfg.rates,
            duration_s=cfg.duration_s,
            warmup_s=cfg.warmup_s,
            users=cfg.live_users,
            partitions=cfg.partitions,
            sample_every=cfg.sample_every,
            poll_ms=cfg.poll_ms,
        )

    runner.part("latency", measure)


def _memory_part(runner: Runner, st: Stack) -> None:
    cfg, r = runner.cfg, runner.results

    def measure() -> None:
        # Then on until the sweep after the backlog has settled: a state keeps its last
        # change until its next write, which that sweep makes, so the figures at drain and
        # settled differ by what users keep of their delivered changes.
        r.memory = memory.measure(st, cfg.memory_users, cfg.partitions, settle=True)

    runner.part("memory", measure)


def _peers(runner: Runner, st: Stack, s: Settings, n: int, quix_venv: Path) -> None:
    """The per-event and micro-batch peers here, the Quix Streams and Bytewax peers each
    from its own environment."""
    cfg, r = runner.cfg, runner.results
    r.peers += peers_run.measure(
        s,
        st.redis.address,
        [per_event.NAME, micro_batch.NAME],
        n,
        cfg.partitions,
        cfg.peer_timeout_s,
    )
    for peer in OWN_VENV_PEERS:
        venv = quix_venv if peer.name == quix.NAME else peer.venv
        if f"peer:{peer.name}" in runner.skip:
            r.not_run[f"peer:{peer.name}"] = SKIPPED
            continue
        try:
            r.peers.append(_own_venv_peer(dataclasses.replace(peer, venv=venv), st, s, n, cfg))
        except SuiteError as exc:
            r.peers.append(PeerOutcome(peer.name, None, error=str(exc)))
    for p in r.peers:
        if p.result is None:
            r.not_run[f"peer:{p.name}"] = p.error or "no result"


def peer_python(peer: OwnVenvPeer) -> Path:
    """The Python of ``peer.venv``, with the peer's library and this project in it.

    Created (``python -m venv``, then ``pip install`` of ``peer.requirement`` and this
    project, editable) unless it is there already and works.

    Raises
    ------
    SuiteError
        If it cannot be created (no registry, a dependency conflict, ...).
    """
    venv = peer.venv
    py = venv / "bin" / "python"
    probe = [str(py), "-c", f"import {peer.module}, {peer.peer_module}"]
    if py.exists() and _ok(probe):
        return py
    print(f"creating {venv} for the {peer.name} peer (once)", flush=True)
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", peer.requirement, "-e", str(ROOT)],
    ):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SuiteError(f"{' '.join(cmd[:4])} ...: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise SuiteError(f"{' '.join(cmd[:4])} ... failed: {' / '.join(tail)}")
    if not _ok(probe):
        raise SuiteError(f"{venv} was created but cannot import {peer.module} and the project")
    return py


def _ok(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _own_venv_peer(
    peer: OwnVenvPeer, st: Stack, s: Settings, n: int, cfg: SuiteConfig
) -> PeerOutcome:
    py = peer_python(peer)
    with tempfile.TemporaryDirectory(prefix=f"segmenter-{peer.name}-") as tmp:
        out = Path(tmp) / f"{peer.name}.json"
        cmd = [
            str(py),
            "-m",
            "loadtest.peers.run",
            "--bootstrap",
            s.kafka_bootstrap,
            "--redis",
            st.redis.address,
            "--peers",
            peer.name,
            "--peer-events",
            str(n),
            "--partitions",
            str(cfg.partitions),
            "--timeout",
            str(cfg.peer_timeout_s),
            "--json",
            str(out),
        ]
        try:
            subprocess.run(cmd, cwd=ROOT, timeout=cfg.peer_timeout_s + 300, check=False)
        except subprocess.TimeoutExpired:
            raise SuiteError(f"the {peer.name} peer ran past {cfg.peer_timeout_s:.0f}s") from None
        if not out.exists():
            raise SuiteError(f"the {peer.name} peer wrote no result (see its output above)")
        docs = orjson.loads(out.read_bytes())
    return PeerOutcome.from_dict(docs[0])


# -- writing -------------------------------------------------------------------------------


def write(results: report.SuiteResults, out_dir: Path) -> list[Path]:
    """Write the plots, ``report.md`` and ``report.json`` to ``out_dir``; return them.

    Without matplotlib the plots are left out, and the report says so.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        written = report.write_plots(results, out_dir)
    except ImportError as exc:
        results.not_run["plots"] = f"matplotlib is not installed ({exc}): pip install -e '.[bench]'"
        written = []
    md, js = out_dir / "report.md", out_dir / "report.json"
    md.write_text(report.render_markdown(results))
    js.write_bytes(report.to_json(results))
    return [md, js, *written]


def parse_args(argv: list[str] | None = None) -> tuple[SuiteConfig, argparse.Namespace]:
    """The command line, and the configuration it asks for.

    >>> cfg, args = parse_args(["--quick", "--memory-users", "5000"])
    >>> (cfg.events, cfg.memory_users, cfg.rates)
    (100000, 5000, (2000.0, 20000.0))
    """
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.suite",
        description="Every benchmark of the segmenter, side by side: ceiling, one and two "
        "processes, peers, latency at fixed rates, memory as users grow; writes "
        "loadtest/out/report.md, report.json and PNG plots.",
    )
    ap.add_argument("--quick", action="store_true", help="everything small (a smoke run)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes")
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default=None)
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[*report.PARTS, *(f"peer:{p.name}" for p in OWN_VENV_PEERS)],
        help="leave a part out (repeatable)",
    )
    ap.add_argument("--users", type=int, default=None, help="shoppers in the backlog")
    ap.add_argument("--events", type=int, default=None, help="events in the backlog")
    ap.add_argument("--peer-events", type=int, default=None, help="events each peer processes")
    ap.add_argument("--rates", type=latency.parse_rates, default=None, help="latency rates")
    ap.add_argument("--duration", type=float, default=None, help="measured s per rate")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up s per rate")
    ap.add_argument("--memory-users", type=int, default=None, help="users of the memory part")
    ap.add_argument("--quix-venv", type=Path, default=QUIX_VENV, help="Quix Streams' venv")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else SuiteConfig()
    given = {
        "users": args.users,
        "events": args.events,
        "peer_events": args.peer_events,
        "rates": tuple(args.rates) if args.rates else None,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "memory_users": args.memory_users,
        "broker": args.broker,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    if cfg.events <= cfg.batch:
        ap.error(f"--events must exceed the batch size ({cfg.batch})")
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every part ran, else 1."""
    cfg, args = parse_args(argv)
    # The latency observer is a thread: it must not wait 5 ms for the GIL to read a clock.
    sys.setswitchinterval(0.001)
    started = time.monotonic()
    results = run(cfg, set(args.skip), args.quix_venv)
    results.config = {
        "command": shlex.join(["python -m loadtest.suite", *(argv or sys.argv[1:])]),
        **results.config,
    }
    paths = write(results, args.out)
    print(f"\nsuite done in {time.monotonic() - started:.0f}s; wrote:")
    for p in paths:
        print(f"  {p}")
    for t in report.targets(results):
        print(f"  {t.target}: {t.measured} ({report.met_text(t.met)})")
    failed = [p for p, why in results.not_run.items() if not why.startswith(SKIPPED)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
