"""Users waiting for a segment without an event of their own, and what their wait means.

Two kinds of users are decided without an event: users seen before the model was seeded
(they get a first segment once it is), and members of a segment the model retired (they
move to the nearest current segment). Both wait in the reassessment queue
(``seg:model:reassess``), one :class:`QueueEntry` per user, which holds two separate facts:

- ``version``: the model version from which on the user can be decided. A retirement
  queues its members at the version that retired their segment; a process still on an
  older version (its model still has the segment) leaves them for after it adopts the
  newer one. Warm-up entries carry the version at which they were queued.
- ``token``: a random number naming this wait. A first segment given for the entry is
  stored with the user's state (``last_change`` at :data:`ASSIGN_POS`, its offset the
  token) before the transaction that publishes it commits. While the entry still holds
  that very token, the commit is in doubt and the stored change is published again, byte
  for byte; once it committed, the entry is removed, or given a fresh token if the user
  must still move. A user queued again for another reason (a later retirement) keeps the
  token of the wait they are in, so being queued never makes an old change look in doubt.

An entry leaves the queue (:func:`settlement`) only when a process whose model is at or
past the entry's version has left the user in one of its current segments.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.stored_change import StoredChange

#: Trigger position of a segment given to a user without an event of theirs.
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


def in_doubt(last_change: StoredChange | None, entry: QueueEntry | None) -> bool:
    """Whether ``last_change`` is a segment given for ``entry`` whose commit is unknown.

    >>> from stream.stored_change import StoredChange
    >>> lc = StoredChange(ASSIGN_POS, 7, b"\\x00{}")
    >>> in_doubt(lc, QueueEntry(3, 7)), in_doubt(lc, QueueEntry(3, 8)), in_doubt(lc, None)
    (True, False, False)
    """
    return (
        last_change is not None
        and entry is not None
        and last_change.pos == ASSIGN_POS
        and last_change.offset == entry.token
    )


def settlement(entry: QueueEntry, model_version: int, segment_current: bool) -> int:
    """Up to which model version the entry may leave the queue after this batch commits.

    ``segment_current`` says whether the user ends the batch in a segment of the deciding
    model. The entry is removed if the queue still holds its token at a version no newer
    than the returned one; ``-1`` means it stays (with a fresh token, so a change
    published for it is no longer taken for one in doubt).

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
