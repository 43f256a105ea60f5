"""Segment quality: every scenario in every mode, and one real purchase history.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end). For
each scenario of :mod:`loadtest.scenarios` and each mode, it simulates the scenario's
shoppers (known personas), feeds their events to one ``segmenter run`` process, waits
until everything is committed and settled, and scores the segments left in Redis:

``live``
    the events are produced at ``--rate`` events/s (4,000 by default) while the
    segmenter consumes them, so each micro-batch spans a short stretch of event time and
    the sweeps of event-time timers and the model's refits happen along the way;
``backlog``
    every event is produced first, then the segmenter drains them.

Each run has its own input and output topics, consumer group and Redis prefix; the
segmenter chooses k (``n_clusters=0``) and otherwise runs on its defaults. A run is over
when the group's committed offsets reach the input topics' ends, the reassessment queue
(``seg:model:reassess``) is empty, no timer is due, and nothing has moved for a few
seconds after the partitions went idle (so the watermark has reached the end).

Then the real data set: the CDNOW purchase history (:mod:`loadtest.real_data`) is
written as JSON lines, sent with ``segmenter replay`` into fresh topics, drained by a
``segmenter run``, and compared with the batch RFM k-means as of the end of the data.

The measures and the report are :mod:`loadtest.quality_metrics` (pure, tested apart).
Output: ``quality.md`` (for people) and ``quality.json`` in ``--out`` (by default
``loadtest/results/<UTC date>/``).

    python -m loadtest.quality
    python -m loadtest.quality --scenario three --mode live --skip-real --out /tmp/q
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from loadtest.quality_metrics import (
    Crossing,
    InForce,
    Lapse,
    ari,
    days_after_crossing,
    hours_to_lapse,
    merged_personas,
    moves_and_reversals,
    names_correct,
    render_report,
    scenario_targets,
    segment_summaries,
    versions_in_force,
    zscore,
)
from loadtest.scenarios import SCENARIOS, Scenario

if TYPE_CHECKING:
    from loadtest.stack import SegmenterProcess, Stack
    from stream.checkpoint import Checkpoint
    from stream.settings import Settings

MODES = ("live", "backlog")
#: Events/s of the live mode.
RATE = 4000.0
#: Partitions of each input topic.
PARTITIONS = 4
#: Seconds without any change (after the input is committed) that end a run.
QUIET_S = 5.0
#: The longest a run may take to settle after its input was produced.
DRAIN_TIMEOUT_S = 900.0


def _log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


# -- producing a scenario ---------------------------------------------------------------


@dataclass
class Produced:
    """What was produced for one run, with the ground truth needed to score it."""

    events: int = 0
    elapsed_s: float = 0.0
    #: Persona of every simulated user at the end of the span.
    personas: dict[str, str] = field(default_factory=dict)
    #: Users with at least one event.
    seen: set[str] = field(default_factory=set)
    #: Each user's last purchase time (epoch ms), for users with a purchase.
    last_purchase_ms: dict[str, int] = field(default_factory=dict)


def produce_scenario(s: Settings, scenario: Scenario, seed: int, rate: float | None) -> Produced:
    """Simulate ``scenario`` over the span ending now and produce its events to the input
    topics of ``s`` (at ``rate`` events/s, or as fast as the broker takes them)."""
    from consumers.producer import Deliveries, event_producer_config, input_topic, send
    from loadtest.personas import ShopperSimulator

    end_ms = int(time.time() * 1000)
    sim = ShopperSimulator(
        scenario.n_users, seed, end_ms - scenario.span_ms, end_ms, shares=scenario.shares
    )
    out = Produced(personas=sim.ground_truth())

    def messages() -> Iterator[tuple[str, bytes, bytes | None]]:
        for event in sim.events(scenario.n_events):
            user = str(event["user_id"])
            out.seen.add(user)
            if event["type"] == "purchase":
                out.last_purchase_ms[user] = int(event["ts"])  # type: ignore[call-overload]
            topic = input_topic(event["type"], s.clicks_topic, s.purchases_topic)
            yield topic, orjson.dumps(event), user.encode()

    deliveries = Deliveries()
    config = event_producer_config(s.kafka_bootstrap, s.kafka_client_config())
    producer = Producer({**config, "on_delivery": deliveries.report})
    started = time.monotonic()
    sent = send(producer, messages(), deliveries, rate)
    deliveries.confirm(producer, sent)
    out.events = sent
    out.elapsed_s = time.monotonic() - started
    return out


# -- running the segmenter to the end ---------------------------------------------------


def run_settings(stack: Stack, tag: str, **overrides: Any) -> Settings:
    """Settings of one run: its own topics, group and Redis prefix; k chosen; every
    published model version kept (for :func:`read_in_force`); then ``overrides``
    (settings fields)."""
    return stack.settings(
        **{"checkpoint_interval_s": 0.001, "model_versions_kept": 1_000_000, **overrides},
        group_id=f"quality-{tag}",
        clicks_topic=f"q.{tag}.clicks",
        purchases_topic=f"q.{tag}.purchases",
        changes_topic=f"q.{tag}.changes",
        current_topic=f"q.{tag}.current",
        deadletter_topic=f"q.{tag}.deadletter",
        redis_prefix=f"q:{tag}:",
        n_clusters=0,
    )


def wait_assigned(proc: SegmenterProcess, timeout: float = 120.0) -> None:
    """Wait until the segmenter holds its input partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        if proc.assigned() > 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the segmenter held no partition after {timeout:.0f}s")


