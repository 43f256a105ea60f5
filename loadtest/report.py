"""The benchmark suite's results, and their Markdown report, JSON dump and PNG plots.

:class:`SuiteResults` holds what one run of ``python -m loadtest.suite`` measured: each
part's result, or why the part was not run. Everything here but :func:`write_plots` is
pure (no I/O, no clock), so the report is a function of the results alone:

- :func:`render_markdown`: the report, with every segmenter figure as a ratio to the
  ceiling and to each peer (:func:`ratio_rows`) and the targets table (:func:`targets`);
- :func:`to_json`: the raw results plus the derived figures;
- :func:`write_plots`: latency percentiles against rate, RSS and Redis bytes per user
  against users, and throughput bars (matplotlib is imported there, and only there, so
  that the rest works without it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtest.bench_throughput import ThroughputResult
from loadtest.ceiling import CeilingResult
from loadtest.hotpath import STAGES, StageTimes
from loadtest.latency import LatencyResult, LatencyStep
from loadtest.memory import SETTLE_QUIET_S, MemoryResult
from loadtest.peers.run import PeerOutcome

#: The issue's targets, per process.
TARGET_EVENTS_PER_S = 100_000.0
TARGET_P99_MS = 250.0
TARGET_P99_RATE = 20_000.0
TARGET_BYTES_PER_USER = 1024.0
#: The live rate one process should keep up with (reported, with the highest it did).
GOAL_LIVE_RATE = 30_000.0
#: The segmenter over the micro-batch peer, same backlog, same run.
TARGET_PEER_RATIO = 3.0
#: CPU seconds of one core to re-decide a million users by the sweep.
TARGET_SWEEP_S_PER_MILLION = 20.0
#: Two processes' CPU per event at most this much over one process's.
TARGET_CPU_PER_EVENT_GROWTH = 0.10
#: RSS counts as bounded when it grows by less than this per user added (the issue gives
#: no number: 64 bytes is 64 MB per million users, a small fraction of a user's state).
RSS_BOUND_BYTES_PER_USER = 64.0

#: Parts of the suite, in the order they run, with their titles.
PARTS: dict[str, str] = {
    "ceiling": "Ceiling: consume, consume + orjson, Redis writes",
    "throughput": "Segmenter, one process, saturation",
    "scaling": "Segmenter, two processes in one group",
    "redis_wait": "Segmenter, one process, waiting for a Redis replica (WAIT)",
    "peers": "Peers doing the same job",
    "latency": "End-to-end latency at fixed rates",
    "memory": "RSS and Redis memory as users grow",
    "hotpath": "What bounds one process: CPU per event by stage, no I/O",
}


@dataclass(frozen=True, slots=True)
class Machine:
    """Where the suite ran: hardware, software, servers, and when."""

    cores: int
    cpu_model: str
    ram_gib: float
    python: str
    platform: str
    date: str
    broker: str
    broker_version: str
    redis_version: str


@dataclass
class SuiteResults:
    """One run of the suite.

    Attributes
    ----------
    machine
        :class:`Machine`.
    config
        The suite's parameters (users, events, rates, ...), as given.
    ceiling, one, two, redis_wait, latency, memory, hotpath
        Each part's result; ``None`` when it was not run. ``redis_wait`` is one process
        with ``SEGMENTER_REDIS_WAIT_REPLICAS=1`` and a replica of the suite's Redis.
    peers
        One outcome per peer that was tried (failed ones included).
    not_run
        Part (or ``peer:<name>``) -> why it was not run, for parts that were not.
    durations
        Part -> seconds it took.
    """

    machine: Machine
    config: dict[str, Any] = field(default_factory=dict)
    ceiling: CeilingResult | None = None
    one: ThroughputResult | None = None
    two: ThroughputResult | None = None
    redis_wait: ThroughputResult | None = None
    latency: LatencyResult | None = None
    memory: MemoryResult | None = None
    hotpath: StageTimes | None = None
    peers: list[PeerOutcome] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def measured_peers(self) -> list[PeerOutcome]:
        """The peers that have a result."""
        return [p for p in self.peers if p.result is not None]


# -- arithmetic ----------------------------------------------------------------------------


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or ``None`` when either is missing or the reference is not
    positive (or either is not finite).

    >>> ratio(50.0, 200.0)
    0.25
    >>> ratio(1.0, 0.0) is None, ratio(None, 2.0) is None
    (True, True)
    """
    if value is None or reference is None:
        return None
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return None
    return value / reference


