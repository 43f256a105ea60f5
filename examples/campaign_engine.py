"""Example: a campaign engine that picks the users of a segment, with their features, from Redis.

What it reads (default prefix ``seg:``, ``SEGMENTER_REDIS_PREFIX``; see the README's
"Redis keys"):

``seg:segments``
    A hash, segment id -> JSON ``{segment, name, description, size, profile}``: how a
    name a marketer uses (``high_value``) becomes a segment id.
``seg:segment:{<id>}:members``
    A set of the segment's user ids, read with ``SSCAN`` in pages: never ``SMEMBERS`` on
    a big set (one reply of every member blocks Redis), never ``SCAN`` of the keyspace.
``seg:user:{<user_id>}``
    A hash per user: ``segment``, ``segment_name``, ``segment_since``, ``model_version``,
    ``last_event_time``, and ``features``, a JSON object in human units. Read with one
    ``HGETALL`` per user, pipelined: one round trip per page of members.

Two things to know when reading them:

- **The hash's** ``features`` **are kept small.** Window counts are grouped by event
  type under ``counts``, in window order ``1h, 24h, 7d, 30d, 90d, 365d``
  (``counts["purchases"][3]`` is ``purchases_30d``; a type with no event is left out),
  and spend, rates and days of zero are not stored: read a missing feature as 0.
  :func:`stream.features.full_features` gives the flat features back.
  ``days_since_last_purchase`` is null (present, not missing) for a user who never
  bought.
- **The user hash is the truth.** The segmenter updates a batch's user hashes, then
  their membership sets, so for a moment a user can be in a set while their hash already
  names another segment (or is gone: ``segmenter forget``). Such users are skipped here.
  ``SSCAN`` may also return a member twice (when the set grows meanwhile); each user is
  yielded once.

Run it::

    .venv/bin/python -m examples.campaign_engine high_value --min spend_30d=200
    .venv/bin/python -m examples.campaign_engine 3 --redis-url redis://127.0.0.1:6379/0 --json

The first lists the users of the segment named ``high_value`` who spent at least 200 over
30 days; the second every user of segment 3, one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from stream.features import full_features

#: Features shown by default, besides those a ``--min``/``--max`` names.
SHOWN = ("events_30d", "purchases_30d", "spend_30d", "days_since_last_purchase")


@dataclass(frozen=True, slots=True)
class Member:
    """A user of a segment, as their hash in Redis describes them."""

    user_id: str
    segment: int
    segment_name: str
    segment_since: str
    features: dict[str, float | None]


def read_catalogue(r: Any, prefix: str = "seg:") -> dict[int, dict[str, Any]]:
    """Segment id -> catalogue entry (``segment``, ``name``, ``description``, ``size``,
    ``profile``), from ``seg:segments``."""
    raw = r.hgetall(f"{prefix}segments")
    return {int(k): json.loads(v) for k, v in raw.items()}


def resolve_segment(catalogue: Mapping[int, Mapping[str, Any]], wanted: str) -> int:
    """The id of the segment named ``wanted``, or ``wanted`` itself if it is an id.

    Raises
    ------
    LookupError
        If no segment has that name or id; the message lists the segments.

    Examples
    --------
    >>> cat = {0: {"name": "new"}, 3: {"name": "high_value"}}
    >>> resolve_segment(cat, "high_value"), resolve_segment(cat, "0")
    (3, 0)
    """
    for segment, entry in catalogue.items():
        if entry["name"] == wanted or str(segment) == wanted:
            return segment
    known = ", ".join(f"{s} ({e['name']})" for s, e in sorted(catalogue.items()))
    raise LookupError(f"no segment {wanted!r}; segments: {known or 'none yet'}")


def members(r: Any, segment: int, prefix: str = "seg:", page: int = 500) -> Iterator[Member]:
    """The users of ``segment`` with their features: ``SSCAN`` a page of the membership
    set, ``HGETALL`` its users in one pipelined round trip, and so on.

    ``r`` is a ``redis.Redis`` (or ``redis.RedisCluster``) made with
    ``decode_responses=True``.
    """
    key = f"{prefix}segment:{{{segment}}}:members"
    seen: set[str] = set()
    cursor = None
    while cursor != 0:
        cursor, page_ids = r.sscan(key, cursor or 0, count=page)
        fresh = [u for u in page_ids if u not in seen]
        seen.update(fresh)
        # Not a transaction: the reads are independent, and the users of a page live in
        # different slots of a Redis Cluster.
        pipe = r.pipeline(transaction=False)
        for user_id in fresh:
            pipe.hgetall(f"{prefix}user:{{{user_id}}}")
        for user_id, h in zip(fresh, pipe.execute(), strict=True):
            if not h or h.get("segment") != str(segment):
                continue  # moved on, or forgotten, since the set was read: see above
            yield Member(
                user_id,
                segment,
                h["segment_name"],
                h.get("segment_since", ""),
                full_features(json.loads(h["features"])),
            )


def within(
    items: Iterable[Member],
    minimum: Mapping[str, float] | None = None,
    maximum: Mapping[str, float] | None = None,
) -> Iterator[Member]:
    """The members whose features are within the bounds (a null value is never within).

    Examples
    --------
    >>> m = Member("u1", 3, "high_value", "", {"spend_30d": 250.0,
    ...                                       "days_since_last_purchase": None})
    >>> [x.user_id for x in within([m], {"spend_30d": 200})]
    ['u1']
    >>> list(within([m], {"spend_30d": 300})), list(within([m], None, {"spend_30d": 100}))
    ([], [])
    >>> list(within([m], None, {"days_since_last_purchase": 7}))  # never bought: null
    []
    """
    bounds = [(k, v, 1) for k, v in (minimum or {}).items()]
    bounds += [(k, v, -1) for k, v in (maximum or {}).items()]
    for m in items:
        if all(_within(m, name, bound, sign) for name, bound, sign in bounds):
            yield m


def _within(m: Member, name: str, bound: float, sign: int) -> bool:
    """``feature >= bound`` for sign 1, ``feature <= bound`` for sign -1."""
    if name not in m.features:
        raise LookupError(f"no feature {name!r}; features: {', '.join(sorted(m.features))}")
    value = m.features[name]
    return value is not None and sign * (value - bound) >= 0


def _bound(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEATURE=NUMBER, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """List a segment's users, with their features, as a table or JSON lines."""
    ap = argparse.ArgumentParser(description="List a segment's users and their features.")
    ap.add_argument("segment", help="segment name (high_value) or id (3)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--prefix", default="seg:", help="the segmenter's SEGMENTER_REDIS_PREFIX")
    ap.add_argument("--cluster", action="store_true", help="Redis Cluster (the URL names a node)")
    ap.add_argument("--min", type=_bound, action="append", default=[], metavar="FEATURE=N")
    ap.add_argument("--max", type=_bound, action="append", default=[], metavar="FEATURE=N")
    ap.add_argument("--json", action="store_true", help="one JSON object per user")
    args = ap.parse_args(argv)
    client = redis.RedisCluster if args.cluster else redis.Redis
    r = client.from_url(args.redis_url, decode_responses=True)
    try:
        segment = resolve_segment(read_catalogue(r, args.prefix), args.segment)
        chosen = within(members(r, segment, args.prefix), dict(args.min), dict(args.max))
        shown = list(dict.fromkeys([*SHOWN, *(k for k, _ in args.min + args.max)]))
        n = 0
        for m in chosen:
            if args.json:
                print(json.dumps(asdict(m)))
            else:
                if n == 0:
                    print(f"{'user':20} {'segment':20} " + " ".join(f"{k:>24}" for k in shown))
                cells = " ".join(f"{_cell(m.features[k]):>24}" for k in shown)
                print(f"{m.user_id:20} {m.segment_name:20} {cells}")
            n += 1
        print(f"{n} users of segment {segment}", file=sys.stderr)
    except (LookupError, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cell(value: float | None) -> str:
    return "never" if value is None else f"{value:g}"


if __name__ == "__main__":
    raise SystemExit(main())
