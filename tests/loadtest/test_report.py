"""The benchmark suite's pure parts: ratios, targets, memory points and the report.

No servers and no matplotlib: results are built by hand, as the suite would fill them.
"""

from __future__ import annotations

import dataclasses
import math

import orjson
import pytest

from loadtest import report
from loadtest.bench_throughput import ThroughputResult
from loadtest.ceiling import CeilingResult, Rate
from loadtest.hotpath import STAGES, StageTimes
from loadtest.latency import LatencyResult, LatencyStep
from loadtest.memory import MemoryResult, MemorySample, checkpoints, pick_points
from loadtest.peers import PeerResult
from loadtest.peers.run import PeerOutcome
from loadtest.report import SuiteResults, ratio
from loadtest.suite import cpu_model, parse_args, ram_gib

MACHINE = report.Machine(
    cores=2,
    cpu_model="Test CPU",
    ram_gib=8.0,
    python="3.11.7",
    platform="Linux",
    date="2026-01-01 00:00 UTC",
    broker="kafka",
    broker_version="Apache Kafka 4.1.1 (KRaft)",
    redis_version="7.0.15",
)


def throughput(processes: int, per_s: float, bytes_per_user: float = 900.0) -> ThroughputResult:
    return ThroughputResult(
        processes=processes,
        in_process=False,
        events=int(per_s * 10),
        elapsed_s=10.0,
        events_per_s=per_s,
        cpu_s=9.0 * processes,
        wall_s=12.0,
        backlog_events=int(per_s * 11),
        users=1000,
        redis_bytes_per_user=bytes_per_user,
        peak_rss_bytes=200 * 2**20,
    )


def ceiling_result() -> CeilingResult:
    return CeilingResult(
        consume=Rate.of("consume only", 400_000, 1.0, 0.9),
        consume_decode=Rate.of("consume + orjson.loads", 200_000, 1.0, 1.0),
        redis_fenced=Rate.of("Redis fenced write + SADD", 100_000, 1.0, 0.5, users=50_000),
        redis_plain=Rate.of("Redis plain HSET + SET + SADD", 150_000, 1.0, 0.5, users=75_000),
        events_per_update=2.0,
        mean_users=2500.0,
        batch_users=2500,
        payload_fields=9,
        payload_bytes=800,
        history_events=12,
    )


def step(rate: float, latencies: list[float], unobserved: int = 0, lag_end: int = 0) -> LatencyStep:
    return LatencyStep(
        rate=rate,
        achieved=rate * 0.99,
        produced=int(rate * 5),
        duration_s=5.0,
        samples=len(latencies) + unobserved,
        latencies_ms=latencies,
        unobserved=unobserved,
        applied_without_segment=0,
        lag_start=0,
        lag_end=lag_end,
        drain_s=0.5,
        segmenter_cores=0.3,
        batches=40,
        batch_ms=50.0,
        own_latency_ms=90.0,
    )


def latency_result(steps: list[LatencyStep]) -> LatencyResult:
    return LatencyResult(
        steps=steps,
        users=20_000,
        partitions=4,
        warmup_s=3.0,
        duration_s=5.0,
        sample_every=50,
        poll_ms=5.0,
        timeout_s=10.0,
        broker="kafka",
    )


def memory_result() -> MemoryResult:
    samples = [
        MemorySample(1.0, 0, 100 * 2**20, 0),
        MemorySample(2.0, 10_500, 150 * 2**20, 10_500 * 700),
        MemorySample(3.0, 20_000, 150 * 2**20 + 95_000, 20_000 * 690),
    ]
    return MemoryResult(
        users=20_000,
        events=30_000,
        baseline_rss_bytes=100 * 2**20,
        peak_rss_bytes=160 * 2**20,
        points=pick_points(samples, checkpoints(20_000)),
        samples=samples,
        elapsed_s=3.0,
    )


def peer(name: str, per_s: float) -> PeerOutcome:
    result = PeerResult.measured(name, int(per_s * 10), 10.0, 9.5, changes=10)
    return PeerOutcome(name, result, users=500, memory_bytes=500 * 1500)


