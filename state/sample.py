"""The model's user sample: ``seg:model:sample`` (slot -> user id, the users seeds and
refits are made on) and ``seg:model:users`` (how many users the sample was drawn from).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from state.client import StoreBase, call, run
from stream.features import UserState, compute_features
from stream.scaling import MODEL_FEATURES, to_vector


class UserSample(StoreBase):
    """The uniform sample of users, and the model vectors taken of it."""

    if TYPE_CHECKING:
        # From :class:`state.user_states.UserStates`, beside this in ``RedisStore``.
        def load_states(self, user_ids: Sequence[str]) -> dict[str, UserState | None]: ...

    def sample_users(self, new_users: Sequence[str], size: int, rng: random.Random) -> int:
        """Offer users seen for the first time to the uniform sample of ``size`` users
        (reservoir sampling over users, not events); returns the sample's size.

        The n-th user ever seen replaces a random slot with probability ``size / n``, so
        every user is in the sample with the same chance, however often they shop.
        """
        if not new_users:
            return self.sample_size()
        total = int(
            call(
                lambda: self._r.incrby(self.keys.users_seen, len(new_users)),
                "count users seen",
            )
        )
        slots: dict[str, str] = {}
        for i, uid in enumerate(new_users, start=total - len(new_users) + 1):
            slot = i - 1 if i <= size else rng.randrange(i)
            if slot < size:
                slots[str(slot)] = uid
        pipe = self._r.pipeline(transaction=False)
        if slots:
            pipe.hset(self.keys.sample, mapping=slots)
        pipe.hlen(self.keys.sample)
        return int(run(pipe, "add to the user sample")[-1])

    def sample_size(self) -> int:
        return int(call(lambda: self._r.hlen(self.keys.sample), "read the user sample"))

    def sampled_users(self) -> list[str]:
        raw = call(lambda: self._r.hvals(self.keys.sample), "read the user sample")
        return sorted({u.decode() for u in raw})

    def snapshot(
        self,
        watermark_ms: int,
        rfm_horizon: str = "365d",
        limit: int | None = None,
        used: tuple[str, ...] = MODEL_FEATURES,
    ) -> np.ndarray:
        """One model vector per sampled user, as of ``watermark_ms``: what seeds and refits
        are made on (rows in user id order; the first ``limit`` users only, if given;
        ``used``: the model's features)."""
        users = self.sampled_users()[:limit]
        states = self.load_states(users) if users else {}
        rows = [
            to_vector(compute_features(st, watermark_ms, rfm_horizon), used)
            for _, st in sorted(states.items())
            if st is not None
        ]
        return np.stack(rows) if rows else np.empty((0, len(MODEL_FEATURES)))