_SETTLE_KEYS = (
    "segmenter_users_updated_total",
    "segmenter_segment_changes_total",
    "segmenter_swept_users_total",
    "segmenter_event_time_watermark_seconds",
    "segmenter_model_version",
)


def wait_settled(
    stack: Stack, s: Settings, proc: SegmenterProcess, timeout: float = DRAIN_TIMEOUT_S
) -> dict[str, float]:
    """Wait until the input is committed, the reassessment queue empty, no timer due, and
    nothing moved for :data:`QUIET_S` after the partitions went idle; return the metrics.

    Raises
    ------
    RuntimeError
        If that does not happen within ``timeout`` (the message says what was left).
    """
    from loadtest.stack import OffsetWatcher
    from state.keys import Keys

    watcher = OffsetWatcher(s, PARTITIONS)
    client = stack.client()
    reassess = Keys(s.redis_prefix).reassess
    committed_at: float | None = None
    last_key: tuple[float, ...] | None = None
    still_since = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while True:
            proc.check()
            now = time.monotonic()
            lag = watcher.lag()
            queued = int(client.hlen(reassess))
            m = proc.metrics()
            due = m.get("segmenter_timers_due", 0.0)
            key = tuple(m.get(k, -1.0) for k in _SETTLE_KEYS)
            if key != last_key:
                last_key, still_since = key, now
            if lag == 0 and committed_at is None:
                committed_at = now
            elif lag:
                committed_at = None
            idle_enough = (
                committed_at is not None and now - committed_at >= s.watermark_idle_s + 2.0
            )
            if (
                idle_enough
                and queued == 0
                and due == 0
                and m
                and m.get("segmenter_model_ready", 0) >= 1
                and now - still_since >= QUIET_S
            ):
                return m
            if now > deadline:
                raise RuntimeError(
                    f"not settled after {timeout:.0f}s: lag {lag}, queued {queued}, "
                    f"timers due {due:.0f}, model ready {m.get('segmenter_model_ready')}"
                )
            time.sleep(0.5)
    finally:
        watcher.close()
        client.close()


