"""Erasure of one user: removes their keys (``seg:user:{id}``, ``seg:user:{id}:state``)
and their entries in the keys of others (``seg:segment:{n}:members``,
``seg:model:reassess``, ``seg:timers:{p}``, ``seg:model:sample``). Stores nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from state.client import StoreBase, call, run
from stream.checkpoint import Checkpoint


class Erasing(StoreBase):
    """Removing one user from everything the segmenter keeps in Redis."""

    if TYPE_CHECKING:
        # From :class:`state.model_store.ModelCheckpoints`, beside this in ``RedisStore``.
        def load_model(self) -> Checkpoint | None: ...

    def forget(self, user_id: str) -> Erasure:
        """Remove user ``user_id`` from everything the segmenter keeps in Redis; idempotent.

        ``user_id`` is the id as stored: the pseudonym when ids are pseudonymised. Removed:
        the user hash, the state key (windows, applied offsets, de-duplication keys, last
        change published), the user's membership of every segment the model ever gave out
        (current and retired ones), their entry in the reassessment queue, their
        event-time timer and their slot in the model's user sample. Nothing else holds a
        user id: the model and the catalogue hold aggregates.

        On one server it is one ``MULTI``/``EXEC`` transaction: readers see the user whole
        or not at all. On a Redis Cluster the membership sets and the queue live in other
        hash slots than the user's keys, so no transaction spans them: the memberships and
        the queue entry go first, the state key next and the user hash last. The hash
        names the current segment, so if anything fails half-way, running ``forget`` again
        finds the rest and finishes the job.

        A batch of the segmenter that read the user's state before this call may still
        write it back after it: see :func:`consumers.forget.forget_user`, which checks.
        """
        k = self.keys
        user_key, state_key = k.user(user_id), k.state(user_id)
        segment = call(lambda: self._r.hget(user_key, "segment"), "read a user")
        # The user's timer bucket of every partition, found by name rather than from the
        # state (which may be missing or unreadable): one key per input partition.
        bucket_pattern = k.timer_bucket(0, user_id).replace("{0}", "{*}")
        timer_keys = sorted(
            call(lambda: list(self._r.scan_iter(match=bucket_pattern)), "list the timers")
        )

        sample = call(lambda: self._r.hgetall(k.sample), "read the user sample")
        slots = [slot for slot, uid in sample.items() if uid.decode() == user_id]
        model = self.load_model()
        ids = set(range(model.next_id)) if model is not None else set()
        if segment is not None:
            ids.add(int(segment))
        segments = sorted(ids)
        pipe = self._r.pipeline(transaction=not self.cluster)
        for i in segments:
            pipe.srem(k.members(i), user_id)
        pipe.hdel(k.reassess, user_id)
        for key in timer_keys:
            pipe.zrem(key, user_id)
        if slots:
            pipe.hdel(k.sample, *slots)
        if self.cluster:
            removed = run(pipe, "remove a user from the segments")
            removed.append(call(lambda: self._r.delete(state_key), "delete a user's state"))
            removed.append(call(lambda: self._r.delete(user_key), "delete a user"))
        else:
            pipe.delete(state_key)
            pipe.delete(user_key)
            removed = run(pipe, "erase a user")
        counts = [int(n) for n in removed]
        members = counts[: len(segments)]
        queued = counts[len(segments)]
        timers = sum(counts[len(segments) + 1 : len(segments) + 1 + len(timer_keys)])
        sampled = sum(counts[len(segments) + 1 + len(timer_keys) : -2])
        state, user = counts[-2:]
        return Erasure(
            user_key=user_key,
            user_hash=user > 0,
            state=state > 0,
            segments=tuple(i for i, n in zip(segments, members, strict=True) if n),
            reassess=queued > 0,
            timer=timers > 0,
            sample=sampled > 0,
        )


@dataclass(frozen=True, slots=True)
class Erasure:
    """What :meth:`RedisStore.forget` removed for one user."""

    #: The user's hash key (the state key is this plus ``:state``).
    user_key: str
    #: Whether the user hash existed.
    user_hash: bool
    #: Whether the state key existed.
    state: bool
    #: The segments whose membership sets held the user.
    segments: tuple[int, ...]
    #: Whether the user was queued for reassessment.
    reassess: bool
    #: Whether the user had an event-time timer.
    timer: bool = False
    #: Whether the user was in the model's user sample.
    sample: bool = False

    @property
    def removed_anything(self) -> bool:
        return (
            self.user_hash
            or self.state
            or bool(self.segments)
            or self.reassess
            or self.timer
            or self.sample
        )

    def describe(self) -> list[str]:
        """One line per thing removed, for people (empty when nothing was there)."""
        lines = []
        if self.user_hash:
            lines.append(f"user hash {self.user_key}")
        if self.state:
            lines.append(f"state {self.user_key}:state (features, offsets, de-duplication keys)")
        lines += [f"membership of segment {i}" for i in self.segments]
        if self.reassess:
            lines.append("entry in the reassessment queue")
        if self.timer:
            lines.append("event-time timer")
        if self.sample:
            lines.append("slot in the model's user sample")
        return lines
