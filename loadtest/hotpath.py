"""CPU cost of the segmenter's batch path per event, stage by stage, with no I/O.

The benchmark's backlog (same seed, span and event mix as ``make bench``) is cut into
batches, and each batch goes through what :meth:`consumers.app.Segmenter.handle` does
between the Kafka client and the Redis socket: decode and validate every message, group by
user, decode the stored states, :func:`stream.batch.process_batch` (features, scaling,
decisions, learning), then build the write (the public hash, the encoded state, the packed
protocol bytes). States are kept in a dict in place of Redis, so nothing waits on I/O: the
figures are the process's own CPU time, the part that one core bounds.

    python -m loadtest.hotpath --users 50000 --events 500000

It prints microseconds per event for each stage and the events per second of the whole,
which is what one process could reach if consuming, Redis and the broker cost nothing.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import orjson

from consumers.app import tune_collector
from loadtest.generator import BACKLOG_DAYS, BACKLOG_SEED, DAY_MS
from loadtest.personas import ShopperSimulator
from state.keys import Keys
from state.user_states import fenced_write_args, loaded_state, pack_commands, write_commands
from stream.batch import Clock, SegmentNames, process_batch
from stream.checkpoint import ModelParams, merge, refit_due
from stream.events import DeadLetter, Event, Limits, decode
from stream.features import UserState, compute_features
from stream.model import SegmentModel
from stream.scaling import to_vector
from stream.state_codec import decode_state, encode_state

#: Stages in the order a batch goes through them.
STAGES = ("decode", "read states", "process batch", "build writes", "model sync")


@dataclass
class StageTimes:
    """CPU seconds per stage over a run, and what the run covered."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    events: int = 0
    user_updates: int = 0
    write_bytes: int = 0
    #: The sweep after the backlog: users re-decided with no event of theirs, and the CPU
    #: seconds it took (reading, deciding, building the writes), in chunks of
    #: ``SWEEP_CHUNK`` as the segmenter sweeps.
    swept_users: int = 0
    sweep_s: float = 0.0

    @property
    def sweep_us_per_user(self) -> float:
        return self.sweep_s / max(self.swept_users, 1) * 1e6

    def per_event_us(self, stage: str) -> float:
        return self.seconds[stage] / max(self.events, 1) * 1e6

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def report(self) -> str:
        """One line per stage, then the total and the rate it allows."""
        lines = [
            f"{s:14} {self.per_event_us(s):6.2f} us/event  {self.seconds[s]:6.2f} s" for s in STAGES
        ]
        rate = self.events / self.total_s if self.total_s else 0.0
        lines.append(
            f"{'total':14} {self.total_s / max(self.events, 1) * 1e6:6.2f} us/event  "
            f"{self.total_s:6.2f} s = {rate:,.0f} events/s of CPU alone; "
            f"{self.events / max(self.user_updates, 1):.1f} events per user update, "
            f"{self.write_bytes / max(self.user_updates, 1):.0f} bytes written per update"
        )
        if self.swept_users:
            lines.append(
                f"{'sweep':14} {self.sweep_us_per_user:6.2f} us/user   {self.sweep_s:6.2f} s "
                f"to re-decide {self.swept_users:,} users with no event: "
                f"{self.sweep_us_per_user:.0f} s of one core per million users"
            )
        return "\n".join(lines)


def backlog_messages(n_users: int, n_events: int) -> list[tuple[bytes, bytes, str, int]]:
    """The benchmark backlog as (value, key, topic, partition), in production order."""
    end_ms = int(time.time() * 1000)
    sim = ShopperSimulator(n_users, BACKLOG_SEED, end_ms - int(BACKLOG_DAYS * DAY_MS), end_ms)
    out = []
    for doc in sim.events(n_events):
        user = str(doc["user_id"])
        topic = "shop.purchases" if doc["type"] == "purchase" else "shop.clicks"
        out.append((orjson.dumps(doc), user.encode(), topic, hash(user) % 4))
    return out