def read_topic_values(
    bootstrap: str, topic: str, timeout_s: float = 120.0, quiet_s: float = 1.5
) -> list[dict[str, Any]]:
    """Every committed JSON value of ``topic`` (read_committed), from the beginning to
    its end; within a partition in offset order."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"quality-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        pos = dict.fromkeys(parts, 0)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while any(pos[p] < ends[p] for p in parts) or time.monotonic() - quiet_since < quiet_s:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic} timed out at offsets {pos} of {ends}")
            batch = c.consume(1000, 0.2)
            if batch:
                quiet_since = time.monotonic()
            for tp in c.position([TopicPartition(topic, p) for p in parts]):
                if tp.offset >= 0:  # past transaction markers too
                    pos[tp.partition] = tp.offset
            for m in batch:
                value = m.value()
                if m.error() is None and value:
                    out.append(orjson.loads(value))
        return out
    finally:
        c.close()


@dataclass
class Final:
    """What the segmenter left in Redis at the end of a run."""

    labels: dict[str, int]
    names: dict[int, str]
    #: The model checkpoint; ``None`` if the run ended before the first one.
    checkpoint: Checkpoint | None
    watermark_ms: int

    @property
    def k(self) -> int | None:
        return self.checkpoint.k if self.checkpoint is not None else None

    @property
    def k_reason(self) -> str:
        choice = self.checkpoint.k_choice if self.checkpoint is not None else None
        return choice.reason if choice is not None else "-"


def read_final(stack: Stack, s: Settings, users: list[str], metrics: dict[str, float]) -> Final:
    """Each user's segment, the catalogue's names, the model and the final watermark."""
    from state.keys import Keys
    from state.redis_store import RedisStore

    keys = Keys(s.redis_prefix)
    client = stack.client()
    store = RedisStore.from_settings(s)
    try:
        labels: dict[str, int] = {}
        for i in range(0, len(users), 2000):
            chunk = users[i : i + 2000]
            pipe = client.pipeline(transaction=False)
            for u in chunk:
                pipe.hget(keys.user(u), "segment")
            for u, seg in zip(chunk, pipe.execute(), strict=True):
                if seg is not None and seg != b"":
                    labels[u] = int(seg)
        names = {int(e["segment"]): str(e.get("name", "?")) for e in store.read_catalogue()}
        checkpoint = store.load_model()
        wm_s = metrics.get("segmenter_event_time_watermark_seconds", 0.0)
        watermark_ms = round(wm_s * 1000)
        if not watermark_ms:  # from the shared partition clocks, as the segmenter does
            raw = [
                v.decode() if isinstance(v, bytes) else str(v) for v in client.hvals(keys.watermark)
            ]
            clocks = [int(v.split(":")[0]) for v in raw]
            watermark_ms = max(clocks) - int(s.watermark_lateness_s * 1000) if clocks else 0
    finally:
        store.close()
        client.close()
    return Final(labels, names, checkpoint, watermark_ms)


def read_in_force(s: Settings, changes: list[dict[str, Any]]) -> list[InForce]:
    """The model versions kept in Redis (every one, by :func:`run_settings`) with their
    segment names, each from when it decided (:func:`versions_in_force`), in that order."""
    from state.redis_store import RedisStore
    from stream.batch import SegmentNames
    from stream.model import SegmentModel

    since = versions_in_force(changes)
    store = RedisStore.from_settings(s)
    try:
        kept = {v["version"] for v in store.model_versions()}
        out = []
        for version, since_ms in sorted(since.items(), key=lambda kv: kv[1]):
            if version not in kept:
                continue
            model = SegmentModel(s.model_params())
            model.adopt(store.model_version(version))
            names = SegmentNames()
            names.refresh(model)
            out.append(InForce(since_ms, version, model, names.names))
    finally:
        store.close()
    return out


def lapse_crossing(s: Settings, lapse: Lapse, in_force: list[InForce]) -> Crossing:
    """:func:`days_after_crossing` of the lapsed customers, by the versions ``in_force``
    and their states in Redis."""
    from state.redis_store import RedisStore

    if not lapse.entries:
        return Crossing((), 0)
    store = RedisStore.from_settings(s)
    try:
        states = store.load_states([u for u, *_ in lapse.entries])
    finally:
        store.close()
    known = {u: st for u, st in states.items() if st is not None}
    return days_after_crossing(lapse.entries, known, in_force, s.hysteresis_margin, s.rfm_horizon)


def batch_labels(s: Settings, users: list[str], watermark_ms: int, k: int, seed: int) -> np.ndarray:
    """scikit-learn KMeans (true k, n_init=10) on ``users``' z-scored model vectors as of
    ``watermark_ms``, from their states in Redis."""
    from sklearn.cluster import KMeans

    from state.redis_store import RedisStore
    from stream.features import compute_features
    from stream.scaling import to_vector

    store = RedisStore.from_settings(s)
    try:
        rows = []
        for i in range(0, len(users), 1000):
            states = store.load_states(users[i : i + 1000])
            for u in users[i : i + 1000]:
                st = states[u]
                if st is None:
                    raise RuntimeError(f"user {u} has a segment but no state")
                rows.append(to_vector(compute_features(st, watermark_ms, "365d")))
    finally:
        store.close()
    x = zscore(np.stack(rows))
    return np.asarray(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x))


@contextlib.contextmanager
def segmenter(s: Settings, log: Path) -> Iterator[SegmenterProcess]:
    """One ``segmenter run`` child process, stopped by its PID whatever happens."""
    from loadtest.stack import SegmenterProcess

    proc = SegmenterProcess(s, log)
    try:
        yield proc
    finally:
        proc.stop()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


# -- one scenario in one mode -----------------------------------------------------------


def run_scenario(
    stack: Stack,
    scenario: Scenario,
    mode: str,
    seed: int,
    rate: float,
    workdir: Path,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` in ``mode`` on its own topics and prefix, and score it;
    ``overrides`` are settings fields the segmenter runs with."""
    started = time.monotonic()
    tag = f"{scenario.name}-{mode}-{uuid.uuid4().hex[:6]}"
    s = run_settings(stack, tag, **(overrides or {}))
    stack.create_inputs(s, PARTITIONS)
    log = workdir / f"{tag}.log"
    if mode == "live":
        with segmenter(s, log) as proc:
            wait_assigned(proc)
            _log(f"{tag}: producing {scenario.n_events:,} events at {rate:,.0f}/s")
            produced = produce_scenario(s, scenario, seed, rate)
            metrics = wait_settled(stack, s, proc)
    else:
        _log(f"{tag}: producing {scenario.n_events:,} events as a backlog")
        produced = produce_scenario(s, scenario, seed, None)
        with segmenter(s, log) as proc:
            metrics = wait_settled(stack, s, proc)
    settled = time.monotonic()
    _log(f"{tag}: settled after {settled - started:.0f}s; scoring")
    users = sorted(produced.seen)
    final = read_final(stack, s, users, metrics)
    segmented = [u for u in users if u in final.labels]
    personas = [produced.personas[u] for u in segmented]
    live_labels = [final.labels[u] for u in segmented]
    batch = batch_labels(s, segmented, final.watermark_ms, scenario.true_k, seed)
    changes = read_topic_values(s.kafka_bootstrap, s.changes_topic)
    moves = moves_and_reversals(changes)
    truth_seen = {u: produced.personas[u] for u in users}
    in_force = read_in_force(s, changes)
    lapse = hours_to_lapse(changes, truth_seen, produced.last_purchase_ms, in_force=in_force)
    crossing = lapse_crossing(s, lapse, in_force)
    summaries = segment_summaries({u: final.labels[u] for u in segmented}, truth_seen, final.names)
    row: dict[str, Any] = {
        "name": scenario.name,
        "mode": mode,
        "k_true": scenario.true_k,
        "k_chosen": final.k,
        "ari_personas": ari(personas, live_labels),
        "ari_batch": ari(batch.tolist(), live_labels),
        "names_correct": names_correct(summaries),
        "moves_per_user": moves.moves_per_user,
        "k_choice": final.k_reason,
        "users": len(segmented),
        "users_with_events": len(users),
        "events": produced.events,
        "rate": rate if mode == "live" else None,
        "produce_s": produced.elapsed_s,
        "days": scenario.days,
        "ari_batch_vs_personas": ari(personas, batch.tolist()),
        "changes": moves.changes,
        "moves": moves.moves,
        "reversals": moves.reversals,
        "lapse_customers": lapse.with_purchase,
        "lapse_customers_all": lapse.customers,
        "lapse_reached": lapse.reached,
        "lapse_already": lapse.already,
        "hours_to_lapse_median": lapse.median_h,
        "hours_to_lapse_p90": lapse.p90_h,
        "lapse_crossed": len(crossing.days),
        "lapse_not_crossed": crossing.not_crossed,
        "lapse_no_version": crossing.no_version,
        "lapse_active_after": crossing.active_after,
        "lapse_renamed": lapse.renamed,
        "lapse_within_a_day": crossing.within_a_day,
        "lapse_days_after_crossing_median": crossing.median_days,
        "watermark": _iso(final.watermark_ms),
        "model_version": final.checkpoint.version if final.checkpoint is not None else None,
        "refits": int(metrics.get("segmenter_model_refits_total", 0.0)),
        "swept": int(metrics.get("segmenter_swept_users_total", 0.0)),
        "learned": int(metrics.get('segmenter_model_updates_total{outcome="learned"}', 0.0)),
        "sampled_out": int(
            metrics.get('segmenter_model_updates_total{outcome="sampled_out"}', 0.0)
        ),
        "learn_budget": s.learn_budget,
        "resweeps_centres_moved": int(
            metrics.get('segmenter_resweeps_total{cause="centres_moved"}', 0.0)
        ),
        "segments": [
            {
                "segment": x.segment,
                "name": x.name,
                "base_name": x.base,
                "size": x.size,
                "majority": x.majority,
                "majority_share": x.majority_share,
                "fits": x.fits,
                "mix": [list(m) for m in x.mix],
            }
            for x in summaries
        ],
        "merged": merged_personas(summaries),
        "seconds": time.monotonic() - started,
    }
    row["targets_met"] = scenario_targets(row)
    return row