def full_results() -> SuiteResults:
    return SuiteResults(
        machine=MACHINE,
        config={"users": 1000, "events": 11000, "partitions": 4, "peer_events": 3000},
        ceiling=ceiling_result(),
        one=throughput(1, 50_000.0),
        two=throughput(2, 95_000.0),
        redis_wait=throughput(1, 40_000.0),
        latency=latency_result(
            [step(2000.0, [10.0, 20.0, 30.0, 40.0]), step(20000.0, [100.0, 150.0, 200.0])]
        ),
        memory=memory_result(),
        hotpath=StageTimes(
            seconds=dict(zip(STAGES, (0.5, 0.2, 1.5, 0.6, 0.2), strict=True)),
            events=100_000,
            user_updates=6_000,
            write_bytes=9_000_000,
            swept_users=6_000,
            sweep_s=0.09,
        ),
        peers=[peer("per_event", 2_500.0), peer("quix", 2_000.0)],
        durations={"ceiling": 10.0, "throughput": 20.0},
    )


class TestRatios:
    def test_ratio(self) -> None:
        assert ratio(50.0, 200.0) == 0.25
        assert ratio(None, 1.0) is None
        assert ratio(1.0, None) is None
        assert ratio(1.0, 0.0) is None
        assert ratio(math.inf, 1.0) is None

    def test_rows_divide_each_segmenter_rate_by_each_reference(self) -> None:
        rows = report.ratio_rows(full_results())
        assert [r.figure for r in rows][:2] == [
            "segmenter, 1 process, saturation",
            "segmenter, 2 processes, saturation",
        ]
        one = dict(rows[0].ratios)
        assert one == {
            "ceiling: consume": pytest.approx(0.125),
            "ceiling: consume + orjson": pytest.approx(0.25),
            "ceiling: Redis fenced writes": pytest.approx(0.5),
            "peer: per_event": pytest.approx(20.0),
            "peer: quix": pytest.approx(25.0),
        }
        # One row per fixed rate, its sustained rate divided by the same references.
        fixed = rows[2:]
        assert len(fixed) == 2
        assert dict(fixed[1].ratios)["ceiling: consume"] == pytest.approx(19_800 / 400_000)

    def test_missing_parts_give_fewer_columns_and_rows(self) -> None:
        r = full_results()
        r.ceiling, r.two, r.latency = None, None, None
        r.peers = [peer("per_event", 2_500.0), PeerOutcome("quix", None, error="no venv")]
        rows = report.ratio_rows(r)
        assert [r.figure for r in rows] == ["segmenter, 1 process, saturation"]
        assert dict(rows[0].ratios) == {"peer: per_event": pytest.approx(20.0)}

    def test_memory_ratio_to_peers(self) -> None:
        (row,) = report.memory_ratio_rows(full_results())
        assert row.value == 900.0
        assert dict(row.ratios) == {
            "peer: per_event": pytest.approx(0.6),
            "peer: quix": pytest.approx(0.6),
        }

    def test_format(self) -> None:
        assert report.fmt_ratio(0.123) == "0.12x"
        assert report.fmt_ratio(25.0) == "25x"
        assert report.fmt_ratio(None) == "n/a"


