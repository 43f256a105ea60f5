"""Model checkpoints in Redis: versions kept, trimmed, and rolled back."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.devstack.servers import Server
from state.redis_store import RedisStore
from stream.errors import ModelError
from stream.model import SegmentModel
from stream.scaling import MODEL_FEATURES

pytestmark = pytest.mark.integration


def test_versions_are_kept_trimmed_and_rolled_back(redis_server: Server) -> None:
    store = RedisStore(f"redis://{redis_server.address}/0", prefix="mv:")
    try:
        model = SegmentModel(n_clusters=2, halflife=0.1, warmup_users=4, seed=1)
        for v in np.random.default_rng(0).normal(size=(4, len(MODEL_FEATURES))):
            model.observe(v)
        centres: dict[int, list[list[float]]] = {}
        for version in range(1, 8):
            model.version = version
            model.learn(np.full(len(MODEL_FEATURES), float(version)))
            centres[version] = model.centres().tolist()
            store.save_model({**model.to_dict(), "saved_at_ms": version * 1000}, keep=5)
        kept = store.model_versions()
        assert [v["version"] for v in kept] == [3, 4, 5, 6, 7]
        assert kept[-1]["saved_at_ms"] == 7000

        new = store.rollback_model(4, now_ms=9000)
        assert new == 8
        current = store.load_model()
        assert current is not None
        assert (current["version"], current["rolled_back_from"]) == (8, 4)
        restored = SegmentModel.from_dict(current, 4)
        assert restored.centres().tolist() == centres[4]
        assert [v["version"] for v in store.model_versions()] == [3, 4, 5, 6, 7, 8]
        with pytest.raises(ModelError, match="no model version 1"):
            store.rollback_model(1, now_ms=9500)
    finally:
        store.close()
