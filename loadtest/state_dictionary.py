"""Build the preset dictionary that user-state blobs are deflated with.

A user's state is a few hundred bytes, too short for deflate to find much to repeat
within it. What repeats is *across* users: the layout of the header and the stored change,
topic names, segment names, category names, the high bytes of timestamps. A preset
dictionary holds such strings, and every blob may refer back into it
(:mod:`stream.state_codec`). On the states ``loadtest.memory`` leaves (users of one or
two events, simulated apart from the training users) it made blobs of 160 bytes on
average where deflate alone made 222.

The dictionary is trained on the states the segmenter makes for simulated shoppers
(:class:`loadtest.personas.ShopperSimulator`, seeds of its own, at a fixed time): busy
users from a year of history, and many users of one or two events, as most users of a
shop are. It keeps the byte strings that most samples share (a greedy cover of their
8-byte substrings, the idea of zstd's dictionary trainer), the most shared last, where
deflate's distances to them are shortest.

Blobs already written name the dictionary they were deflated with by their first byte, so
a new dictionary needs a new format byte in :mod:`stream.state_codec`, and the old one
kept for reading. Writes ``stream/state_dictionary.bin``:

    python -m loadtest.state_dictionary
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from loadtest.generator import DAY_MS
from loadtest.hotpath import run
from loadtest.memory import user_events
from loadtest.personas import ShopperSimulator
from state.user_states import loaded_state
from stream.state_codec import DICTIONARY_SIZE, plain_blob

#: The time the training histories end at (fixed, so the samples are the same every run).
END_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
#: Substring length the cover counts.
GRAM = 8
#: Length of the pieces the dictionary is made of.
PIECE = 40
_OUT = Path(__file__).resolve().parent.parent / "stream" / "state_dictionary.bin"


def _messages(docs: Iterator[dict[str, object]]) -> list[tuple[bytes, bytes, str, int]]:
    out = []
    for doc in docs:
        user = str(doc["user_id"])
        topic = "shop.purchases" if doc["type"] == "purchase" else "shop.clicks"
        out.append((orjson.dumps(doc), user.encode(), topic, zlib.crc32(user.encode()) % 4))
    return out


def samples() -> list[bytes]:
    """Plain blobs of the training users: 2,000 busy ones from a year of history, then
    4,000 of one or two events each, segmented by the model the busy ones made."""
    busy = ShopperSimulator(2000, 223, END_MS - 365 * DAY_MS, END_MS).events(40_000)
    few = user_events(4000, END_MS, seed=211, shoppers=1000, name=lambda k: f"t{k:06d}")
    messages = _messages(busy) + _messages(few)
    stored: dict[str, bytes] = {}
    run(messages, batch=2000, sweep=False, stored=stored, now_ms=END_MS)
    return [plain_blob(loaded_state(stored_blob)) for stored_blob in stored.values()]


def train(blobs: Sequence[bytes], size: int = DICTIONARY_SIZE) -> bytes:
    """A dictionary of ``size`` bytes covering the substrings most ``blobs`` share.

    Greedy: each step takes the piece of a sample whose not yet covered
    :data:`GRAM`-byte substrings occur in the most samples. Scores only fall as more is
    covered, so a piece whose score, recomputed, still tops the queue is the best one.
    """
    shared: Counter[bytes] = Counter()
    for b in blobs:
        shared.update({b[i : i + GRAM] for i in range(len(b) - GRAM + 1)})

    def grams(piece: bytes) -> set[bytes]:
        return {piece[i : i + GRAM] for i in range(len(piece) - GRAM + 1)}

    pieces = {b[i : i + PIECE] for b in blobs for i in range(0, max(1, len(b) - PIECE + 1), 4)}
    covered: set[bytes] = set()
    queue = [(-sum(shared[g] for g in grams(p)), p) for p in sorted(pieces)]
    heapq.heapify(queue)
    chosen: list[bytes] = []
    used = 0
    while queue and used < size:
        _, piece = heapq.heappop(queue)
        score = sum(shared[g] for g in grams(piece) - covered)
        if queue and score < -queue[0][0]:
            heapq.heappush(queue, (-score, piece))
            continue
        if score <= 1:
            break
        chosen.append(piece)
        covered |= grams(piece)
        used += len(piece)
    # The best first in ``chosen``: it goes last, nearest the data.
    return b"".join(reversed(chosen))[-size:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=_OUT)
    args = ap.parse_args(argv)
    blobs = samples()
    zdict = train(blobs)
    args.out.write_bytes(zdict)
    digest = hashlib.sha256(zdict).hexdigest()
    print(f"{len(zdict)} bytes from {len(blobs)} states: sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
