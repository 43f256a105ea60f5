"""Quality scenarios: which personas, how many users and events, over how long a span.

A :class:`Scenario` fixes a population of synthetic shoppers with a known number of true
segments (the personas with a share), so that a way of choosing ``k`` and the segments it
finds can be scored against the truth. :data:`SCENARIOS` holds the ones the offline lab
(:mod:`loadtest.lab`) runs: from three clearly different personas up to six, two of which
differ mostly in *when* they shop, over a span long enough for that to show.

Examples
--------
>>> s = SCENARIOS["three"]
>>> s.true_k, s.personas
(3, ('lapsing_customer', 'loyal_high_spender', 'window_shopper'))
>>> SCENARIOS["default"].shares == {k: v for k, v in DEFAULT_SHARES.items() if v > 0}
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from loadtest.personas import DAY_MS, DEFAULT_SHARES, PERSONAS

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated population whose true segments are its personas.

    Parameters
    ----------
    name
        Short name, for tables and the command line.
    shares
        Persona name -> share of the users (normalised by the simulator); every share
        positive, so that every persona named is one true segment.
    days
        Length of the simulated span in days; the features are read at its end.
    n_users
        Number of simulated users.
    n_events
        Number of events simulated over the span.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Examples
    --------
    >>> Scenario("two", {"window_shopper": 1.0, "loyal_high_spender": 1.0}, 30.0, 200, 6000)
    ... # doctest: +ELLIPSIS
    Scenario(name='two', shares={'window_shopper': 1.0, ...}, days=30.0, n_users=200, ...)
    >>> Scenario("odd", {"astronaut": 1.0, "window_shopper": 1.0}, 30.0, 200, 6000)
    Traceback (most recent call last):
    ...
    ValueError: shares names unknown personas ['astronaut']
    """

    name: str
    shares: dict[str, float] = field(hash=False)
    days: float
    n_users: int
    n_events: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.shares, dict) or len(self.shares) < 2:
            raise ValueError(
                f"shares must map at least two personas to shares, got {self.shares!r}"
            )
        unknown = sorted(set(self.shares) - set(PERSONAS))
        if unknown:
            raise ValueError(f"shares names unknown personas {unknown}")
        for persona, share in self.shares.items():
            if (
                isinstance(share, bool)
                or not isinstance(share, int | float)
                or not math.isfinite(share)
                or share <= 0
            ):
                raise ValueError(f"shares must be finite and positive, got {share!r} for {persona}")
        if (
            isinstance(self.days, bool)
            or not isinstance(self.days, int | float)
            or not math.isfinite(self.days)
            or self.days <= 0
        ):
            raise ValueError(f"days must be a positive number, got {self.days!r}")
        if isinstance(self.n_users, bool) or not isinstance(self.n_users, int):
            raise ValueError(f"n_users must be an integer, got {self.n_users!r}")
        # Every persona needs a few users to be a segment at all.
        if self.n_users < 10 * len(self.shares):
            raise ValueError(
                f"n_users must be at least 10 per persona ({10 * len(self.shares)}), "
                f"got {self.n_users}"
            )
        if (
            isinstance(self.n_events, bool)
            or not isinstance(self.n_events, int)
            or self.n_events < self.n_users
        ):
            raise ValueError(
                f"n_events must be an integer of at least n_users ({self.n_users}), "
                f"got {self.n_events!r}"
            )

    @property
    def true_k(self) -> int:
        """The number of true segments: personas with a share."""
        return len(self.shares)

    @property
    def personas(self) -> tuple[str, ...]:
        """The personas of the scenario, sorted by name."""
        return tuple(sorted(self.shares))

    @property
    def span_ms(self) -> int:
        """Length of the span in milliseconds."""
        return round(self.days * DAY_MS)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        # Three personas that differ on almost every feature: an easy case, and one where
        # a criterion that always says "more" is caught out.
        Scenario(
            "three",
            {"loyal_high_spender": 1.0, "window_shopper": 1.0, "lapsing_customer": 1.0},
            days=30.0,
            n_users=1500,
            n_events=150_000,
        ),
        Scenario(
            "four",
            {
                "bargain_hunter": 1.0,
                "loyal_high_spender": 1.0,
                "window_shopper": 1.0,
                "lapsing_customer": 1.0,
            },
            days=30.0,
            n_users=2000,
            n_events=200_000,
        ),
        # The simulator's default mix.
        Scenario(
            "default",
            {name: share for name, share in DEFAULT_SHARES.items() if share > 0},
            days=30.0,
            n_users=2500,
            n_events=250_000,
        ),
        # Lifecycle on a quarter: the dormant and the reactivated customer are told apart
        # from the rest mostly by when they shopped, which a 30-day span cannot show.
        Scenario(
            "six",
            {
                "bargain_hunter": 1.0,
                "loyal_high_spender": 1.0,
                "window_shopper": 1.0,
                "new_user": 1.0,
                "dormant_customer": 1.0,
                "reactivated_customer": 1.0,
            },
            days=90.0,
            n_users=3000,
            n_events=600_000,
        ),
    )
}