# -- the real data set ------------------------------------------------------------------


#: The model features of a shop whose events are orders only.
ORDERS_ONLY = "frequency,monetary,days_without_purchase"


def _segmenter_command() -> list[str]:
    script = Path(sys.executable).with_name("segmenter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumers.cli"]


def run_real(stack: Stack, seed: int, workdir: Path) -> dict[str, Any]:
    """CDNOW through ``segmenter replay`` and one ``segmenter run``, against batch RFM."""
    from loadtest import real_data
    from loadtest.stack import segmenter_env

    started = time.monotonic()
    tx = real_data.load_transactions()
    path = workdir / "cdnow.jsonl"
    n_events = real_data.write_jsonl(path, real_data.to_events(tx))
    tag = f"cdnow-{uuid.uuid4().hex[:6]}"
    # Classic RFM, as the batch baseline computes it: orders and spend over all of a
    # customer's history, not the default last 365 days (most of CDNOW's customers bought
    # only in its first months, and would have no orders over the last year).
    #
    # And on recency, orders and spend alone, as a shop whose events are orders only is
    # told to run (docs/how-it-works.md, "A shop that sends orders only"): with no views,
    # carts or categories, days since the last event is the recency again, conversion over
    # a year a flag of "ordered this year", and activity in 30 days the orders in 30 days,
    # so the full vector would weigh recency four times.
    s = run_settings(stack, tag).replace(rfm_horizon="lifetime", model_features=ORDERS_ONLY)
    stack.create_inputs(s, PARTITIONS)
    _log(f"{tag}: segmenter replay of {n_events:,} events")
    t0 = time.monotonic()
    done = subprocess.run(
        [*_segmenter_command(), "replay", str(path)],
        env=segmenter_env(s),
        capture_output=True,
        text=True,
        check=False,
    )
    replay_s = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"segmenter replay exited {done.returncode}: {done.stderr[-2000:]}")
    t0 = time.monotonic()
    with segmenter(s, workdir / f"{tag}.log") as proc:
        metrics = wait_settled(stack, s, proc)
    drain_s = time.monotonic() - t0
    customers = sorted(set(tx.customer.tolist()))
    users = [real_data.user_id(c) for c in customers]
    final = read_final(stack, s, users, metrics)
    as_of = real_data.end_ms(tx)
    _log(f"{tag}: settled; batch RFM baseline")
    # The baseline chooses its k by the silhouette among the k the segmenter may have
    # (SEGMENTER_K_MIN to K_MAX); the same chooser over 2 to 8 is reported beside it.
    batch = real_data.batch_rfm(tx, as_of, None, seed, ks=range(s.k_min, s.k_max + 1))
    wide = real_data.batch_rfm(tx, as_of, None, seed, ks=real_data.K_RANGE)
    segmented = [u for u in users if u in final.labels]
    mine = [final.labels[u] for u in segmented]
    theirs = [batch.labels[real_data.customer_of(u)] for u in segmented]
    row: dict[str, Any] = {
        "dataset": "CDNOW (lifetimes package data)",
        "rfm_horizon": s.rfm_horizon,
        "model_features": list(s.model_feature_names),
        "customers": len(customers),
        "ari_batch_rfm": ari(theirs, mine),
        "events": n_events,
        "segmented": len(segmented),
        "as_of": _iso(as_of),
        "watermark": _iso(final.watermark_ms),
        "k_chosen": final.k,
        "k_choice": final.k_reason,
        "batch_k": batch.k,
        "batch_k_reason": batch.selection.reason if batch.selection else "given",
        "batch_silhouette": batch.silhouette,
        "batch_k_range": f"{s.k_min}-{s.k_max}",
        "batch_wide_k": wide.k,
        "batch_wide_k_reason": wide.selection.reason if wide.selection else "given",
        "ari_batch_rfm_wide": ari([wide.labels[real_data.customer_of(u)] for u in segmented], mine),
        "replay_s": replay_s,
        "replay_summary": done.stdout.strip(),
        "drain_s": drain_s,
    }
    profile_labels = {
        u: f"{final.labels[u]} {final.names.get(final.labels[u], '?')}" for u in segmented
    }
    row["segmenter_profiles"] = [
        dataclasses.asdict(p) for p in real_data.rfm_profiles(profile_labels, tx, as_of)
    ]
    row["batch_profiles"] = [dataclasses.asdict(p) for p in batch.profiles]
    if final.k:
        same = real_data.batch_rfm(tx, as_of, final.k, seed)
        row["ari_batch_rfm_same_k"] = ari(
            [same.labels[real_data.customer_of(u)] for u in segmented], mine
        )
        row["batch_same_k_profiles"] = [dataclasses.asdict(p) for p in same.profiles]
    row["target_met"] = row["ari_batch_rfm"] >= 0.8
    row["seconds"] = time.monotonic() - started
    return row