class TestTargets:
    def test_each_target_measured_and_judged(self) -> None:
        r = full_results()
        assert report.targets(r)[3].measured == "not run"  # no micro-batch peer yet
        r.peers.append(peer("micro_batch", 20_000.0))
        got = report.targets(r)
        assert [t.met for t in got] == [False, True, False, False, None, True, True, True]
        assert got[0].measured == "50,000 events/s (1 process, steady)"
        assert got[1].measured.startswith("199 ms (19,800/s sent, 0.0% of samples unobserved)")
        assert got[2].measured == "20,000/s"
        assert got[3].measured == "2.50x"  # 50,000 / 20,000 events/s
        # Measured at 20,000 users: reported, not judged against a million.
        assert got[4].measured == "690 bytes at 20,000 users when drained"
        # 0.09 s for 6,000 users: 15 us a user, 15 s per million.
        assert got[5].measured == "15.0 s per million (6,000 users swept, no I/O)"
        # 9 s of CPU for 500,000 events, against 18 s for 950,000.
        assert got[6].measured == "18.9 us vs 18.0 us (+5.3%)"
        assert got[7].measured.endswith("(+10.0 bytes per user)")

    def test_memory_judged_at_a_million_users(self) -> None:
        r = full_results()
        mem = memory_result()
        last = MemorySample(9.0, 1_000_000, 150 * 2**20, 1_000_000 * 1000)
        r.memory = dataclasses.replace(mem, points=[*mem.points, last])
        t = report.targets(r)[4]
        assert (t.measured, t.met) == ("1,000 bytes at 1,000,000 users when drained", True)

    def test_memory_judged_when_drained_with_the_settled_figure_beside(self) -> None:
        r = full_results()
        mem = memory_result()
        last = MemorySample(9.0, 1_000_000, 150 * 2**20, 1_000_000 * 1100)
        settled = MemorySample(99.0, 1_000_000, 150 * 2**20, 1_000_000 * 990)
        r.memory = dataclasses.replace(mem, points=[*mem.points, last], settled=settled)
        t = report.targets(r)[4]
        assert t.measured == (
            "1,100 bytes at 1,000,000 users when drained (990 once the sweep settled)"
        )
        assert t.met is False
        text = "\n".join(report._memory_section(r))
        assert "after 99 s, RSS 150.0 MiB and Redis 990 bytes per user" in text

    def test_cpu_per_event_of_two_processes(self) -> None:
        r = full_results()
        r.two = throughput(2, 60_000.0)  # 18 s of CPU for 600,000 events: 30 us
        t = report.targets(r)[6]
        assert t.met is False and t.measured.endswith("(+66.7%)")

    def test_redis_commands_per_event(self) -> None:
        r = full_results()
        assert r.one is not None
        # 500,000 events timed: 1,250,000 commands, 25,000 of them script calls.
        r.one = dataclasses.replace(r.one, redis_commands=1_250_000, redis_script_calls=25_000)
        md = report.render_markdown(r)
        assert "Redis commands/event (script calls) |" in md
        assert "| 1 process | 50,000 |" in md and "| 2.50 (0.050) |" in md
        per_event = report.derived(r)["per_event"]
        assert per_event["1 process"]["redis_commands"] == 2.5
        assert per_event["1 process"]["redis_script_calls"] == 0.05
        # Not counted: said so, not shown as zero.
        assert per_event["2 processes"]["redis_commands"] is None
        assert "| n/a |" in md

    def test_server_cpu_per_event(self) -> None:
        r = full_results()
        assert r.one is not None
        md = report.render_markdown(r)
        assert "CPU per event over the steady span" not in md  # not measured: no sentence
        assert report.derived(r)["per_event"]["1 process"]["broker_cpu_us"] is None
        # 500,000 events timed: 5 s of broker CPU is 10 us an event, 2 s of Redis's 4 us.
        r.one = dataclasses.replace(r.one, broker_cpu_s=5.0, redis_cpu_s=2.0)
        md = report.render_markdown(r)
        assert "the segmenter 18.0 µs, the broker 10.0 µs, Redis 4.0 µs" in md
        assert "alone would keep 1.40 cores busy, of this machine's 2" in md
        per_event = report.derived(r)["per_event"]["1 process"]
        assert per_event["broker_cpu_us"] == pytest.approx(10.0)
        assert per_event["redis_cpu_us"] == pytest.approx(4.0)

    def test_p99_over_target_and_lost_samples(self) -> None:
        r = full_results()
        assert r.latency is not None
        r.latency.steps[1] = step(20000.0, [100.0] * 98, unobserved=2)
        p99 = report.targets(r)[1]
        assert p99.met is False
        assert p99.measured.startswith("> 10,000 ms")

    def test_unmeasured_targets(self) -> None:
        r = SuiteResults(machine=MACHINE)
        assert all(t.met is None for t in report.targets(r))
        r.latency = latency_result([step(2000.0, [1.0])])
        assert report.targets(r)[1].measured == "rate not in this run"

    def test_rss_growth(self) -> None:
        mem = memory_result()
        assert mem.rss_growth_per_user == pytest.approx(10.0)
        assert report.targets(full_results())[7].met is True
        grown = dataclasses.replace(
            mem, points=[mem.points[0], MemorySample(3.0, 20_000, 160 * 2**20, 0)]
        )
        r = full_results()
        r.memory = grown
        assert report.targets(r)[7].met is False


class TestMemoryPoints:
    def test_checkpoints_up_to_users(self) -> None:
        assert checkpoints(1_000_000) == [10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000]
        assert checkpoints(300_000) == [10_000, 50_000, 100_000, 250_000, 300_000]

    def test_first_sample_past_each_mark_and_the_last_for_the_end(self) -> None:
        samples = [MemorySample(float(t), u, 0, 0) for t, u in enumerate([0, 9, 11, 19, 20, 20])]
        assert [(p.elapsed_s, p.users) for p in pick_points(samples, [10, 20])] == [
            (2.0, 11),
            (5.0, 20),
        ]

    def test_marks_never_reached_are_left_out(self) -> None:
        samples = [MemorySample(0.0, 5, 0, 0)]
        assert pick_points(samples, [10, 20]) == []


