"""Users waiting for a segment without an event of their own, and what their wait means.

Two kinds of users are decided without an event: users seen before the model was seeded
(they get a first segment once it is), and members of a segment the model retired (they
move to the nearest current segment). Both wait in the reassessment queue
(``seg:model:reassess``), one :class:`QueueEntry` per user, which holds two separate facts:

- ``version``: the model version from which on the user can be decided. A retirement
  queues its members at the version that retired their segment; a process still on an
  older version (its model still has the segment) leaves them for after it adopts the
  newer one. Warm-up entries carry the version at which they were queued.
- ``token``: a random number naming this wait. An entry leaves the queue
  (:func:`settlement`) only once the batch that dealt with it committed, only if it
  still holds the token it was read with, and only when a process whose model is at or
  past the entry's version has left the user in one of its current segments; a user
  queued again meanwhile (a later retirement) keeps their token but has their version
  raised, so their new wait is not lost.

Whether a change made for an entry was committed is not the queue's concern: it is
stored at a *mark* that the batch's transaction commits in the consumer group
(:func:`stream.batch.process_batch`), so it is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Change-id key prefix of a segment given to a user without an event of theirs.
ASSIGN_POS = "assign"

#: Tokens are 48-bit: exact in Redis's Lua numbers (doubles) and in the state's offsets.
TOKEN_BITS = 48


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One user's wait in the reassessment queue.

    Examples
    --------
    >>> e = QueueEntry.parse(b"42:1234567")
    >>> e, e.encode()
    (QueueEntry(version=42, token=1234567), '42:1234567')
    >>> QueueEntry.parse(b"not an entry") is None
    True
    """

    version: int
    token: int

    def encode(self) -> str:
        """The entry as the queue hash stores it: ``version:token``."""
        return f"{self.version}:{self.token}"

    @classmethod
    def parse(cls, raw: bytes | str | None) -> QueueEntry | None:
        """The entry stored as ``raw``; ``None`` for no entry or one in another format."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        version, sep, token = text.partition(":")
        if not sep or not version.isdigit() or not token.isdigit():
            return None
        return cls(int(version), int(token))


def settlement(entry: QueueEntry, model_version: int, segment_current: bool) -> int:
    """Up to which model version the entry may leave the queue after this batch commits.

    ``segment_current`` says whether the user ends the batch in a segment of the deciding
    model. The entry is removed if the queue still holds its token at a version no newer
    than the returned one; ``-1`` means it stays.

    >>> settlement(QueueEntry(5, 1), model_version=6, segment_current=True)
    6
    >>> settlement(QueueEntry(5, 1), model_version=4, segment_current=True)  # too old
    -1
    >>> settlement(QueueEntry(5, 1), model_version=6, segment_current=False)
    -1
    """
    if model_version >= entry.version and segment_current:
        return model_version
    return -1