def fmt_ratio(r: float | None) -> str:
    """A ratio as people read it: ``0.42x``, ``12x``, or ``n/a``.

    >>> fmt_ratio(0.4234), fmt_ratio(12.34), fmt_ratio(None)
    ('0.42x', '12x', 'n/a')
    """
    if r is None:
        return "n/a"
    return f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"


def fmt_num(x: float | None, digits: int = 0) -> str:
    """A number with thousands separators; ``n/a`` for none, ``inf`` for infinity.

    >>> fmt_num(123456.7), fmt_num(0.1234, 2), fmt_num(None), fmt_num(float("inf"))
    ('123,457', '0.12', 'n/a', 'inf')
    """
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:,.{digits}f}"


def fmt_ms(x: float | None, timeout_s: float) -> str:
    """A latency in ms; an infinite one (a sample never seen) as ``> <timeout>``.

    >>> fmt_ms(12.34, 10), fmt_ms(float("inf"), 10), fmt_ms(None, 10)
    ('12', '> 10,000', 'n/a')
    """
    if x is not None and math.isinf(x):
        return f"> {timeout_s * 1000:,.0f}"
    return fmt_num(x)


def references(results: SuiteResults) -> list[tuple[str, float]]:
    """What segmenter rates are divided by: each ceiling rate and each measured peer's.

    Returns ``(label, events/s)`` pairs; a part not run has none.
    """
    refs: list[tuple[str, float]] = []
    c = results.ceiling
    if c is not None:
        refs += [
            ("ceiling: consume", c.consume.per_s),
            ("ceiling: consume + orjson", c.consume_decode.per_s),
            ("ceiling: Redis fenced writes", c.redis_fenced.per_s),
        ]
    for p in results.measured_peers():
        assert p.result is not None
        refs.append((f"peer: {p.name}", p.result.events_per_s))
    return refs


@dataclass(frozen=True, slots=True)
class RatioRow:
    """One segmenter figure and its ratio to each reference."""

    figure: str
    value: float
    unit: str
    ratios: list[tuple[str, float | None]]


def ratio_rows(results: SuiteResults) -> list[RatioRow]:
    """Every segmenter rate divided by every reference rate (:func:`references`).

    Rows: one process at saturation, two processes, and each fixed rate of the latency
    part (the rate sustained: there, the ratio says what share of the ceiling the load
    was, and above 1 against a peer that the peer could not have kept up).
    """
    refs = references(results)
    rows: list[RatioRow] = []

    def row(figure: str, value: float, unit: str = "events/s") -> None:
        rows.append(RatioRow(figure, value, unit, [(n, ratio(value, r)) for n, r in refs]))

    if results.one is not None:
        row("segmenter, 1 process, saturation", results.one.events_per_s)
    if results.two is not None:
        row("segmenter, 2 processes, saturation", results.two.events_per_s)
    if results.latency is not None:
        for step in results.latency.steps:
            row(
                f"segmenter at a fixed {fmt_num(step.rate)}/s (p99 "
                f"{fmt_ms(step.p99_ms, results.latency.timeout_s)} ms)",
                step.achieved,
            )
    return rows


