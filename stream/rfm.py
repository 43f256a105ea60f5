"""RFM scores: a user's recency, frequency and spend as quintiles of the population.

Marketers read RFM as three digits from 1 to 5, 5 best: most recent, most frequent,
highest spend ("545"). Each digit is the quintile of the user's value among everyone's:
``1 + min(4, floor(5 * rank))`` with ``rank`` the mid-rank from a
:class:`~stream.quantiles.QuantileSketch` (the share of the population below the value
plus half the share tied with it), inverted for recency, where fewer days is better.

Mid-ranks keep ties together: users with equal values get equal scores. A user with no
orders (or no spend) over the horizon scores 1 on frequency (monetary) however many share
that zero: a marketer reads a 1 as "nothing", and a zero sitting mid-population (when
most users have not bought) would otherwise score 3. A user who never purchased has no
recency and scores r = 1.

The segmenter rebuilds the sketches at every fit of the model, from the same snapshot of
one vector per sampled user as of the watermark (:func:`sketches_of`), so that every user
weighs the same, however often they shop.

Scores are relative to the population as of the watermark (the shared event-time clock):
the sketches hold the values users had at their updates, with older ones decayed away.
So a user's score can change with no event of their own, as other users come, go and
move, and two users with equal values get equal scores only against the same sketches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stream.quantiles import QuantileSketch

#: Recency beyond ten years is told apart from nothing older (values are clipped to it).
RECENCY_MAX_DAYS = 3650.0
#: Orders beyond this count all tie at the top.
FREQUENCY_MAX = 1000.0
#: Spend beyond this (in order currency) all ties at the top.
MONETARY_MAX = 100_000.0
#: Bins of each sketch: ranks within 0.3% on the distributions of the tests.
RFM_BINS = 256


@dataclass(frozen=True, slots=True)
class RFMScores:
    """Recency, frequency and monetary quintile scores, each 1 to 5 (5 best).

    >>> RFMScores(r=5, f=4, m=5).code
    '545'
    """

    r: int
    f: int
    m: int

    def __post_init__(self) -> None:
        for name in ("r", "f", "m"):
            v = getattr(self, name)
            if not (isinstance(v, int) and 1 <= v <= 5):
                raise ValueError(f"{name} must be an integer from 1 to 5, got {v!r}")

    @property
    def code(self) -> str:
        """The three digits marketers read, recency first."""
        return f"{self.r}{self.f}{self.m}"


def _sketch(max_value: float) -> QuantileSketch:
    return QuantileSketch(max_value, RFM_BINS)


@dataclass
class RFMSketches:
    """The population's recency, frequency and spend, one sketch each.

    Every process learns its own users into sketches of its own and merges them into the
    shared ones, which are decayed first so they follow the current population (as
    :meth:`~stream.scaling.OnlineScaler.merged` does for the scaler). Each
    :meth:`learn` adds a weight of one: learned at every user update, active users weigh
    more than quiet ones.

    Examples
    --------
    >>> shared, mine = RFMSketches(), RFMSketches()
    >>> for days, orders, spend in [(None, 0, 0.0), (3.0, 2, 80.0), (40.0, 1, 15.0)]:
    ...     mine.learn(days, orders, spend)
    >>> shared.decay(0.9)
    >>> shared = shared.merged(mine)
    >>> shared.recency.count, shared.frequency.count
    (2.0, 3.0)
    >>> rfm_scores(3.0, 2, 80.0, shared).code
    '455'
    """

    recency: QuantileSketch = field(default_factory=lambda: _sketch(RECENCY_MAX_DAYS))
    frequency: QuantileSketch = field(default_factory=lambda: _sketch(FREQUENCY_MAX))
    monetary: QuantileSketch = field(default_factory=lambda: _sketch(MONETARY_MAX))

    def learn(self, recency_days: float | None, orders: float, spend: float) -> None:
        """Add one user's values; a user who never purchased adds no recency."""
        if recency_days is not None:
            self.recency.learn(recency_days)
        self.frequency.learn(orders)
        self.monetary.learn(spend)

    def decay(self, factor: float) -> None:
        """Multiply every weight by ``factor`` in (0, 1] (see :meth:`QuantileSketch.decay`)."""
        self.recency.decay(factor)
        self.frequency.decay(factor)
        self.monetary.decay(factor)

    def merged(self, other: RFMSketches) -> RFMSketches:
        return RFMSketches(
            self.recency.merged(other.recency),
            self.frequency.merged(other.frequency),
            self.monetary.merged(other.monetary),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "recency": self.recency.to_dict(),
            "frequency": self.frequency.to_dict(),
            "monetary": self.monetary.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RFMSketches:
        return cls(
            QuantileSketch.from_dict(d["recency"]),
            QuantileSketch.from_dict(d["frequency"]),
            QuantileSketch.from_dict(d["monetary"]),
        )


def _quintile(rank: float) -> int:
    return 1 + min(4, int(rank * 5.0))  # int() is floor: a rank is never negative


def rfm_scores(
    recency_days: float | None, orders: float, spend: float, sketches: RFMSketches
) -> RFMScores:
    """Score a user's values against the population in ``sketches``.

    ``recency_days`` is the time since the user's last purchase, measured from the
    watermark (``None`` if they never purchased); ``orders`` and ``spend`` are over the
    same horizon as the population's.

    Examples
    --------
    >>> s = RFMSketches()
    >>> for i in range(100):  # recency 0..99 days, orders 0..9, spend 0..990
    ...     s.learn(float(i), i % 10, 10.0 * i)
    >>> rfm_scores(2.0, 9, 985.0, s).code
    '555'
    >>> rfm_scores(50.0, 4, 500.0, s).code
    '333'
    >>> rfm_scores(65.0, 7, 990.0, s).code  # a big spender slipping away
    '245'
    >>> rfm_scores(None, 0, 0.0, s).code
    '111'
    """
    r = 1 if recency_days is None else _quintile(1.0 - sketches.recency.rank(recency_days))
    f = 1 if orders <= 0 else _quintile(sketches.frequency.rank(orders))
    m = 1 if spend <= 0 else _quintile(sketches.monetary.rank(spend))
    return RFMScores(r, f, m)


def sketches_of(
    recency_days: Iterable[float | None], orders: Iterable[float], spend: Iterable[float]
) -> RFMSketches:
    """Sketches of a population given as one value of each per user.

    >>> s = sketches_of([1.0, None, 30.0], [2, 0, 1], [50.0, 0.0, 20.0])
    >>> s.recency.count, s.frequency.count
    (2.0, 3.0)
    """
    out = RFMSketches()
    for r, f, m in zip(recency_days, orders, spend, strict=True):
        out.learn(r, f, m)
    return out
