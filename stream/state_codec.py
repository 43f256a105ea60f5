"""A compact, exact binary encoding of :class:`~stream.features.UserState`.

The state is the largest thing the segmenter keeps per user, and there is one per user
ever seen, so its size is most of the Redis memory per user. JSON spends most of that on
digits: absolute bucket indices, float counts (``1.0``), 19-digit de-duplication keys.
This encoding keeps the same values in about a fifth of the bytes:

- bucket rows store their index relative to the user's latest one (always under 60), and
  their six counts as single bytes when all are under 256 (nearly every row), followed
  by the spend only in rows that hold one; busier rows have 32-bit counts;
- de-duplication keys are 48 bits (:func:`stream.features.event_key`), six bytes each;
- category times are kept relative to the latest event (under 30 days, so 32 bits);
- the stored last change is kept as :class:`~stream.stored_change.StoredChange` packs
  it: the message's fields, not its JSON;
- a small blob (most users: one visit or a few) is then deflated (raw, no header or
  checksum) with a preset dictionary when that makes it smaller. Deflate alone finds
  little to repeat within a few hundred bytes; what repeats is across users (the layout
  of the header and of the stored change, topic, segment and category names, the high
  bytes of timestamps), and the dictionary holds that: the states of 30,000 users of one
  or two events, 353 bytes plain on average, came to 160 where deflate alone made them
  222. It costs about what deflate alone did (29 µs an encode against 28, measured once):
  the compressor is set up with the dictionary once and copied per blob. Larger blobs
  belong to busy users, who are written most often; they stay plain.

The dictionary (``stream/state_dictionary.bin``, :data:`DICTIONARY_SIZE` bytes) is
trained on simulated shoppers' states by ``python -m loadtest.state_dictionary``. The
blobs in Redis depend on it, so it never changes under a format byte: a new dictionary
needs a new byte, and the old one kept for reading.

Decoding gives back an equal state, so features computed from a decoded state are the
ones computed before encoding. Blobs start with a format byte: :data:`FORMAT` for the
plain layout, :data:`DEFLATED_WITH_DICTIONARY` for the plain layout (its format byte
included) deflated with the dictionary; :data:`DEFLATED` (deflated without it, as
earlier versions wrote) is still read.

Examples
--------
>>> from stream.events import Event
>>> import orjson
>>> from stream.features import apply_events
>>> e = Event("e1", "u1", "purchase", 1_700_000_000_000, "shop.purchases", 0, 5, amount=20.0)
>>> s = apply_events(None, [e]).state
>>> blob = encode_state(s)
>>> decode_state(blob) == s, blob[0] == DEFLATED_WITH_DICTIONARY
(True, True)
>>> len(blob), len(plain_blob(blob)), len(orjson.dumps(s.to_dict()))
(43, 185, 340)
"""

from __future__ import annotations

import functools
import struct
import zlib
from importlib import resources
from typing import Any

from stream.errors import SegmenterError
from stream.features import GRAINS, UserState
from stream.stored_change import StoredChange

#: The first byte of a blob in the plain layout.
FORMAT = 3
#: The first byte of a blob deflated without a dictionary (no longer written, still read):
#: what follows inflates to a blob in the plain layout.
DEFLATED = 4
#: The first byte of a blob deflated with the preset dictionary (``state_dictionary.bin``).
DEFLATED_WITH_DICTIONARY = 5
_DEFLATED_BYTE = bytes([DEFLATED])
_DICTIONARY_BYTE = bytes([DEFLATED_WITH_DICTIONARY])
#: Length of the preset dictionary.
DICTIONARY_SIZE = 4096
# A window of 8 KiB holds the dictionary and any blob deflated; the smallest hash tables
# and a copy of the compressor per blob are then a few kilobytes.
_WINDOW_BITS = 13
_MEM_LEVEL = 5
_LEVEL = 6
# Blobs of these lengths are deflated (see above): below, nothing worth a call is saved;
# above, the cost grows with the length while the saving falls.
_DEFLATE_FROM = 64
_DEFLATE_UP_TO = 448

_NO_TIME = -1
# format, latest event, first seen, last purchase, segment, segment since, then counts of
# minute, hour, day, week and period rows, categories, de-dup keys, offsets, and flags
_HEADER = struct.Struct("<BqqqiqBBBBBBBBB")
_LIFETIME = struct.Struct("<6Id")
_NARROW = struct.Struct("<7B")  # relative index, six counts
_SPEND = struct.Struct("<7Bd")  # relative index | 0x40, six counts, spend
_WIDE = struct.Struct("<B6Id")  # relative index | 0x80, six counts, spend
_SPEND_FLAG = 0x40
_WIDE_FLAG = 0x80
_LEN16 = struct.Struct("<H")
_CATEGORY_AGE = struct.Struct("<I")
_OFFSET = struct.Struct("<q")
_LC = struct.Struct("<qI")
_KEY_BYTES = 6
_HAS_LAST_CHANGE = 1
_HAS_SEGMENT_NAME = 2
_INCOMPLETE = 4
_HAS_PRICES = 8
_PRICES = struct.Struct("<dd")
_GRAINS = GRAINS