class TestRender:
    def test_full_report(self) -> None:
        r = full_results()
        r.peers.append(peer("micro_batch", 20_000.0))
        md = report.render_markdown(r)
        assert md.startswith("# Segmenter benchmark report\n")
        assert "2 cores (Test CPU)" in md
        assert "Broker: kafka (Apache Kafka 4.1.1 (KRaft)); Redis 7.0.15" in md
        assert "| target | measured | met |" in md
        assert "÷ ceiling: consume + orjson" in md and "÷ peer: quix" in md
        assert (
            "| segmenter, 1 process, saturation | 50,000 | 0.12x | 0.25x | 0.50x | 20x | 25x |"
            in md
        )
        assert "Speed-up, steady: 1.90x" in md
        assert "With WAIT: 0.80x of the rate without it." in md
        assert "(18 us with one process, 19 us with two)" in md
        assert "![latency](latency.png)" in md and "![memory](memory.png)" in md
        assert "not run" not in md.lower()
        # 3.0 s of CPU for 100,000 events: 30 us an event, 33,333 events/s before any I/O.
        assert "bounds at 33,333 events/s before any I/O" in md
        assert "| process batch | 15.00 | 50% |" in md
        assert "| total | 30.00 | 100% |" in md

    def test_a_part_not_run_says_why(self) -> None:
        r = full_results()
        r.latency = None
        r.not_run["latency"] = "StackError: the segmenter process exited"
        r.peers[1] = PeerOutcome("quix", None, error="pip install quixstreams failed: offline")
        r.not_run["peer:quix"] = "pip install quixstreams failed: offline"
        md = report.render_markdown(r)
        assert "- latency: not run: StackError: the segmenter process exited" in md
        assert "Not run: StackError: the segmenter process exited" in md
        assert "| quix | not run: pip install quixstreams failed: offline |" in md
        assert "÷ peer: quix" not in md
        p99 = next(t for t in report.targets(r) if t.target.startswith("p99"))
        assert (p99.measured, p99.met) == ("not run", None)

    def test_nothing_run(self) -> None:
        r = SuiteResults(machine=MACHINE, not_run={p: "skipped (--skip)" for p in report.PARTS})
        md = report.render_markdown(r)
        for title in report.PARTS.values():
            assert f"## {title}" in md
        assert "No ratios" in md

    def test_json_has_raw_and_derived_figures(self) -> None:
        r = full_results()
        assert r.latency is not None
        r.latency.steps[1] = step(20000.0, [100.0] * 98, unobserved=2)
        doc = orjson.loads(report.to_json(r))
        assert doc["results"]["one"]["events_per_s"] == 50_000.0
        assert doc["results"]["peers"][1]["result"]["name"] == "quix"
        assert doc["derived"]["latency"][1]["p99_ms"] is None  # infinite: never seen
        assert [t["met"] for t in doc["derived"]["targets"]] == [
            False,
            False,
            False,
            None,
            None,
            True,
            True,
            True,
        ]
        assert doc["derived"]["ratios"][0]["figure"] == "segmenter, 1 process, saturation"

    def test_throughput_bars(self) -> None:
        labels = [b[0] for b in report.throughput_bars(full_results())]
        assert labels == [
            "ceiling: consume",
            "ceiling: consume + orjson",
            "ceiling: Redis fenced writes",
            "segmenter, 1 process",
            "segmenter, 2 processes",
            "peer: per_event",
            "peer: quix",
        ]


class TestSuiteHelpers:
    def test_machine_files(self) -> None:
        assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\n") == "AMD EPYC"
        assert cpu_model("") == "unknown"
        assert ram_gib("MemTotal:  2097152 kB\n") == 2.0
        assert ram_gib("") == 0.0

    def test_quick_and_overrides(self) -> None:
        cfg, args = parse_args(["--quick", "--rates", "1000,3000", "--skip", "memory"])
        assert cfg.rates == (1000.0, 3000.0)
        assert cfg.users == 10_000
        assert args.skip == ["memory"]
        full, _ = parse_args([])
        assert (full.users, full.events, full.memory_users) == (100_000, 1_000_000, 1_000_000)

    def test_too_small_a_backlog_is_refused(self) -> None:
        with pytest.raises(SystemExit):
            parse_args(["--events", "100"])
