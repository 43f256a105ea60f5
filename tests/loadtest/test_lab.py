"""The offline lab on a tiny scenario: vectors per user, standardised, scored against truth."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest import lab
from loadtest.scenarios import Scenario
from stream.scaling import MODEL_FEATURES

TINY = Scenario(
    "tiny",
    {"window_shopper": 1.0, "loyal_high_spender": 1.0, "lapsing_customer": 1.0},
    days=30.0,
    n_users=150,
    n_events=15_000,
)


@pytest.fixture(scope="module")
def data() -> lab.LabData:
    return lab.build(TINY, seed=1)


def test_build_gives_one_standardised_row_per_seen_user(data: lab.LabData) -> None:
    X, labels, user_ids = data
    assert X.shape == (len(labels), len(MODEL_FEATURES)) == (len(user_ids), len(MODEL_FEATURES))
    assert 100 < len(X) <= TINY.n_users
    assert list(user_ids) == sorted(user_ids)
    assert set(labels.tolist()) == set(TINY.shares)
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-9)
    # Unit spread, but where the scaler's variance floor holds a near-constant one down.
    assert np.all(X.std(axis=0) <= 1.0 + 1e-9)
    assert np.sum(np.abs(X.std(axis=0) - 1.0) < 1e-9) >= len(MODEL_FEATURES) - 1
    assert np.isfinite(data.raw).all()


def test_build_is_deterministic_for_a_seed(data: lab.LabData) -> None:
    again = lab.build(TINY, seed=1)
    np.testing.assert_array_equal(again.X, data.X)
    np.testing.assert_array_equal(again.user_ids, data.user_ids)


def test_evaluate_scores_every_criterion(data: lab.LabData) -> None:
    r = lab.evaluate(TINY, 1, k_max=4, data=data)
    assert r.true_k == 3 and r.n_users == len(data.X)
    assert set(r.chosen) == set(r.ari) == set(r.reasons) == {"silhouette", "prediction_strength"}
    assert all(2 <= k <= 4 for k in r.chosen.values())
    assert all(-1.0 <= a <= 1.0 for a in r.ari.values())
    # Three personas that differ on most features: k-means at the true k finds them.
    assert r.ari_true_k > 0.5


def test_main_prints_a_row_per_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(lab.SCENARIOS, "tiny", TINY)
    assert lab.main(["--scenario", "tiny", "--seeds", "1", "--k-max", "3"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "the true k in" in out