# -- the command ------------------------------------------------------------------------


def _machine(stack: Stack) -> dict[str, str]:
    from loadtest.suite import cpu_model, ram_gib

    def read(p: str) -> str:
        try:
            return Path(p).read_text()
        except OSError:
            return ""

    v = stack.versions()
    return {
        "machine": f"{cpu_model(read('/proc/cpuinfo'))}, {os.cpu_count()} cores, "
        f"{ram_gib(read('/proc/meminfo')):.1f} GiB RAM (shared with the broker and Redis)",
        "system": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "broker": f"{v['broker_version']} on loopback",
        "redis": f"Redis {v['redis_version']} on loopback",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.quality", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="a scenario to run (repeatable; default: all)",
    )
    ap.add_argument("--mode", choices=MODES, help="one mode only (default: both)")
    ap.add_argument("--skip-real", action="store_true", help="leave out the CDNOW run")
    ap.add_argument("--only-real", action="store_true", help="the CDNOW run alone")
    ap.add_argument("--out", help="output directory (default: loadtest/results/<UTC date>)")
    ap.add_argument("--seed", type=int, default=7, help="simulator and KMeans seed")
    ap.add_argument("--rate", type=float, default=RATE, help="live mode events/s")
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument("--logs", help="keep each run's segmenter log in this directory")
    ap.add_argument(
        "--learn-budget",
        type=int,
        default=None,
        help="SEGMENTER_LEARN_BUDGET of the scenario runs (default: the segmenter's; 0: all)",
    )
    args = ap.parse_args(argv)
    if args.learn_budget is not None and args.learn_budget < 0:
        ap.error(f"--learn-budget must be >= 0, got {args.learn_budget}")
    if not args.rate > 0:
        ap.error(f"--rate must be > 0, got {args.rate}")
    return args