def run(
    messages: Sequence[tuple[bytes, bytes, str, int]],
    batch: int = 5000,
    sweep: bool = True,
    stored: dict[str, bytes] | None = None,
    now_ms: int | None = None,
) -> StageTimes:
    """Time every stage over ``messages`` cut into batches of ``batch``; then, with
    ``sweep``, re-decide every user as a sweep would (:func:`_sweep`).

    Users' states are kept in ``stored`` (a new dict if not given), by user id, as the
    store keeps them (:func:`state.user_states.stored_state`).
    Batches are processed at the wall-clock time, or at ``now_ms`` when given.
    """
    times = StageTimes()
    stored = {} if stored is None else stored
    fixed_now = now_ms
    keys = Keys()
    params = ModelParams(k_min=6, k_max=6, seed=3)
    model = SegmentModel(params)
    ckpt, _ = merge(None, model.delta(), None, params, 0)
    model.adopt(ckpt)
    names = SegmentNames()
    limits = Limits()
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    clock = time.process_time
    for lo in range(0, len(messages), batch):
        now_ms = int(time.time() * 1000) if fixed_now is None else fixed_now
        t0 = clock()
        by_user: dict[str, list[Event]] = defaultdict(list)
        for value, key, topic, part in messages[lo : lo + batch]:
            off = offsets[(topic, part)]
            offsets[(topic, part)] = off + 1
            r = decode(value, key, topic, part, off, now_ms, limits)
            if not isinstance(r, DeadLetter):
                by_user[r.user_id].append(r)
        t1 = clock()
        states: dict[str, UserState | None] = {
            u: (decode_state(loaded_state(b)) if (b := stored.get(u)) is not None else None)
            for u in by_user
        }
        t2 = clock()
        result = process_batch(by_user, states, model, names, 0.15, 32, now_ms)
        t3 = clock()
        calls = []
        for u in result.updates:
            if not u.write:
                continue
            args = fenced_write_args(u, encode_state(u.state), model.version)
            calls.append((keys.user(u.user_id), keys.state(u.user_id), args))
            stored[u.user_id] = cast(bytes, args[1])  # the state as stored
        packed = pack_commands(write_commands(calls))
        t4 = clock()
        # Once a batch, as the shared model's sync merges what was learned (the process
        # syncs every 2 s or 200 updates, so about as often at this rate).
        # Seeds and refits are made on a snapshot of sampled users as of the watermark
        # (here: the first users stored, as of the batch's newest event).
        wm = max(e.ts_ms for evs in by_user.values() for e in evs)
        snapshot = None
        if not ckpt.ready or refit_due(ckpt, params, model.delta().updates, wm):
            sampled = list(stored)[: params.reservoir_size]
            snapshot = np.stack(
                [
                    to_vector(compute_features(decode_state(loaded_state(stored[u])), wm))
                    for u in sampled
                ]
            )
        ckpt, _ = merge(ckpt, model.delta(), snapshot, params, now_ms, wm)
        model.adopt(ckpt)
        t5 = clock()
        spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
        for stage, seconds in zip(STAGES, spans, strict=True):
            times.seconds[stage] += seconds
        times.events += min(batch, len(messages) - lo)
        times.user_updates += len(calls)
        times.write_bytes += len(packed)
    if sweep and stored:
        _sweep(stored, model, names, times)
    return times


#: Users one sweep call re-decides (``SEGMENTER_SWEEP_BATCH``'s default).
SWEEP_CHUNK = 1000
#: How long after the backlog's newest event the sweep looks at everyone: quiet long
#: enough that many move (a month and a half).
SWEEP_AFTER_MS = 45 * DAY_MS


def _sweep(
    stored: dict[str, bytes], model: SegmentModel, names: SegmentNames, times: StageTimes
) -> None:
    """Re-decide every stored user as their timers would, as of the backlog's newest event
    plus :data:`SWEEP_AFTER_MS`, and time it."""
    keys = Keys()
    users = list(stored)
    newest = max(decode_state(loaded_state(stored[u])).last_event_ms for u in users[:SWEEP_CHUNK])
    wm = newest + SWEEP_AFTER_MS
    mark_topic = "segments.marks"
    clock = time.process_time
    t0 = clock()
    for lo in range(0, len(users), SWEEP_CHUNK):
        chunk = users[lo : lo + SWEEP_CHUNK]
        states: dict[str, UserState | None] = {
            u: decode_state(loaded_state(stored[u])) for u in chunk
        }
        result = process_batch(
            {},
            states,
            model,
            names,
            0.15,
            32,
            wm,
            clock=Clock(wm),
            sweep=chunk,
            timers=dict.fromkeys(chunk, wm),
            marks={u: (f"{mark_topic}:0", lo // SWEEP_CHUNK) for u in chunk},
            mark_topic=mark_topic,
        )
        calls = []
        for u in result.updates:
            if u.write:
                args = fenced_write_args(u, encode_state(u.state), model.version, watermark_ms=wm)
                calls.append((keys.user(u.user_id), keys.state(u.user_id), args))
        pack_commands(write_commands(calls))
        times.swept_users += len(chunk)
    times.sweep_s += clock() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args(argv)
    messages = backlog_messages(args.users, args.events)
    tune_collector()  # as ``segmenter run`` does
    print(f"{len(messages)} events from {args.users} users, batches of {args.batch}")
    print(run(messages, args.batch).report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
