"""Segment quality against the generator's ground truth and a batch baseline.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
generates shoppers with known personas, runs one segmenter over them, then scores the
segments it left in Redis.

The events are fed as they would arrive live: produced at ``--rate`` events/s while the
segmenter consumes them (by default 2,000/s: the 100,000 events of 30 days in 50 s, 14.4 h
of event time a second), so that each of its micro-batches spans a short stretch of
event time.
``--backlog`` produces them all first, then starts the segmenter: its batches are then
full (``SEGMENTER_BATCH_MAX_EVENTS``, 5,000 messages, at least a day and a half of event
time each) and it decides each user once per batch, which blurs every event-time figure
below.

Scores:

- adjusted Rand index and normalised mutual information against the personas, each
  user's persona being the one they have at the end of the span;
- agreement (adjusted Rand index) with scikit-learn's batch KMeans on the same scaled
  feature snapshot, same k;
- silhouette of the live assignment on that snapshot;
- normalised entropy of the segment sizes (1 = equal sizes);
- flap rate: segment changes per user beyond each user's first segment.

Time to re-segment. Unless ``--no-shift`` is given, the shoppers' behaviour shifts
part-way through the span (:data:`~loadtest.personas.DEFAULT_SHIFT`: from 60 % of the
span on, half the window shoppers buy like loyal high spenders; ``--shift-*`` change
that). After the run the whole ``segments.changes`` topic is read back, and
:func:`resegmentation` works out from it:

- the target segment: the segment that most *unshifted* users of the persona shifted to
  (loyal high spenders, by default) are in at the end (their last change); and, beside
  it, the segment most shifted users are in at the end, which tells whether they joined
  their new peers or were put in a segment of their own;
- re-segmented: the share of shifted users whose segment changes into the target
  segment at or after their shift (event time). The rest, whether they moved elsewhere
  or not at all, are not re-segmented. Users already in the target segment just before
  the shift are left out of the share and counted apart;
- time to re-segment: for the re-segmented users, the event time from the shift to the
  change into the target segment, in hours, median and 90th percentile;
- events to re-segment: for the re-segmented users, the median number of their events
  from the shift up to and including the one that triggered the change;
- false moves: the same share for the control group, the users of the persona shifted
  from who did not shift: how many of them moved into the target segment after the
  shift all the same.

Event time is the simulated shoppers' clock, compressed as above: hours here are hours
of the shoppers' lives, not of the run.
With the shift on, the scores above it count each shifted user under the persona shifted
to, so they are not comparable with those of a ``--no-shift`` run.

    python -m loadtest.quality --users 1000 --events 100000
    python -m loadtest.quality --no-shift
"""

from __future__ import annotations

import argparse
import bisect
import math
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from loadtest.generator import (
    GenerateReport,
    add_shift_arguments,
    produce_events,
    shift_from_args,
)
from loadtest.personas import DEFAULT_SHIFT, PersonaShift

if TYPE_CHECKING:
    from consumers.devstack.servers import Server

# The segmenter, its local stack and scikit-learn are imported where a run needs them, so
# that the scoring functions below can be imported and tested on their own.

_DAYS = 30.0  # simulated span
_HOUR_MS = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_RATE = 2000.0  # events/s fed to the segmenter while it runs


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _input_row(rate: float | None, events: int) -> str:
    if rate is None:
        return "backlog: all events produced, then consumed"
    per_s = _DAYS * 24 * rate / events if events else 0.0
    return f"{rate:.0f} events/s, consumed as produced ({per_s:.1f} h of event time per second)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a segmenter setting for this run, e.g. --set n_clusters=5 (repeatable)",
    )
    ap.add_argument("--out", default="loadtest/out/quality.md")
    ap.add_argument(
        "--rate",
        type=_positive_float,
        default=_RATE,
        help=f"events/s, consumed as they are produced (default {_RATE:.0f})",
    )
    ap.add_argument(
        "--backlog",
        action="store_true",
        help="produce every event first, then start the segmenter on the backlog",
    )
    add_shift_arguments(ap, default_at=DEFAULT_SHIFT.at)
    ap.add_argument(
        "--no-shift", action="store_true", help="no behaviour shift, no time-to-re-segment rows"
    )
    args = ap.parse_args(argv)
    try:
        args.shift = None if args.no_shift else shift_from_args(args)
    except ValueError as exc:
        ap.error(str(exc))
    from consumers.devstack import servers

    with tempfile.TemporaryDirectory(prefix="segmenter-quality-") as tmp:
        rds = servers.start_redis(Path(tmp) / "redis")
        broker = servers.start_broker(Path(tmp) / "broker", prefer=args.broker)
        try:
            report = measure(args, broker, rds, Path(tmp))
        finally:
            broker.stop()
            rds.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    return 0


