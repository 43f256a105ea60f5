"""Peer implementations of the segmentation job, for comparison with the segmenter.

Each peer is the same job written the way a team would write it without this project:
read click and purchase events from Kafka, keep per-user state in Redis, cluster users
with River's incremental K-Means, keep each user's hash and segment membership in Redis,
and publish a message when a user's segment changes. They differ from the segmenter in
*how* they run, not in *what* they compute:

- the per-event and Quix peers go one event at a time: one Redis read and one to three
  Redis writes per event, each its own round trip, and one model update per event; the
  micro-batch peer, like the segmenter, reads a batch's users in one round trip, writes
  them in one, and updates the model once per user per batch;
- one in-process model per process, with River's default random initialisation and a
  fixed k (the segmenter shares one model across the group, seeds it by k-means++ with
  k chosen by prediction strength, and keeps segment ids stable);
- no dead-letter topic, no hysteresis, no segment names, no transactions.

What they share with the segmenter is the domain code in ``stream/``: the decoder
(:func:`stream.events.decode`, so bad input is recognised the same way), the event-time
windows (:func:`stream.features.apply_events`, :func:`stream.features.compute_features`),
the feature vector and its online standardisation (:mod:`stream.scaling`), and the
state layout in Redis (its own key beside the user hash). So the comparison measures the
processing model and the framework, not a different feature computation.

:class:`OnlineSegmentation` is the work every peer does; :mod:`.per_event` runs it one
event at a time in a hand-written confluent-kafka poll loop, :mod:`.quix` in a Quix Streams
``StreamingDataFrame``, and :mod:`.micro_batch` once per user per micro-batch, with one
pipelined Redis read and one write per batch. ``python -m loadtest.peers.run`` measures them
on the local stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from confluent_kafka import KafkaError, Message
from river import cluster

from state.keys import Keys
from stream.events import Event
from stream.features import UserState, apply_events, compute_features
from stream.messages import SCHEMA_VERSION, change_id, iso_ms
from stream.scaling import MODEL_FEATURES, OnlineScaler, to_vector
from stream.state_codec import decode_state, encode_state

#: Number of clusters: fixed, as a team without a k-selection step would fix it.
N_CLUSTERS = 5
#: River's K-Means step size floor, the segmenter's default ``kmeans_halflife``.
HALFLIFE = 0.01
#: Seed of River's random initial centres, so that runs are repeatable.
SEED = 42


@dataclass(frozen=True, slots=True)
class PeerResult:
    """One peer's measured run.

    Attributes
    ----------
    name
        Which peer.
    events
        Input messages processed (invalid ones included).
    elapsed_s
        Wall time from the first message received to the end of the run (last change
        delivered, offsets committed, consumer closed).
    cpu_s
        CPU time of the whole Python process over the same span (all its threads,
        librdkafka's included; the broker and Redis are other processes).
    events_per_s
        ``events / elapsed_s``.
    changes
        Segment-change messages produced.
    invalid
        Messages the decoder rejected (skipped; the peers publish no dead letters).
    """

    name: str
    events: int
    elapsed_s: float
    cpu_s: float
    events_per_s: float
    changes: int = 0
    invalid: int = 0

    @classmethod
    def measured(
        cls,
        name: str,
        events: int,
        elapsed_s: float,
        cpu_s: float,
        changes: int = 0,
        invalid: int = 0,
    ) -> PeerResult:
        """A result with ``events_per_s`` computed from ``events`` and ``elapsed_s``.

        >>> PeerResult.measured("p", 1000, 2.0, 1.5).events_per_s
        500.0
        """
        rate = events / elapsed_s if elapsed_s > 0 else float("inf")
        return cls(name, events, elapsed_s, cpu_s, rate, changes, invalid)


class Deliveries:
    """The delivery reports of a peer's change messages (the producer's ``on_delivery``):
    failures are kept, and :meth:`check` raises at the end of the run if any message was
    not delivered.

    >>> d = Deliveries()
    >>> d.check("p", 0)
    >>> d.check("p", 2)
    Traceback (most recent call last):
    ...
    RuntimeError: p: 2 change messages undelivered, 0 failed ()
    """

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(err.str())

    def check(self, name: str, remaining: int) -> None:
        """Raise ``RuntimeError`` if ``remaining`` messages were left unflushed or any
        delivery failed."""
        if remaining or self.failed:
            raise RuntimeError(
                f"{name}: {remaining} change messages undelivered, {len(self.failed)} failed "
                f"({'; '.join(self.failed[:3])})"
            )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did to its user.

    ``change`` is the segment-change message (a JSON-ready dict) when the user's segment
    changed, a new user's first segment included; ``None`` otherwise.
    """

    user_id: str
    state: UserState
    features: dict[str, float | None]
    segment: int
    previous: int | None
    change: dict[str, Any] | None