def memory_ratio_rows(results: SuiteResults) -> list[RatioRow]:
    """The segmenter's Redis bytes per user divided by each measured peer's."""
    refs = [
        (f"peer: {p.name}", p.bytes_per_user)
        for p in results.measured_peers()
        if p.bytes_per_user is not None
    ]
    rows = []
    if results.one is not None:
        rows.append(
            RatioRow(
                f"segmenter, {fmt_num(results.one.users)} users of the backlog",
                results.one.redis_bytes_per_user,
                "bytes/user",
                [(n, ratio(results.one.redis_bytes_per_user, r)) for n, r in refs],
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue and what the run measured against it."""

    target: str
    measured: str
    met: bool | None  # None: not measured


def _within_p99(step: LatencyStep) -> bool:
    p99 = step.p99_ms
    return p99 is not None and p99 <= TARGET_P99_MS


def cpu_us_per_event(r: ThroughputResult | None) -> float | None:
    """CPU microseconds of the segmenter process(es) per event of the timed span.

    >>> cpu_us_per_event(None) is None
    True
    """
    return None if r is None else r.cpu_us_per_event().get("segmenter")


def cpu_per_event_growth(results: SuiteResults) -> float | None:
    """Two processes' CPU per event over one process's, less 1 (``None`` unless both ran)."""
    one, two = cpu_us_per_event(results.one), cpu_us_per_event(results.two)
    if one is None or two is None or not one:
        return None
    return two / one - 1.0


def targets(results: SuiteResults) -> list[Target]:
    """The issue's targets, each with the measured figure and whether it is met."""
    out: list[Target] = []
    one = results.one
    out.append(
        Target(
            f">= {fmt_num(TARGET_EVENTS_PER_S)} events/s per process",
            f"{fmt_num(one.events_per_s)} events/s (1 process, steady)" if one else "not run",
            None if one is None else one.events_per_s >= TARGET_EVENTS_PER_S,
        )
    )
    step = results.latency.step_at(TARGET_P99_RATE) if results.latency else None
    if step is None or results.latency is None:
        out.append(
            Target(
                f"p99 end-to-end <= {TARGET_P99_MS:.0f} ms at {fmt_num(TARGET_P99_RATE)} events/s",
                "not run" if results.latency is None else "rate not in this run",
                None,
            )
        )
    else:
        p99 = step.p99_ms
        out.append(
            Target(
                f"p99 end-to-end <= {TARGET_P99_MS:.0f} ms at {fmt_num(TARGET_P99_RATE)} events/s",
                f"{fmt_ms(p99, results.latency.timeout_s)} ms ({fmt_num(step.achieved)}/s sent, "
                f"{step.unobserved_share:.1%} of samples unobserved)",
                p99 is not None and p99 <= TARGET_P99_MS,
            )
        )
    kept = [st for st in (results.latency.steps if results.latency else []) if _within_p99(st)]
    best = max((st.rate for st in kept), default=None)
    out.append(
        Target(
            f"highest live rate with p99 <= {TARGET_P99_MS:.0f} ms (goal "
            f"{fmt_num(GOAL_LIVE_RATE)}/s)",
            "not run"
            if results.latency is None
            else (f"{fmt_num(best)}/s" if best is not None else "none of the rates tried"),
            None if results.latency is None else best is not None and best >= GOAL_LIVE_RATE,
        )
    )
    peer = next((p for p in results.measured_peers() if p.name == "micro_batch"), None)
    vs_peer = (
        ratio(one.events_per_s, peer.result.events_per_s) if one and peer and peer.result else None
    )
    out.append(
        Target(
            f">= {TARGET_PEER_RATIO:g}x the micro-batch peer (events/s, same backlog)",
            f"{vs_peer:.2f}x" if vs_peer is not None else "not run",
            None if vs_peer is None else vs_peer >= TARGET_PEER_RATIO,
        )
    )
    mem = results.memory
    at_most = mem.points[-1] if mem and mem.points else None
    per_user = at_most.redis_bytes_per_user if at_most else None
    settled = mem.settled if mem else None
    then = (
        f" ({fmt_num(settled.redis_bytes_per_user)} once the sweep settled)"
        if settled and settled.redis_bytes_per_user is not None
        else ""
    )
    out.append(
        Target(
            f"<= {fmt_num(TARGET_BYTES_PER_USER)} bytes of Redis memory per user at "
            f"{fmt_num(1_000_000)} users",
            f"{fmt_num(per_user)} bytes at {fmt_num(at_most.users)} users when drained{then}"
            if at_most and per_user is not None
            else "not run",
            # Judged only at a million users: fewer would flatter the fixed costs' share.
            None
            if at_most is None or per_user is None or at_most.users < 1_000_000
            else per_user <= TARGET_BYTES_PER_USER,
        )
    )
    hp = results.hotpath
    sweep_s = hp.sweep_us_per_user if hp and hp.swept_users else None
    out.append(
        Target(
            f"re-deciding {fmt_num(1_000_000)} users by the sweep: <= "
            f"{TARGET_SWEEP_S_PER_MILLION:.0f} s of one core",
            f"{sweep_s:.1f} s per million ({fmt_num(hp.swept_users)} users swept, no I/O)"
            if hp and sweep_s is not None
            else "not run",
            None if sweep_s is None else sweep_s <= TARGET_SWEEP_S_PER_MILLION,
        )
    )
    growth_cpu = cpu_per_event_growth(results)
    out.append(
        Target(
            f"two processes: CPU per event within {TARGET_CPU_PER_EVENT_GROWTH:.0%} of one process",
            "not run"
            if growth_cpu is None
            else f"{cpu_us_per_event(results.two):.1f} us vs {cpu_us_per_event(one):.1f} us "
            f"({growth_cpu:+.1%})",
            None if growth_cpu is None else growth_cpu <= TARGET_CPU_PER_EVENT_GROWTH,
        )
    )
    growth = mem.rss_growth_per_user if mem else None
    if mem is None or growth is None:
        out.append(Target("RSS bounded as users grow", "not run", None))
    else:
        first, last = mem.points[0], mem.points[-1]
        out.append(
            Target(
                f"RSS bounded as users grow (< {RSS_BOUND_BYTES_PER_USER:.0f} bytes per "
                "added user)",
                f"{first.rss_bytes / 2**20:.0f} MiB at {fmt_num(first.users)} users -> "
                f"{last.rss_bytes / 2**20:.0f} MiB at {fmt_num(last.users)} "
                f"({growth:+.1f} bytes per user)",
                growth < RSS_BOUND_BYTES_PER_USER,
            )
        )
    return out


# -- Markdown ------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table.

    >>> print("\\n".join(_table(["a", "b"], [["1", "2"]])))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def met_text(m: bool | None) -> str:
    """``yes``, ``no`` or ``not measured``.

    >>> met_text(True), met_text(False), met_text(None)
    ('yes', 'no', 'not measured')
    """
    return "not measured" if m is None else ("yes" if m else "no")


def _not_run(results: SuiteResults, part: str) -> list[str]:
    return [f"Not run: {results.not_run.get(part, 'no result')}", ""]


def render_markdown(results: SuiteResults) -> str:
    """The report, as Markdown (PNG plots are referenced by file name, same folder)."""
    m = results.machine
    out = [
        "# Segmenter benchmark report",
        "",
        f"Run on {m.date}: {m.cores} cores ({m.cpu_model}), {m.ram_gib:.1f} GiB RAM, "
        f"Python {m.python} on {m.platform}. Broker: {m.broker} ({m.broker_version}); "
        f"Redis {m.redis_version}. Every figure below was measured in this run; the "
        "broker, Redis, the load generator and the segmenter share the machine's cores.",
        "",
        "## Targets",
        "",
        *_table(
            ["target", "measured", "met"],
            [[t.target, t.measured, met_text(t.met)] for t in targets(results)],
        ),
        "",
    ]
    not_run = [(p, why) for p, why in results.not_run.items()]
    if not_run:
        out += ["Parts not run:", ""]
        out += [f"- {p}: not run: {why}" for p, why in not_run]
        out.append("")
    out += _ratios_section(results)
    out += _ceiling_section(results)
    out += _throughput_section(results)
    out += _peers_section(results)
    out += _latency_section(results)
    out += _memory_section(results)
    out += _hotpath_section(results)
    out += _config_section(results)
    return "\n".join(out).rstrip() + "\n"


def _ratios_section(results: SuiteResults) -> list[str]:
    out = [
        "## Ratios",
        "",
        "Each segmenter rate divided by each reference rate from this run. Against a "
        "ceiling, the ratio is the share of the I/O path's own speed the whole job "
        "reaches (the binding ceiling is the lowest one); against a peer, how many times "
        "faster the segmenter is. For the fixed-rate rows, it is the share of the "
        "ceiling the load was, and above 1 against a peer that the peer could not have "
        "kept up with it.",
        "",
    ]
    rows = ratio_rows(results)
    if not rows or not references(results):
        return [*out, "No ratios: the segmenter or every reference is missing.", ""]
    names = [n for n, _ in rows[0].ratios]
    out += _table(
        ["segmenter figure", "events/s", *(f"÷ {n}" for n in names)],
        [[r.figure, fmt_num(r.value), *(fmt_ratio(x) for _, x in r.ratios)] for r in rows],
    )
    out.append("")
    mem_rows = memory_ratio_rows(results)
    if mem_rows and mem_rows[0].ratios:
        names = [n for n, _ in mem_rows[0].ratios]
        out += _table(
            ["Redis memory", "bytes/user", *(f"÷ {n}" for n in names)],
            [[r.figure, fmt_num(r.value), *(fmt_ratio(x) for _, x in r.ratios)] for r in mem_rows],
        )
        out += [
            "",
            "The ceiling has no memory figure (its writes are deleted after timing); RSS "
            "and latency have no peer figure (the peers run in the suite's own process, "
            "and are too slow for the fixed rates).",
            "",
        ]
    return out


def _ceiling_section(results: SuiteResults) -> list[str]:
    out = [f"## {PARTS['ceiling']}", ""]
    c = results.ceiling
    if c is None:
        return out + _not_run(results, "ceiling")
    rows = [
        [
            r.what,
            fmt_num(r.per_s),
            fmt_num(r.users_per_s) if r.users else "",
            f"{r.cores:.2f}",
            f"{r.elapsed_s:.2f}",
        ]
        for r in (c.consume, c.consume_decode, c.redis_fenced, c.redis_plain)
    ]
    out += _table(["path", "events/s", "user writes/s", "CPU cores", "seconds"], rows)
    out += [
        "",
        f"One process, the segmenter's client settings, the same backlog. A Redis user "
        f"write stands for {c.events_per_update:.2f} events ({c.mean_users:.0f} distinct "
        f"users per {fmt_num(results.config.get('batch', 5000))}-event batch); each writes "
        f"{c.payload_fields} fields, {fmt_num(c.payload_bytes)} bytes (a user with "
        f"{c.history_events} events of history), {c.batch_users} users per pipeline.",
        "",
    ]
    return out


def _throughput_row(label: str, r: ThroughputResult) -> list[str]:
    return [
        label,
        fmt_num(r.events_per_s),
        fmt_num(r.events),
        f"{r.elapsed_s:.1f}",
        f"{r.cores:.2f}",
        fmt_num(r.backlog_events / r.wall_s) if r.wall_s > 0 else "n/a",
        f"{r.peak_rss_bytes / 2**20:.0f}",
        fmt_num(r.redis_bytes_per_user),
        _commands(r),
    ]


def _commands(r: ThroughputResult) -> str:
    """Redis commands per event, and script calls per event, as the table shows them."""
    per_event, scripts = r.redis_commands_per_event, r.redis_script_calls_per_event
    if per_event is None or scripts is None:
        return "n/a"
    return f"{per_event:.2f} ({scripts:.3f})"


_THROUGHPUT_HEADER = [
    "run",
    "events/s (steady)",
    "events timed",
    "seconds",
    "CPU cores",
    "events/s incl. start-up",
    "peak RSS MiB",
    "Redis bytes/user",
    "Redis commands/event (script calls)",
]


def _throughput_section(results: SuiteResults) -> list[str]:
    cfg = results.config
    out = [
        f"## {PARTS['throughput']}",
        "",
        f"`segmenter run` processes drain a backlog of {fmt_num(cfg.get('events'))} events "
        f"from {fmt_num(cfg.get('users'))} shoppers (the simulator's mix of searches, views, "
        f"clicks, carts and purchases) on {cfg.get('partitions', '?')} partitions per "
        "input topic. Steady: from the moment every process holds its partitions and the "
        "first 10 % of the backlog is committed (start-up, group join and the model's warm "
        "start happen in it) to the last batch, over the events committed in that span; "
        "the other rate column counts from the processes' start. Both runs drain the same "
        "backlog the same way, Redis emptied in between.",
        "",
    ]
    if results.one is None:
        out += _not_run(results, "throughput")
    else:
        out += _table(_THROUGHPUT_HEADER, [_throughput_row("1 process", results.one)])
        out.append("")
        out += _servers_cpu(results.one, results.machine.cores)
    out += _wait_section(results)
    out += [f"## {PARTS['scaling']}", ""]
    if results.two is None:
        out += _not_run(results, "scaling")
        return out
    rows = [_throughput_row("2 processes", results.two)]
    if results.one is not None:
        rows.insert(0, _throughput_row("1 process", results.one))
    out += _table(_THROUGHPUT_HEADER, rows)
    speedup = ratio(results.two.events_per_s, results.one.events_per_s if results.one else None)
    out += [
        "",
        f"Speed-up, steady: {fmt_ratio(speedup)}, on 2 cores shared with the broker and "
        "Redis: two processes cannot double anything here, so the target is on CPU per "
        f"event instead ({fmt_num(cpu_us_per_event(results.one))} us with one process, "
        f"{fmt_num(cpu_us_per_event(results.two))} us with two). Redis commands per event "
        "count every command Redis ran in the steady span, those the write scripts run "
        "included; in brackets, the script calls the segmenter sent.",
        "",
    ]
    return out


def _servers_cpu(r: ThroughputResult, cores: int) -> list[str]:
    """Where the machine's CPU went per event of the steady span, servers included."""
    per = r.cpu_us_per_event()
    if "broker" not in per or "redis" not in per:
        return []
    servers = per["broker"] + per["redis"]
    return [
        f"CPU per event over the steady span, by process: the segmenter "
        f"{per['segmenter']:.1f} µs, the broker {per['broker']:.1f} µs, Redis "
        f"{per['redis']:.1f} µs. The broker's share is its reads, the transactions and "
        f"the segment changes they publish. At {fmt_num(TARGET_EVENTS_PER_S)} events/s "
        f"the broker and Redis alone would keep {servers * TARGET_EVENTS_PER_S / 1e6:.2f} "
        f"cores busy, of this machine's {cores}.",
        "",
    ]


def _wait_section(results: SuiteResults) -> list[str]:
    out = [f"## {PARTS['redis_wait']}", ""]
    if results.redis_wait is None:
        return out + _not_run(results, "redis_wait")
    rows = [_throughput_row("1 process, WAIT for 1 replica", results.redis_wait)]
    if results.one is not None:
        rows.insert(0, _throughput_row("1 process", results.one))
    cost = ratio(results.redis_wait.events_per_s, results.one.events_per_s if results.one else None)
    return [
        *out,
        "The same backlog, Redis emptied first, with a replica of the suite's Redis started "
        "beside it (same machine) and `SEGMENTER_REDIS_WAIT_REPLICAS=1`: every batch waits "
        "until the replica acknowledged its writes before its offsets are committed.",
        "",
        *_table(_THROUGHPUT_HEADER, rows),
        "",
        f"With WAIT: {fmt_ratio(cost)} of the rate without it.",
        "",
    ]


def _peers_section(results: SuiteResults) -> list[str]:
    out = [
        f"## {PARTS['peers']}",
        "",
        f"Each peer processes the first {fmt_num(results.config.get('peer_events'))} events "
        "of the same backlog (`loadtest/peers/`): `per_event` is a confluent-kafka poll "
        "loop, one event at a time; `quix` a Quix Streams application, one event at a time "
        "(run from its own virtual environment, `.venv-quix`, as it pins an older "
        "confluent-kafka); `micro_batch` the job as a competent engineer writes it in a day: "
        "`consume()` batches, one pipelined Redis read and one write per batch, River "
        "`predict_one`/`learn_one` once per user per batch, flush then commit; `bytewax` a "
        "Bytewax dataflow (Kafka source, one step per event, Kafka sink; from "
        "`.venv-bytewax`), its clocks stopped at the last event measured.",
        "",
    ]
    rows = []
    for p in results.peers:
        if p.result is None:
            rows.append([p.name, f"not run: {p.error}", "", "", "", ""])
            continue
        r = p.result
        rows.append(
            [
                p.name,
                fmt_num(r.events_per_s),
                fmt_num(r.events),
                f"{r.elapsed_s:.1f}",
                f"{r.cpu_s / r.elapsed_s:.2f}" if r.elapsed_s > 0 else "n/a",
                fmt_num(p.bytes_per_user),
            ]
        )
    if not rows:
        return out + _not_run(results, "peers")
    out += _table(["peer", "events/s", "events", "seconds", "CPU cores", "Redis bytes/user"], rows)
    return [*out, ""]


def _latency_section(results: SuiteResults) -> list[str]:
    out = [f"## {PARTS['latency']}", ""]
    lat = results.latency
    if lat is None:
        return out + _not_run(results, "latency")
    out += [
        f"One `segmenter run` process; live events (event time = now) from "
        f"{fmt_num(lat.users)} simulated shoppers at each fixed rate, {lat.warmup_s:.0f} s "
        f"warm-up then {lat.duration_s:.0f} s measured. One event in {lat.sample_every} is "
        "timed from just before `produce()` until a Redis poll (every "
        f"{lat.poll_ms:.0f} ms) shows the user's hash with that event applied and a "
        f"segment. A sample not seen within {lat.timeout_s:.0f} s counts as infinitely "
        "late in the percentiles. Kept up: the consumer lag at the end of the window was "
        "under one second of input; drained: how long the input then took to be all "
        "committed, before the next rate. The segmenter's own columns come from its "
        "`/metrics` (mean batch duration, and the mean of its end-to-end histogram, "
        "Kafka timestamp to durable).",
        "",
    ]
    rows = [_latency_row(s, lat.timeout_s) for s in lat.steps]
    out += _table(
        [
            "rate asked",
            "sent/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "samples",
            "unobserved",
            "lag at end",
            "kept up",
            "drained in s",
            "segmenter cores",
            "batches",
            "mean batch ms",
            "segmenter's own mean ms",
        ],
        rows,
    )
    out += ["", "![latency](latency.png)", ""]
    return out


def _latency_row(s: LatencyStep, timeout_s: float) -> list[str]:
    return [
        fmt_num(s.rate),
        fmt_num(s.achieved),
        fmt_ms(s.p50_ms, timeout_s),
        fmt_ms(s.p95_ms, timeout_s),
        fmt_ms(s.p99_ms, timeout_s),
        fmt_ms(s.max_ms, timeout_s),
        fmt_num(s.samples),
        f"{s.unobserved_share:.1%}",
        fmt_num(s.lag_end),
        "yes" if s.kept_up else "no",
        fmt_num(s.drain_s, 1) if s.drain_s is not None else "not in time",
        f"{s.segmenter_cores:.2f}",
        fmt_num(s.batches),
        fmt_num(s.batch_ms),
        fmt_num(s.own_latency_ms),
    ]


def _memory_section(results: SuiteResults) -> list[str]:
    out = [f"## {PARTS['memory']}", ""]
    mem = results.memory
    if mem is None:
        return out + _not_run(results, "memory")
    out += [
        f"One `segmenter run` process drains a backlog of {fmt_num(mem.events)} events from "
        f"{fmt_num(mem.users)} distinct users (one or two each) in {mem.elapsed_s:.0f} s; "
        "its RSS (`VmRSS`) and Redis's `used_memory` are sampled every 0.1 s. RSS before "
        f"the first batch: {mem.baseline_rss_bytes / 2**20:.0f} MiB; peak: "
        f"{mem.peak_rss_bytes / 2**20:.0f} MiB.",
        "",
    ]
    rows = [
        [
            fmt_num(p.users),
            f"{p.elapsed_s:.1f}",
            f"{p.rss_bytes / 2**20:.1f}",
            fmt_num(p.redis_bytes_per_user),
        ]
        for p in mem.points
    ]
    out += _table(["users", "seconds", "RSS MiB", "Redis bytes/user"], rows)
    growth = mem.rss_growth_per_user
    out += [
        "",
        f"RSS growth from the first row to the last: {fmt_num(growth, 1)} bytes per added user.",
        "",
    ]
    if mem.settled is not None:
        st = mem.settled
        out += [
            "The rows are taken as the backlog is read. The process then ran on until the "
            "sweep after the backlog had re-decided everyone (no user swept for "
            f"{SETTLE_QUIET_S:.0f} s), as a state keeps its last change until its "
            f"next write: after {st.elapsed_s:.0f} s, RSS {st.rss_bytes / 2**20:.1f} MiB "
            f"and Redis {fmt_num(st.redis_bytes_per_user)} bytes per user.",
            "",
        ]
    out += [
        "![memory](memory.png)",
        "",
    ]
    return out


def _config_section(results: SuiteResults) -> list[str]:
    out = ["## How this run was made", ""]
    out += [f"- {k}: {v}" for k, v in results.config.items()]
    if results.durations:
        total = sum(results.durations.values())
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in results.durations.items())
        out += [f"- time taken: {total:.0f} s ({parts})"]
    out += ["", "![throughput](throughput.png)", ""]
    return out


# -- JSON ----------------------------------------------------------------------------------


def _hotpath_section(results: SuiteResults) -> list[str]:
    out = [f"## {PARTS['hotpath']}", ""]
    h = results.hotpath
    if h is None:
        return [*out, *_not_run(results, "hotpath"), ""]
    total = h.total_s / max(h.events, 1) * 1e6
    rows = [
        [stage, f"{h.per_event_us(stage):.2f}", f"{h.seconds[stage] / h.total_s:.0%}"]
        for stage in STAGES
    ]
    rows.append(["total", f"{total:.2f}", "100%"])
    out += [
        "The backlog through the batch path in this process, with states in a dict in "
        "place of Redis and nothing sent: the CPU the segmenter's own code needs, which one "
        f"core bounds at {h.events / h.total_s:,.0f} events/s before any I/O "
        f"({h.events:,} events, {h.events / max(h.user_updates, 1):.1f} per user update).",
        "",
        *_table(["stage", "µs per event", "share"], rows),
        "",
    ]
    if h.swept_users:
        out += [
            f"Then every one of its {h.swept_users:,} users is re-decided with no event, as "
            "the timers' sweep does (reading the state, features as of 45 days later, the "
            f"decision, the next due time, building the write): {h.sweep_us_per_user:.1f} µs "
            f"a user, {h.sweep_us_per_user:.0f} s of one core per million users.",
            "",
        ]
    return out


def _per_event(r: ThroughputResult) -> dict[str, float | None]:
    cpu = r.cpu_us_per_event()
    return {
        "cpu_us": cpu.get("segmenter"),
        "redis_commands": r.redis_commands_per_event,
        "redis_script_calls": r.redis_script_calls_per_event,
        "broker_cpu_us": cpu.get("broker"),
        "redis_cpu_us": cpu.get("redis"),
    }


def derived(results: SuiteResults) -> dict[str, Any]:
    """The figures computed from the raw results: targets, ratios, latency percentiles."""
    doc: dict[str, Any] = {
        "targets": [dataclasses.asdict(t) for t in targets(results)],
        "ratios": [dataclasses.asdict(r) for r in ratio_rows(results)],
        "memory_ratios": [dataclasses.asdict(r) for r in memory_ratio_rows(results)],
        "per_event": {
            run: _per_event(r)
            for run, r in (("1 process", results.one), ("2 processes", results.two))
            if r is not None
        },
    }
    if results.latency is not None:
        doc["latency"] = [
            {
                "rate": s.rate,
                "achieved": s.achieved,
                "p50_ms": s.p50_ms,
                "p95_ms": s.p95_ms,
                "p99_ms": s.p99_ms,
                "max_ms": s.max_ms,
                "unobserved_share": s.unobserved_share,
                "kept_up": s.kept_up,
            }
            for s in results.latency.steps
        ]
    return doc


def to_json(results: SuiteResults) -> bytes:
    """The raw results and :func:`derived` figures as JSON.

    Dataclasses are written field by field (orjson does so natively); an infinite
    latency (a sample never seen) is written as ``null``, as orjson writes infinities.
    """
    return orjson.dumps(
        {"results": results, "derived": derived(results)}, option=orjson.OPT_INDENT_2
    )


# -- plots ---------------------------------------------------------------------------------


def write_plots(results: SuiteResults, out_dir: Path) -> list[Path]:
    """Write ``latency.png``, ``memory.png`` and ``throughput.png`` for the parts that ran.

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install -e '.[bench]'``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt

    written = []
    if results.latency is not None and results.latency.steps:
        written.append(_plot_latency(plt, results.latency, out_dir / "latency.png"))
    if results.memory is not None and results.memory.samples:
        written.append(_plot_memory(plt, results.memory, out_dir / "memory.png"))
    bars = throughput_bars(results)
    if bars:
        written.append(_plot_throughput(plt, bars, out_dir / "throughput.png"))
    return written


def throughput_bars(results: SuiteResults) -> list[tuple[str, float]]:
    """Labels and events/s of the throughput plot: ceilings, segmenter, peers."""
    bars: list[tuple[str, float]] = []
    c = results.ceiling
    if c is not None:
        bars += [
            ("ceiling: consume", c.consume.per_s),
            ("ceiling: consume + orjson", c.consume_decode.per_s),
            ("ceiling: Redis fenced writes", c.redis_fenced.per_s),
        ]
    if results.one is not None:
        bars.append(("segmenter, 1 process", results.one.events_per_s))
    if results.two is not None:
        bars.append(("segmenter, 2 processes", results.two.events_per_s))
    for p in results.measured_peers():
        assert p.result is not None
        bars.append((f"peer: {p.name}", p.result.events_per_s))
    return bars


def _plot_latency(plt: Any, lat: LatencyResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rates = [s.rate for s in lat.steps]
    cap = lat.timeout_s * 1000.0
    for q, style in ((50, "o-"), (95, "s-"), (99, "^-")):
        ys = [s.quantile_ms(q) for s in lat.steps]
        # A sample never seen is plotted at the timeout, the most that is known of it.
        ax.plot(rates, [cap if y is None or math.isinf(y) else y for y in ys], style, label=f"p{q}")
    target = f"target p99 {TARGET_P99_MS:.0f} ms"
    ax.axhline(TARGET_P99_MS, color="grey", linestyle="--", label=target)
    ax.axvline(TARGET_P99_RATE, color="grey", linestyle=":")
    ax.set_xlabel("input rate, events/s")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_yscale("log")
    ax.set_title("Event produced -> segment visible in Redis (one process)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_memory(plt: Any, mem: MemoryResult, path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    pts = [s for s in mem.samples if s.users > 0]
    users = [s.users for s in pts]
    ax1.plot(users, [s.rss_bytes / 2**20 for s in pts], "-")
    ax1.set_xlabel("users")
    ax1.set_ylabel("segmenter RSS, MiB")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Process RSS as users grow")
    ax1.grid(True, alpha=0.3)
    ax2.plot(users, [s.redis_bytes_per_user for s in pts], "-")
    ax2.axhline(TARGET_BYTES_PER_USER, color="grey", linestyle="--", label="target 1 KB")
    ax2.set_xlabel("users")
    ax2.set_ylabel("Redis used_memory per user, bytes")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Redis memory per user")
    ax2.legend()
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _colour(label: str) -> str:
    if label.startswith("ceiling"):
        return "tab:grey"
    return "tab:blue" if "segmenter" in label else "tab:orange"


def _plot_throughput(plt: Any, bars: list[tuple[str, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(bars) + 1.5))
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    colours = [_colour(lab) for lab in labels]
    ax.barh(labels, values, color=colours)
    ax.axvline(TARGET_EVENTS_PER_S, color="black", linestyle="--", label="target per process")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("events/s (log scale)")
    ax.set_title("Throughput: ceiling, segmenter, peers (same backlog)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
