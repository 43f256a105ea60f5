"""The offline segmentation lab: simulated users, their features, and how well ``k`` is chosen.

No Kafka and no Redis: for a :class:`~loadtest.scenarios.Scenario` and a seed,
:func:`build` simulates the events, folds each user's events into their state with
:func:`stream.features.apply_events`, reads one feature vector per user as of the end of the
span (one shared clock, as the segmenter's watermark would be), maps it to the model's space
with :func:`stream.scaling.to_vector` and standardises it over all users. Users the span
never saw (no event) are left out, as the segmenter would never see them either.

:func:`evaluate` then lets every ``k`` criterion of :func:`stream.selection.choose_k` choose,
and scores each choice against the personas by the adjusted Rand index (ARI), next to the
ARI of k-means at the true ``k``, the ceiling a criterion can reach with these features.

    python -m loadtest.lab --scenario three four default six --seeds 1 2 3

Examples
--------
>>> from loadtest.scenarios import Scenario
>>> tiny = Scenario("tiny", {"window_shopper": 1.0, "loyal_high_spender": 1.0}, 30.0, 60, 3000)
>>> data = build(tiny, seed=1)
>>> data.X.shape[1] == len(MODEL_FEATURES), len(data.X) == len(data.labels) == len(data.user_ids)
(True, True)
>>> sorted(set(data.labels.tolist()))
['loyal_high_spender', 'window_shopper']
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.personas import ShopperSimulator
from loadtest.scenarios import SCENARIOS, Scenario
from stream.checkpoint import ModelParams
from stream.events import Event
from stream.features import apply_events, compute_features
from stream.scaling import MODEL_FEATURES, OnlineScaler, to_vector
from stream.selection import K_CRITERIA, choose_k, kmeans_plus_plus, lloyd

#: The model's defaults: the lab chooses k as the segmenter would.
_MODEL = ModelParams()

__all__ = ["LabData", "LabResult", "build", "evaluate", "kmeans_labels", "main"]

#: End of every simulated span (2027-01-15T08:00:00Z): a fixed instant, so runs repeat.
END_MS = 1_800_000_000_000
PURCHASE_TOPIC = "shop.purchases"
CLICK_TOPIC = "shop.clicks"


@dataclass(frozen=True, slots=True)
class LabData:
    """Standardised feature vectors of a scenario's users and their true personas.

    Iterates as ``(X, labels, user_ids)``.
    """

    #: ``(n_users, len(MODEL_FEATURES))`` standardised vectors, one row per user.
    X: np.ndarray
    #: ``(n_users,)`` persona of every user at the end of the span.
    labels: np.ndarray
    #: ``(n_users,)`` user ids, in the order of the rows.
    user_ids: np.ndarray
    #: The model-space vectors before standardisation.
    raw: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.X, self.labels, self.user_ids))


def _event(d: dict[str, object], offset: int) -> Event:
    etype = str(d["type"])
    return Event(
        event_id=str(d["event_id"]),
        user_id=str(d["user_id"]),
        type=etype,
        ts_ms=int(d["ts"]),  # type: ignore[call-overload]
        topic=PURCHASE_TOPIC if etype == "purchase" else CLICK_TOPIC,
        partition=0,
        offset=offset,
        session_id=d.get("session_id"),  # type: ignore[arg-type]
        product_id=d.get("product_id"),  # type: ignore[arg-type]
        category=d.get("category"),  # type: ignore[arg-type]
        price=d.get("price"),  # type: ignore[arg-type]
        quantity=d.get("quantity"),  # type: ignore[arg-type]
        amount=d.get("amount"),  # type: ignore[arg-type]
        currency=d.get("currency"),  # type: ignore[arg-type]
    )


def build(scenario: Scenario, seed: int) -> LabData:
    """Simulate ``scenario`` with ``seed`` and return every seen user's standardised vector.

    Parameters
    ----------
    scenario
        Which personas, how many users and events, over how many days.
    seed
        Seed of the simulator; the same seed gives the same vectors.

    Returns
    -------
    LabData
        The vectors, the personas and the user ids, rows sorted by user id.
    """
    start = END_MS - scenario.span_ms
    sim = ShopperSimulator(scenario.n_users, seed, start, END_MS, shares=scenario.shares)
    per_user: dict[str, list[Event]] = defaultdict(list)
    # One running offset per topic: each user's events come in offset order, as from Kafka.
    offsets = {PURCHASE_TOPIC: 0, CLICK_TOPIC: 0}
    for d in sim.events(scenario.n_events):
        ev = _event(d, 0)
        offsets[ev.topic] += 1
        per_user[ev.user_id].append(ev._replace(offset=offsets[ev.topic]))
    truth = sim.ground_truth()
    user_ids = sorted(per_user)
    raw = np.empty((len(user_ids), len(MODEL_FEATURES)))
    for i, user in enumerate(user_ids):
        state = apply_events(None, per_user[user]).state
        raw[i] = to_vector(compute_features(state, now_ms=END_MS))
    scaler = OnlineScaler.empty(len(MODEL_FEATURES))
    for row in raw:
        scaler.learn(row)
    return LabData(
        X=scaler.transform(raw),
        labels=np.array([truth[u] for u in user_ids]),
        user_ids=np.array(user_ids),
        raw=raw,
    )


def kmeans_labels(
    points: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10
) -> np.ndarray:
    """Labels of the lowest-inertia of ``n_init`` k-means++ and Lloyd runs with ``k`` centres."""
    best: tuple[float, np.ndarray] | None = None
    for _ in range(n_init):
        centres, labels = lloyd(points, kmeans_plus_plus(points, k, rng))
        inertia = float(((points - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels)
    assert best is not None
    return best[1]


def _ari(truth: np.ndarray, labels: np.ndarray) -> float:
    # Imported here: scikit-learn is a development dependency, and only scoring needs it.
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


@dataclass(frozen=True, slots=True)
class LabResult:
    """How each criterion chose ``k`` on one scenario and seed, and how good that was."""

    scenario: str
    seed: int
    n_users: int
    true_k: int
    #: ARI of k-means at the true ``k`` against the personas: the ceiling.
    ari_true_k: float
    #: Criterion -> chosen ``k``.
    chosen: dict[str, int]
    #: Criterion -> ARI of the clustering it chose against the personas.
    ari: dict[str, float]
    #: Criterion -> seconds it took to choose.
    seconds: dict[str, float]
    #: Criterion -> the reason it gave.
    reasons: dict[str, str]


def evaluate(
    scenario: Scenario,
    seed: int,
    criteria: Sequence[str] = K_CRITERIA,
    k_min: int = _MODEL.k_min,
    k_max: int = _MODEL.k_max,
    data: LabData | None = None,
) -> LabResult:
    """Let every criterion choose ``k`` on the scenario's users and score the choices.

    The clustering a criterion is scored by is the one its :class:`~stream.selection.KChoice`
    holds: every user labelled with the nearest of the chosen centres.
    """
    if data is None:
        data = build(scenario, seed)
    X, truth, _ = data
    # As the model chooses: on its user sample (at most reservoir_size users), with as
    # many k-means++ starts as a refit makes.
    sample = X
    if len(X) > _MODEL.reservoir_size:
        pick = np.random.default_rng(seed).choice(len(X), _MODEL.reservoir_size, replace=False)
        sample = X[pick]
    ceiling = _ari(truth, kmeans_labels(X, scenario.true_k, np.random.default_rng(seed)))
    chosen: dict[str, int] = {}
    ari: dict[str, float] = {}
    seconds: dict[str, float] = {}
    reasons: dict[str, str] = {}
    for criterion in criteria:
        t0 = time.perf_counter()
        choice = choose_k(
            sample,
            k_min,
            k_max,
            np.random.default_rng(_MODEL.seed + seed),
            n_init=_MODEL.refit_starts,
            criterion=criterion,
        )
        seconds[criterion] = time.perf_counter() - t0
        labels = np.argmin(((X[:, None, :] - choice.centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        chosen[criterion] = choice.k
        ari[criterion] = _ari(truth, labels)
        reasons[criterion] = choice.reason
    return LabResult(
        scenario.name, seed, len(X), scenario.true_k, ceiling, chosen, ari, seconds, reasons
    )


def _row(r: LabResult, criteria: Sequence[str]) -> str:
    cells = [f"{r.scenario:<8}", f"{r.seed:>4}", f"{r.n_users:>6}", f"{r.true_k:>6}"]
    for c in criteria:
        cells.append(f"{r.chosen[c]:>4} {r.ari[c]:>5.2f} {r.seconds[c]:>5.1f}s")
    cells.append(f"{r.ari_true_k:>9.2f}")
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.lab", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--criteria", nargs="+", choices=K_CRITERIA, default=list(K_CRITERIA))
    ap.add_argument("--k-min", type=int, default=_MODEL.k_min)
    ap.add_argument("--k-max", type=int, default=_MODEL.k_max)
    ap.add_argument("--reasons", action="store_true", help="print every criterion's reason")
    args = ap.parse_args(argv)
    header = ["scenario", "seed", " users", "true k"]
    header += [f"{c[:18]:<18}" for c in args.criteria] + ["ARI true k"]
    print(" | ".join(header))
    print(" | ".join(["", "", "", ""] + ["   k   ARI   time"] * len(args.criteria) + [""]))
    hits = dict.fromkeys(args.criteria, 0)
    runs = 0
    for name in args.scenario:
        for seed in args.seeds:
            r = evaluate(SCENARIOS[name], seed, args.criteria, args.k_min, args.k_max)
            runs += 1
            for c in args.criteria:
                hits[c] += r.chosen[c] == r.true_k
            print(_row(r, args.criteria), flush=True)
            if args.reasons:
                for c in args.criteria:
                    print(f"    {c}: {r.reasons[c]}")
    for c in args.criteria:
        print(f"{c}: the true k in {hits[c]} of {runs} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