def main(argv: list[str] | None = None) -> int:
    from loadtest.stack import local_stack

    args = parse_args(argv)
    began = time.monotonic()
    date = datetime.now(UTC).date().isoformat()
    out = Path(args.out or f"loadtest/results/{date}")
    out.mkdir(parents=True, exist_ok=True)
    names = [] if args.only_real else args.scenario or list(SCENARIOS)
    modes = [args.mode] if args.mode else list(MODES)
    rows: list[dict[str, Any]] = []
    real: dict[str, Any] | None = None
    notes: list[str] = []
    meta: dict[str, Any] = {"date": date}

    def write() -> None:
        meta["elapsed_s"] = time.monotonic() - began
        doc = {"scenarios": rows, "real_data": real}
        (out / "quality.json").write_bytes(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        (out / "quality.md").write_text(render_report(rows, real, {**meta, "notes": notes}))

    with local_stack("segmenter-quality-", args.broker) as stack:
        workdir = Path(args.logs) if args.logs else stack.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        meta["machine"] = _machine(stack)
        overrides = {} if args.learn_budget is None else {"learn_budget": args.learn_budget}
        default = stack.settings(**overrides)
        meta["config"] = {
            "scenarios": ", ".join(
                f"{n} ({SCENARIOS[n].true_k} personas, {SCENARIOS[n].n_users:,} users, "
                f"{SCENARIOS[n].n_events:,} events, {SCENARIOS[n].days:.0f} days)"
                for n in names
            ),
            "modes": ", ".join(modes),
            "live rate": f"{args.rate:,.0f} events/s",
            "input partitions": f"{PARTITIONS} per topic",
            "seed": str(args.seed),
            "segmenter": f"one `segmenter run` process per run; n_clusters=0 "
            f"(k from {default.k_min} to {default.k_max} by {default.k_criterion}); "
            f"batch_max_events {default.batch_max_events}, watermark lateness "
            f"{default.watermark_lateness_s:.0f}s, idle {default.watermark_idle_s:.0f}s, "
            f"refit every {default.model_refit_interval_days:g} days of event time or "
            f"{default.model_refit_updates:,} updates; learning budget "
            f"{default.learn_budget or 'none'} user updates a batch; every published model "
            "version kept (for the lapse timing); other settings default",
        }
        for name in names:
            for mode in modes:
                try:
                    row = run_scenario(
                        stack, SCENARIOS[name], mode, args.seed, args.rate, workdir, overrides
                    )
                except Exception as exc:  # a failed run is reported, never hidden
                    traceback.print_exc()
                    row = {
                        "name": name,
                        "mode": mode,
                        "k_true": SCENARIOS[name].true_k,
                        "k_chosen": None,
                        "ari_personas": None,
                        "ari_batch": None,
                        "names_correct": None,
                        "moves_per_user": None,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                    notes.append(f"{name} {mode} failed: {row['error']}")
                rows.append(row)
                _log(
                    f"{name} {mode}: k {row.get('k_chosen')}/{row['k_true']}, ARI personas "
                    f"{row.get('ari_personas')}, ARI batch {row.get('ari_batch')}, names "
                    f"{row.get('names_correct')}"
                )
                write()
        if not args.skip_real:
            try:
                real = run_real(stack, args.seed, workdir)
                _log(f"real data: ARI vs batch RFM {real['ari_batch_rfm']:.3f}")
            except Exception as exc:
                traceback.print_exc()
                real = {"dataset": "CDNOW", "customers": 0, "ari_batch_rfm": None}
                real["error"] = f"{type(exc).__name__}: {exc}"
                notes.append(f"real data failed: {real['error']}")
    write()
    print((out / "quality.md").read_text())
    _log(f"wrote {out / 'quality.md'} and {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