def _rows(buckets: dict[int, list[float]], now_index: int, out: list[bytes]) -> None:
    narrow, with_spend, wide = _NARROW.pack, _SPEND.pack, _WIDE.pack
    for k, row in buckets.items():
        rel = now_index - k
        if not 0 <= rel < _SPEND_FLAG:
            raise ValueError(f"bucket {k} is {rel} grains from the latest one: not pruned")
        c0, c1, c2, c3, c4, c5, spend = row
        if max(c0, c1, c2, c3, c4, c5) >= 256:
            out.append(
                wide(rel | _WIDE_FLAG, int(c0), int(c1), int(c2), int(c3), int(c4), int(c5), spend)
            )
        elif not spend:
            out.append(narrow(rel, int(c0), int(c1), int(c2), int(c3), int(c4), int(c5)))
        else:
            out.append(
                with_spend(
                    rel | _SPEND_FLAG, int(c0), int(c1), int(c2), int(c3), int(c4), int(c5), spend
                )
            )


def _text(value: str, out: list[bytes]) -> None:
    raw = value.encode()
    out.append(_LEN16.pack(len(raw)))
    out.append(raw)


def encode_state(s: UserState) -> bytes:
    """The state as a compact blob (the inverse of :func:`decode_state`)."""
    if len(s.minutes) > 255 or len(s.recent_events) > 255 or len(s.offsets) > 255:
        raise ValueError("state holds more rows, keys or offsets than the format's 255")
    flags = (
        (_HAS_LAST_CHANGE if s.last_change is not None else 0)
        | (_HAS_SEGMENT_NAME if s.segment_name is not None else 0)
        | (_INCOMPLETE if s.incomplete else 0)
        | (_HAS_PRICES if s.price_weight else 0)
    )
    out = [
        _HEADER.pack(
            FORMAT,
            s.last_event_ms,
            s.first_seen_ms,
            _NO_TIME if s.last_purchase_ms is None else s.last_purchase_ms,
            -1 if s.segment is None else s.segment,
            _NO_TIME if s.segment_since_ms is None else s.segment_since_ms,
            len(s.minutes),
            len(s.hours),
            len(s.days),
            len(s.weeks),
            len(s.periods),
            len(s.categories),
            len(s.recent_events),
            len(s.offsets),
            flags,
        ),
        _LIFETIME.pack(*(int(c) for c in s.lifetime[:6]), s.lifetime[6]),
    ]
    if s.price_weight:
        out.append(_PRICES.pack(s.price_sum, s.price_weight))
    now = s.last_event_ms
    for buckets, grain in zip(s.buckets(), _GRAINS, strict=True):
        _rows(buckets, now // grain, out)
    for name, seen in s.categories.items():
        _text(name, out)
        out.append(_CATEGORY_AGE.pack(now - seen))
    out.append(b"".join(k.to_bytes(_KEY_BYTES, "little") for k in s.recent_events))
    for pos, off in s.offsets.items():
        _text(pos, out)
        out.append(_OFFSET.pack(off))
    if s.segment_name is not None:
        _text(s.segment_name, out)
    if s.last_change is not None:
        lc = s.last_change
        _text(lc.pos, out)
        out.append(_LC.pack(lc.offset, len(lc.packed)))
        out.append(lc.packed)
    plain = b"".join(out)
    if not _DEFLATE_FROM <= len(plain) <= _DEFLATE_UP_TO:
        return plain
    deflate = _compressor().copy()
    packed = deflate.compress(plain) + deflate.flush()
    return _DICTIONARY_BYTE + packed if len(packed) + 1 < len(plain) else plain


@functools.cache
def _dictionary() -> bytes:
    zdict = resources.files("stream").joinpath("state_dictionary.bin").read_bytes()
    if len(zdict) != DICTIONARY_SIZE:
        raise SegmenterError(
            f"stream/state_dictionary.bin holds {len(zdict)} bytes, not {DICTIONARY_SIZE}: "
            "the installation is damaged; reinstall the segmenter"
        )
    return zdict


@functools.cache
def _compressor() -> Any:
    """A compressor primed with the dictionary, to be copied for each blob."""
    return zlib.compressobj(
        _LEVEL, zlib.DEFLATED, -_WINDOW_BITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, _dictionary()
    )


def _inflate(data: memoryview, wbits: int, zdict: bytes) -> bytes:
    inflate = zlib.decompressobj(wbits, zdict) if zdict else zlib.decompressobj(wbits)
    try:
        plain = inflate.decompress(data)
    except zlib.error as exc:
        raise ValueError(f"deflated user-state blob does not inflate: {exc}") from None
    if not inflate.eof:
        raise ValueError("deflated user-state blob is cut short")
    if inflate.unused_data:
        raise ValueError(f"deflated user-state blob has {len(inflate.unused_data)} unread bytes")
    return plain


def plain_blob(blob: bytes) -> bytes:
    """``blob`` in the plain layout: inflated if it was deflated, else as it is."""
    if blob[:1] == _DICTIONARY_BYTE:
        return _inflate(memoryview(blob)[1:], -_WINDOW_BITS, _dictionary())
    if blob[:1] == _DEFLATED_BYTE:
        return _inflate(memoryview(blob)[1:], -15, b"")
    return blob


class _Reader:
    """A cursor over a blob."""

    __slots__ = ("at", "data")

    def __init__(self, data: bytes, at: int) -> None:
        self.data = data
        self.at = at

    def take(self, st: struct.Struct) -> tuple[Any, ...]:
        values = st.unpack_from(self.data, self.at)
        self.at += st.size
        return values

    def text(self) -> str:
        (n,) = self.take(_LEN16)
        start = self.at
        self.at += n
        return self.data[start : self.at].decode()

    def raw(self, n: int) -> bytes:
        start = self.at
        self.at += n
        return self.data[start : self.at]


def _read_rows(r: _Reader, n: int, now_index: int) -> dict[int, list[float]]:
    rows: dict[int, list[float]] = {}
    data = r.data
    for _ in range(n):
        flag = data[r.at] & (_WIDE_FLAG | _SPEND_FLAG)
        if flag:
            rel, c0, c1, c2, c3, c4, c5, spend = r.take(_WIDE if flag == _WIDE_FLAG else _SPEND)
            rows[now_index - (rel & ~flag)] = [c0, c1, c2, c3, c4, c5, spend]
        else:
            rel, c0, c1, c2, c3, c4, c5 = r.take(_NARROW)
            rows[now_index - rel] = [c0, c1, c2, c3, c4, c5, 0]
    return rows


def decode_state(blob: bytes) -> UserState:
    """Rebuild a state from :func:`encode_state` output.

    Raises
    ------
    ValueError
        If the blob is not in this format.
    """
    blob = plain_blob(blob)
    if not blob or blob[0] != FORMAT:
        raise ValueError(
            f"unknown user-state format {blob[:1]!r} (this version writes {FORMAT}): the "
            "state was written by another version of the segmenter. Start on an empty key "
            "space (a new SEGMENTER_REDIS_PREFIX) and a new consumer group, which reads the "
            "input topics again from the start"
        )
    r = _Reader(blob, 0)
    (
        _,
        last,
        first,
        last_purchase,
        segment,
        since,
        n_min,
        n_hour,
        n_day,
        n_week,
        n_period,
        n_cat,
        n_keys,
        n_off,
        flags,
    ) = r.take(_HEADER)
    *counts, spend = r.take(_LIFETIME)
    price_sum, price_weight = r.take(_PRICES) if flags & _HAS_PRICES else (0.0, 0.0)
    s = UserState(
        first_seen_ms=first,
        last_event_ms=last,
        minutes=_read_rows(r, n_min, last // _GRAINS[0]),
        hours=_read_rows(r, n_hour, last // _GRAINS[1]),
        days=_read_rows(r, n_day, last // _GRAINS[2]),
        weeks=_read_rows(r, n_week, last // _GRAINS[3]),
        periods=_read_rows(r, n_period, last // _GRAINS[4]),
        lifetime=[*counts, spend],
        last_purchase_ms=None if last_purchase == _NO_TIME else last_purchase,
        segment=None if segment < 0 else segment,
        segment_since_ms=None if since == _NO_TIME else since,
        incomplete=bool(flags & _INCOMPLETE),
        price_sum=price_sum,
        price_weight=price_weight,
    )
    for _ in range(n_cat):
        name = r.text()
        (age,) = r.take(_CATEGORY_AGE)
        s.categories[name] = last - age
    keys = r.raw(n_keys * _KEY_BYTES)
    s.recent_events = [
        int.from_bytes(keys[i : i + _KEY_BYTES], "little") for i in range(0, len(keys), _KEY_BYTES)
    ]
    for _ in range(n_off):
        pos = r.text()
        (s.offsets[pos],) = r.take(_OFFSET)
    if flags & _HAS_SEGMENT_NAME:
        s.segment_name = r.text()
    if flags & _HAS_LAST_CHANGE:
        pos = r.text()
        offset, n = r.take(_LC)
        s.last_change = StoredChange(pos, offset, r.raw(n))
    if r.at != len(blob):
        raise ValueError(f"user-state blob has {len(blob) - r.at} unread bytes")
    return s