class OnlineSegmentation:
    """The per-event work of both peers: fold the event in, scale, predict, learn.

    For each event: :func:`~stream.features.apply_events` on the user's stored state (an
    event already applied, a duplicate or a late one changes nothing and yields
    ``None``), :func:`~stream.features.compute_features`, the model vector, an
    :class:`~stream.scaling.OnlineScaler` that learns it and standardises it, then River's
    ``KMeans.predict_one`` and ``learn_one`` on it. This is what the River documentation
    shows for online clustering, applied per event as a stream processor calls it.
    """

    def __init__(
        self, n_clusters: int = N_CLUSTERS, halflife: float = HALFLIFE, seed: int = SEED
    ) -> None:
        self.model = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, seed=seed)
        self.scaler = OnlineScaler.empty(len(MODEL_FEATURES))

    def step(self, state: UserState | None, event: Event, now_ms: int) -> Outcome | None:
        """Apply ``event`` to its user's ``state``; ``None`` if it changed nothing."""
        return self.step_many(state, [event], now_ms)

    def step_many(
        self, state: UserState | None, events: list[Event], now_ms: int
    ) -> Outcome | None:
        """Apply one user's ``events`` (in order) to their ``state`` and update the model
        once, as a micro-batch does; ``None`` if they changed nothing."""
        result = apply_events(state, events)
        if not result.applied:
            return None
        event = result.applied[-1]
        s = result.state
        features = compute_features(s)
        x = to_vector(features)
        self.scaler.learn(x)
        z = dict(zip(MODEL_FEATURES, self.scaler.transform(x).tolist(), strict=True))
        segment = int(self.model.predict_one(z))
        self.model.learn_one(z)
        previous = s.segment
        change = None
        if segment != previous:
            s.segment = segment
            s.segment_since_ms = event.ts_ms
            change = change_message(event, previous, segment, features, now_ms)
        return Outcome(event.user_id, s, features, segment, previous, change)


def change_message(
    event: Event,
    previous: int | None,
    segment: int,
    features: dict[str, float | None],
    now_ms: int,
) -> dict[str, Any]:
    """The segment-change message: the fields of ``segments.changes`` a peer can fill.

    Same ``change_id``, user, segments, times and features as the segmenter's message;
    no names, model version or explanation (the peers have no catalogue or checkpoint).
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "change_id": change_id(event.user_id, event.event_id, previous, segment),
        "user_id": event.user_id,
        "previous_segment": previous,
        "segment": segment,
        "event_time": iso_ms(event.ts_ms),
        "emitted_at": iso_ms(now_ms),
        "features": features,
    }


def user_fields(outcome: Outcome) -> dict[str, str]:
    """The user-hash fields a peer writes: ``segment`` and ``features``."""
    return {
        "segment": str(outcome.segment),
        "features": orjson.dumps(outcome.features).decode(),
    }


def load_state(blob: bytes | None) -> UserState | None:
    """A user's state from its state key (``None`` for a user not seen yet)."""
    return None if blob is None else decode_state(blob)


class RedisCommands(Protocol):
    """The Redis commands a peer issues (``redis.Redis`` provides them)."""

    def get(self, name: str) -> Any: ...

    def set(self, name: str, value: bytes) -> Any: ...

    def hset(self, name: str, *, mapping: Mapping[Any, Any]) -> Any: ...

    def srem(self, name: str, *values: str) -> Any: ...

    def sadd(self, name: str, *values: str) -> Any: ...


def read_state(client: RedisCommands, keys: Keys, user_id: str) -> UserState | None:
    """One ``GET`` of the user's state key: one round trip."""
    return load_state(client.get(keys.state(user_id)))


def write_user(client: RedisCommands, keys: Keys, outcome: Outcome) -> None:
    """Write the user's hash, and move them between membership sets if they changed.

    One ``SET`` of the state and one ``HSET``; when the segment changed, an ``SREM`` from
    the previous segment's set (if any) and an ``SADD`` to the new one. Each command is its
    own round trip, as plain per-event code issues them.
    """
    client.set(keys.state(outcome.user_id), encode_state(outcome.state))
    client.hset(keys.user(outcome.user_id), mapping=user_fields(outcome))
    if outcome.change is None:
        return
    if outcome.previous is not None:
        client.srem(keys.members(outcome.previous), outcome.user_id)
    client.sadd(keys.members(outcome.segment), outcome.user_id)
