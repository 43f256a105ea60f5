"""Keeping segment ids stable when a model's centres are replaced.

A segment id must keep its meaning across a refit or a re-seed: a user in segment 3 before
should be in the segment that plays the same part after. New centres are therefore matched
one-to-one to old ones by the Hungarian algorithm on their Euclidean distances, and a new
centre takes the id of its old centre only if it lies within a threshold of it. What does
not match is born (a new id) or retired, and the lineage records the likely story: a born
centre near an old one split from it, a retired centre near a new one merged into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True, slots=True)
class Lineage:
    """How a new set of centres relates to the old one, by segment id."""

    #: The segment id of each new centre, in the order of the new centres.
    ids: tuple[int, ...]
    #: Each id kept, and the distance its centre moved.
    kept: dict[int, float]
    #: Ids given to new centres that match no old one, in new-centre order.
    born: tuple[int, ...]
    #: Old ids that no new centre took, in old-centre order.
    retired: tuple[int, ...]
    #: ``(retired id, id of the new centre nearest to it)``, when that is within threshold.
    merged: tuple[tuple[int, int], ...]
    #: ``(born id, id of the old centre nearest to it)``, when that is within threshold.
    split: tuple[tuple[int, int], ...]
    #: The next unused id after this matching.
    next_id: int

    def events(self) -> list[dict[str, int | str]]:
        """The births, retirements, merges and splits as plain values; kept ids make none.

        Births come first, then retirements, merges and splits, each in the order of
        :attr:`born`, :attr:`retired`, :attr:`merged` and :attr:`split`.
        """
        out: list[dict[str, int | str]] = [{"event": "born", "segment": i} for i in self.born]
        out += [{"event": "retired", "segment": i} for i in self.retired]
        out += [{"event": "merged", "segment": i, "into": j} for i, j in self.merged]
        out += [{"event": "split", "segment": i, "from": j} for i, j in self.split]
        return out


def match_centres(
    old_centres: np.ndarray,
    old_ids: Sequence[int],
    new_centres: np.ndarray,
    next_id: int,
    threshold: float,
) -> Lineage:
    """Give each new centre a segment id: an old centre's, or a new one.

    Old and new centres (their counts may differ) are paired one-to-one by the Hungarian
    algorithm on their Euclidean distances. A pair farther apart than ``threshold`` is not
    a match. Among the pairings, the one with the most matches is taken, and of those the
    one whose matches move least in total: pairs beyond the threshold cost the assignment
    more than any set of matches, so a far pair never displaces two good matches.

    - A matched new centre keeps its old centre's id (:attr:`Lineage.kept`).
    - Each unmatched new centre is born with the next unused id, ``next_id``,
      ``next_id + 1``, ... in new-centre order; an unmatched old id is retired.
    - A born centre whose nearest old centre is within ``threshold`` split from it (the old
      centre went to another new centre); it is still born.
    - A retired centre whose nearest new centre is within ``threshold`` merged into it (the
      new centre took another old id); it is still retired.

    Parameters
    ----------
    old_centres
        The ``(m, n_features)`` current centres; ``m`` may be 0 (the first seeding, when
        every new centre is born).
    old_ids
        The segment id of each old centre; distinct.
    new_centres
        The ``(k, n_features)`` replacement centres, in the same scaled space.
    next_id
        The smallest id never given out; greater than every old id.
    threshold
        Largest distance a centre may move and keep its id; positive.

    Returns
    -------
    Lineage
        The id of every new centre and what was kept, born, retired, merged and split.

    Examples
    --------
    Segment 0 moves a little, segment 1 splits in two, and segment 2 disappears next to
    segment 0:

    >>> import numpy as np
    >>> old = np.array([[0.0, 0.0], [10.0, 0.0], [1.5, 0.0]])
    >>> new = np.array([[10.0, 1.0], [0.2, 0.0], [10.0, -1.5]])
    >>> lin = match_centres(old, [0, 1, 2], new, next_id=3, threshold=2.0)
    >>> lin.ids, {i: round(d, 3) for i, d in lin.kept.items()}, lin.next_id
    ((1, 0, 3), {1: 1.0, 0: 0.2}, 4)
    >>> lin.born, lin.retired, lin.merged, lin.split
    ((3,), (2,), ((2, 0),), ((3, 1),))
    >>> lin.events()  # doctest: +NORMALIZE_WHITESPACE
    [{'event': 'born', 'segment': 3}, {'event': 'retired', 'segment': 2},
     {'event': 'merged', 'segment': 2, 'into': 0}, {'event': 'split', 'segment': 3, 'from': 1}]
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    new = np.asarray(new_centres, dtype=float)
    if new.ndim != 2:
        raise ValueError(f"new_centres must be a 2-D array, got shape {new.shape}")
    old = np.asarray(old_centres, dtype=float)
    if old.size == 0:
        # No old centres, whatever shape the empty array was given in.
        old = old.reshape(0, new.shape[1])
    if old.ndim != 2 or old.shape[1] != new.shape[1]:
        raise ValueError(
            f"old_centres must be a 2-D array with {new.shape[1]} columns like new_centres, "
            f"got shape {old.shape}"
        )
    if not (np.isfinite(old).all() and np.isfinite(new).all()):
        raise ValueError("old_centres and new_centres must be finite (no NaN or infinity)")
    ids = [int(i) for i in old_ids]
    if len(ids) != len(old):
        raise ValueError(
            f"old_ids must have one id per old centre ({len(old)}), got {len(ids)} ids"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"old_ids must be distinct, got {ids}")
    if ids and next_id <= max(ids):
        raise ValueError(f"next_id must be greater than every old id ({max(ids)}), got {next_id}")

    m, k = len(old), len(new)
    dist = np.sqrt(((old[:, None, :] - new[None, :, :]) ** 2).sum(axis=2))
    new_ids: list[int | None] = [None] * k
    kept: dict[int, float] = {}
    if m and k:
        close = dist <= threshold
        # Every match costs at most max_dist and there are at most min(m, k) of them, so
        # this penalty makes one more match always worth more than any saving in distance.
        penalty = (min(m, k) + 1) * (float(dist.max()) + 1.0)
        rows, cols = linear_sum_assignment(np.where(close, dist, penalty))
        pairs = sorted((int(c), int(r)) for r, c in zip(rows, cols, strict=True) if close[r, c])
        for c, r in pairs:
            new_ids[c] = ids[r]
            kept[ids[r]] = float(dist[r, c])
    taken = set(kept)

    born: list[int] = []
    split: list[tuple[int, int]] = []
    for c in range(k):
        if new_ids[c] is not None:
            continue
        new_ids[c] = next_id + len(born)
        born.append(next_id + len(born))
        if m:
            r = int(np.argmin(dist[:, c]))
            if dist[r, c] <= threshold:
                split.append((born[-1], ids[r]))

    final = [i for i in new_ids if i is not None]
    retired: list[int] = []
    merged: list[tuple[int, int]] = []
    for r in range(m):
        if ids[r] in taken:
            continue
        retired.append(ids[r])
        if k:
            c = int(np.argmin(dist[r]))
            if dist[r, c] <= threshold:
                merged.append((ids[r], final[c]))

    return Lineage(
        ids=tuple(final),
        kept=kept,
        born=tuple(born),
        retired=tuple(retired),
        merged=tuple(merged),
        split=tuple(split),
        next_id=next_id + len(born),
    )