def measure(args: argparse.Namespace, broker: Server, rds: Server, tmp: Path) -> str:
    from sklearn.cluster import KMeans
    from sklearn.metrics import (
        adjusted_rand_score,
        normalized_mutual_info_score,
        silhouette_score,
    )

    from consumers import topics
    from consumers.app import Segmenter
    from consumers.devstack import servers
    from state.redis_store import RedisStore
    from stream.scaling import to_vector
    from stream.settings import load_settings

    overrides = {f"SEGMENTER_{k.upper()}": v for k, v in (a.split("=", 1) for a in args.set)}
    s = load_settings(overrides).replace(
        kafka_bootstrap=broker.address,
        redis_url=f"redis://{rds.address}/0",
        metrics_port=servers.free_port(),
        transactional=broker.kind == "kafka",
    )
    topics.create_topics(
        topics.admin_client(s), {s.clicks_topic: (4, {}), s.purchases_topic: (4, {})}
    )
    gt_path = tmp / "ground_truth.json"
    rate: float | None = None if getattr(args, "backlog", False) else args.rate

    def generate() -> GenerateReport:
        return produce_events(
            s.kafka_bootstrap,
            s.clicks_topic,
            s.purchases_topic,
            args.users,
            args.events,
            args.seed,
            rate,
            _DAYS,
            str(gt_path),
            shift=getattr(args, "shift", None),
        )

    # A backlog: everything produced, then consumed. At a set rate: consumed as produced.
    gen = generate() if rate is None else None
    seg = Segmenter(s)
    seg.start()
    stop = threading.Event()
    worker = threading.Thread(target=seg.run, args=(stop,))
    worker.start()
    try:
        if gen is None:
            gen = generate()
    finally:
        deadline = time.monotonic() + 600
        while gen and seg.stats.messages < gen.events_sent and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # let the warm-up assignments of the last turn finish
        stop.set()
        worker.join()
        seg.close()

    ground_truth = orjson.loads(gt_path.read_bytes())
    truth: dict[str, str] = ground_truth["personas"]  # persona at the end of the span
    store = RedisStore.from_settings(s)
    users, live, vectors = [], [], []
    model = seg.model
    for uid in truth:
        h = store.read_user(uid)
        if h is None or "segment" not in h:
            continue
        users.append(uid)
        live.append(int(h["segment"]))
        vectors.append(to_vector(orjson.loads(h["features"])))
    catalogue = {e["segment"]: e for e in store.read_catalogue()}
    checkpoint = store.load_model() or {}
    store.close()
    changes = read_topic_values(s.kafka_bootstrap, s.changes_topic)
    flapping = flap_figures(changes)
    lineage = Counter(str(e["event"]) for e in checkpoint.get("events", []))
    x = model.scale(np.stack(vectors))
    personas = [truth[u] for u in users]
    k = model.n_clusters
    batch = KMeans(n_clusters=k, n_init=10, random_state=args.seed).fit_predict(x)
    sizes = Counter(live)
    probs = [n / len(live) for n in sizes.values()]
    entropy = -sum(p * math.log(p) for p in probs) / math.log(k)
    flaps = max(0, seg.stats.changes - len(users)) / len(users)

    rows = [
        ("users segmented / in ground truth", f"{len(users)} / {len(truth)}"),
        ("events", f"{gen.events_sent}"),
        ("broker", broker.kind),
        ("input", _input_row(rate, gen.events_sent)),
        ("adjusted Rand index vs personas", f"{adjusted_rand_score(personas, live):.3f}"),
        (
            "normalised mutual information vs personas",
            f"{normalized_mutual_info_score(personas, live):.3f}",
        ),
        ("agreement with batch KMeans (ARI)", f"{adjusted_rand_score(batch, live):.3f}"),
        ("batch KMeans ARI vs personas (reference)", f"{adjusted_rand_score(personas, batch):.3f}"),
        ("silhouette (live)", f"{silhouette_score(x, live):.3f}"),
        ("silhouette (batch KMeans, reference)", f"{silhouette_score(x, batch):.3f}"),
        ("segment size entropy (1 = equal)", f"{entropy:.3f}"),
        ("flap rate (changes per user after the first)", f"{flaps:.3f}"),
        (
            "reversals: moves undone (A -> B -> A) within 24 h of event time, per move",
            f"{flapping.reversals} of {flapping.moves} ({flapping.reversal_rate:.3f})",
        ),
        ("k, and why", str((checkpoint.get("k_choice") or {}).get("reason", "-"))),
        (
            "segments born / retired / merged / split over the run",
            " / ".join(str(lineage[e]) for e in ("born", "retired", "merged", "split")),
        ),
        ("model versions published", str(checkpoint.get("version", 0))),
    ]
    shift: PersonaShift | None = getattr(args, "shift", None)
    if shift is not None:
        figures = resegmentation(changes, ground_truth, gen.shifted_event_times)
        rows += resegmentation_rows(figures, shift, catalogue)
    lines = ["# Segment quality", "", "| measure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "| segment | name | users | personas in it |", "|---|---|---|---|"]
    for sid in sorted(sizes):
        mix = Counter(p for p, lab in zip(personas, live, strict=True) if lab == sid)
        top = ", ".join(f"{p} {n}" for p, n in mix.most_common(3))
        name = catalogue.get(sid, {}).get("name", "?")
        lines.append(f"| {sid} | {name} | {sizes[sid]} | {top} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Flapping:
    """Moves (changes of users who had a segment) and how many of them were undone."""

    moves: int
    reversals: int

    @property
    def reversal_rate(self) -> float:
        return self.reversals / self.moves if self.moves else 0.0


def flap_figures(changes: list[dict[str, Any]], window_ms: int = 86_400_000) -> Flapping:
    """Count moves, and reversals: a move back to the segment a user left less than
    ``window_ms`` of event time earlier (duplicates by ``change_id`` count once).

    >>> c = [
    ...     {"change_id": "a", "user_id": "u", "previous_segment": None, "segment": 1,
    ...      "event_time": 0},
    ...     {"change_id": "b", "user_id": "u", "previous_segment": 1, "segment": 2,
    ...      "event_time": 1000},
    ...     {"change_id": "c", "user_id": "u", "previous_segment": 2, "segment": 1,
    ...      "event_time": 2000},
    ...     {"change_id": "c", "user_id": "u", "previous_segment": 2, "segment": 1,
    ...      "event_time": 2000},
    ... ]
    >>> flap_figures(c)
    Flapping(moves=2, reversals=1)
    """
    seen: set[str] = set()
    left: dict[tuple[str, int], int] = {}  # (user, segment) -> event time they left it
    moves = reversals = 0
    for msg in sorted(changes, key=lambda m: event_time_ms(m["event_time"])):
        if msg["change_id"] in seen:
            continue
        seen.add(msg["change_id"])
        prev = msg["previous_segment"]
        if prev is None:
            continue
        moves += 1
        t = event_time_ms(msg["event_time"])
        back = left.get((msg["user_id"], msg["segment"]))
        if back is not None and t - back <= window_ms:
            reversals += 1
        left[(msg["user_id"], prev)] = t
    return Flapping(moves, reversals)


def event_time_ms(value: object) -> int:
    """Epoch ms of a change message's ``event_time``: ISO-8601 (``Z`` = UTC) or ms.

    >>> event_time_ms("1970-01-01T00:00:01.250Z"), event_time_ms(1250)
    (1250, 1250)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // timedelta(milliseconds=1)
    raise ValueError(f"event_time must be ISO-8601 text or epoch ms, got {value!r}")


@dataclass(frozen=True, slots=True)
class Resegmentation:
    """How fast, and how cleanly, shifted users were moved to their new segment.

    Attributes
    ----------
    from_persona, to_persona
        The shift's personas.
    target_segment
        The segment most unshifted users of ``to_persona`` are in at the end; ``None``
        if none of them has a segment.
    target_holders, target_persona_users
        Unshifted ``to_persona`` users in the target segment at the end, and all of them.
    shifted_end_segment, shifted_end_holders
        The segment most shifted users are in at the end (``None`` if none has a
        segment), and how many of them are.
    shifted, shifted_already
        Shifted users, and of them those already in the target segment just before
        their shift (left out of the share).
    resegmented
        Shifted users (not already there) whose segment changed into the target one at
        or after their shift.
    delays_h
        For each re-segmented user, the event time from the shift to that change, in
        hours; sorted.
    events_to_resegment
        For each re-segmented user, their events from the shift up to and including the
        one that triggered the change; sorted. ``None`` if event times were not given.
    control, control_already, control_moved
        Unshifted users of ``from_persona``; those already in the target segment just
        before the shift; and of the others, those whose segment changed into the target
        one at or after the shift (false moves).
    """

    from_persona: str
    to_persona: str
    target_segment: int | None
    target_holders: int
    target_persona_users: int
    shifted_end_segment: int | None
    shifted_end_holders: int
    shifted: int
    shifted_already: int
    resegmented: int
    delays_h: tuple[float, ...]
    events_to_resegment: tuple[int, ...] | None
    control: int
    control_already: int
    control_moved: int
    #: The same figures for the segment where most shifted users end (their own segment
    #: when the model gives converted users one): shifted users already in it at their
    #: shift, those who moved into it after, the delays, and control users who moved in.
    own_already: int = 0
    own_moved: int = 0
    own_delays_h: tuple[float, ...] = ()
    control_own_moved: int = 0

    @property
    def share_resegmented(self) -> float | None:
        """``resegmented`` over the shifted users not already in the target segment."""
        n = self.shifted - self.shifted_already
        return self.resegmented / n if n else None

    @property
    def median_delay_h(self) -> float | None:
        return float(np.median(self.delays_h)) if self.delays_h else None

    @property
    def p90_delay_h(self) -> float | None:
        """90th percentile of ``delays_h``, linearly interpolated."""
        return float(np.percentile(self.delays_h, 90)) if self.delays_h else None

    @property
    def median_events(self) -> float | None:
        e = self.events_to_resegment
        return float(np.median(e)) if e else None

    @property
    def false_move_share(self) -> float | None:
        """``control_moved`` over the control users not already in the target segment."""
        n = self.control - self.control_already
        return self.control_moved / n if n else None


def _most_common(segments: Counter[int]) -> int | None:
    """The segment with the most users; the lowest id among equals."""
    return min(segments.items(), key=lambda kv: (-kv[1], kv[0]))[0] if segments else None


def _entry_into(
    history: Sequence[tuple[int, int]], target: int | None, since_ms: int
) -> tuple[bool, int | None]:
    """(already in ``target`` just before ``since_ms``, event time of the first change
    into ``target`` at or after it, or ``None``), from one user's changes in order."""
    held: int | None = None
    for t, segment in history:
        if t < since_ms:
            held = segment
            continue
        if held is not None and held == target:
            return True, None
        if segment == target:
            return False, t
    return (held is not None and held == target), None


def resegmentation(
    changes: Iterable[Mapping[str, Any]],
    ground_truth: Mapping[str, Any],
    events_after_shift: Mapping[str, Sequence[int]] | None = None,
) -> Resegmentation:
    """Time to re-segment shifted users, from segment-change records and the ground truth.

    Pure: no I/O.

    Parameters
    ----------
    changes
        Segment-change messages as dicts (``user_id``, ``segment``, ``event_time`` as
        ISO-8601 or epoch ms, optionally ``change_id``), each user's in the order they
        were decided (the order of one partition). Repeated ``change_id`` values count
        once; users not in the ground truth are ignored.
    ground_truth
        The generator's ground-truth document: ``personas`` (at the end of the span),
        ``shift`` (with ``from_persona``, ``to_persona``, ``at_ms``) and ``shifted``
        (user -> ``{"before", "after", "at_ms"}``).
    events_after_shift
        Optional: for each shifted user, the sorted event times (epoch ms) of their
        events at or after the shift, for ``events_to_resegment``.

    Returns
    -------
    Resegmentation

    Raises
    ------
    ValueError
        If the ground truth has no shift.
    """
    shift = ground_truth.get("shift")
    if not shift:
        raise ValueError("ground_truth has no shift to measure re-segmentation against")
    personas: Mapping[str, str] = ground_truth["personas"]
    shifted: Mapping[str, Mapping[str, Any]] = ground_truth.get("shifted") or {}
    from_persona, to_persona = str(shift["from_persona"]), str(shift["to_persona"])
    at_ms = int(shift["at_ms"])

    history: dict[str, list[tuple[int, int]]] = {}
    seen: set[str] = set()
    for c in changes:
        cid = c.get("change_id")
        if cid is not None:
            if cid in seen:
                continue
            seen.add(cid)
        user = str(c["user_id"])
        if user in personas:
            history.setdefault(user, []).append((event_time_ms(c["event_time"]), int(c["segment"])))

    holders = [u for u, p in personas.items() if p == to_persona and u not in shifted]
    end_segments = Counter(history[u][-1][1] for u in holders if u in history)
    target = _most_common(end_segments)
    shifted_ends = Counter(history[u][-1][1] for u in shifted if u in history)
    shifted_end = _most_common(shifted_ends)

    already = 0
    delays: list[float] = []
    n_events: list[int] = []
    for user, entry in shifted.items():
        since = int(entry["at_ms"])
        was_there, t = _entry_into(history.get(user, ()), target, since)
        if was_there:
            already += 1
        elif t is not None:
            delays.append((t - since) / _HOUR_MS)
            if events_after_shift is not None:
                times = events_after_shift.get(user, ())
                n_events.append(bisect.bisect_right(times, t) - bisect.bisect_left(times, since))

    control = [u for u, p in personas.items() if p == from_persona and u not in shifted]
    control_already = control_moved = 0
    for user in control:
        was_there, t = _entry_into(history.get(user, ()), target, at_ms)
        control_already += was_there
        control_moved += t is not None

    own_already = 0
    own_delays: list[float] = []
    for user, entry in shifted.items():
        since = int(entry["at_ms"])
        was_there, t = _entry_into(history.get(user, ()), shifted_end, since)
        own_already += was_there
        if not was_there and t is not None:
            own_delays.append((t - since) / _HOUR_MS)
    control_own_moved = sum(
        _entry_into(history.get(u, ()), shifted_end, at_ms)[1] is not None for u in control
    )

    return Resegmentation(
        from_persona=from_persona,
        to_persona=to_persona,
        target_segment=target,
        target_holders=end_segments[target] if target is not None else 0,
        target_persona_users=len(holders),
        shifted_end_segment=shifted_end,
        shifted_end_holders=shifted_ends[shifted_end] if shifted_end is not None else 0,
        shifted=len(shifted),
        shifted_already=already,
        resegmented=len(delays),
        delays_h=tuple(sorted(delays)),
        events_to_resegment=tuple(sorted(n_events)) if events_after_shift is not None else None,
        control=len(control),
        control_already=control_already,
        control_moved=control_moved,
        own_already=own_already,
        own_moved=len(own_delays),
        own_delays_h=tuple(sorted(own_delays)),
        control_own_moved=control_own_moved,
    )


def _share(n: int, of: int) -> str:
    return f"{n} / {of} ({100 * n / of:.1f} %)" if of else f"{n} / 0"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def resegmentation_rows(
    r: Resegmentation, shift: PersonaShift, catalogue: Mapping[int, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """Rows of the report table for :func:`resegmentation`'s figures."""

    def segment(sid: int | None, holders: int, of: int) -> str:
        if sid is None:
            return "none"
        name = catalogue.get(sid, {}).get("name") or "?"
        return f"{sid} {name} ({holders} of {of} users)"

    target = segment(r.target_segment, r.target_holders, r.target_persona_users)
    rows = [
        (
            "behaviour shift (ground truth)",
            f"{r.shifted} of {r.shifted + r.control} {r.from_persona} users shop as "
            f"{r.to_persona} from day {shift.at * _DAYS:.1f} of {_DAYS:.0f}",
        ),
        (f"target segment: where most unshifted {r.to_persona} users end", target),
        (
            "where most shifted users end",
            segment(r.shifted_end_segment, r.shifted_end_holders, r.shifted),
        ),
        (
            "shifted users re-segmented into the target segment",
            _share(r.resegmented, r.shifted - r.shifted_already),
        ),
        (
            "time to re-segment, median (hours of event time after the shift)",
            _num(r.median_delay_h),
        ),
        ("time to re-segment, 90th percentile (hours of event time)", _num(r.p90_delay_h)),
    ]
    if r.events_to_resegment is not None:
        rows.append(
            ("events from the shift to re-segmentation, median per user", _num(r.median_events))
        )
    rows += [
        (
            f"false moves: unshifted {r.from_persona} users moved into the target segment "
            "after the shift",
            _share(r.control_moved, r.control - r.control_already),
        ),
        (
            "already in the target segment at the shift, left out (shifted / unshifted)",
            f"{r.shifted_already} / {r.control_already}",
        ),
        (
            "shifted users who moved after the shift into the segment most of them end in",
            _share(r.own_moved, r.shifted - r.own_already),
        ),
        (
            "time to that move, median / 90th percentile (hours of event time)",
            f"{_num(_pct(r.own_delays_h, 50))} / {_num(_pct(r.own_delays_h, 90))}",
        ),
        (
            f"false moves into it: unshifted {r.from_persona} users",
            _share(r.control_own_moved, r.control),
        ),
    ]
    return rows


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def read_topic_values(
    bootstrap: str, topic: str, timeout_s: float = 120.0, quiet_s: float = 1.5
) -> list[dict[str, Any]]:
    """Every committed JSON value of ``topic``, from the beginning to its end.

    Reads past each partition's high watermark, then until ``quiet_s`` passes with
    nothing new (Tansu reports a watermark short of the real end). Within a partition
    the values come in offset order.
    """
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


if __name__ == "__main__":
    raise SystemExit(main())
