"""The real data set: CDNOW purchases as events, their RFM, and the batch baseline."""

from __future__ import annotations

import gzip
import importlib.metadata
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from loadtest import real_data
from loadtest.real_data import (
    DAY_MS,
    RealDataUnavailable,
    Transactions,
    batch_rfm,
    choose_baseline_k,
    end_ms,
    load_transactions,
    parse_cdnow,
    rfm,
    rfm_profiles,
    to_events,
    write_jsonl,
)
from stream.events import Event, Limits, decode

T0 = int(datetime(1997, 1, 1, tzinfo=UTC).timestamp() * 1000)
NOW = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
# CDNOW is from 1997-98: the default limits accept it (any time since 1970).
OLD_DATA = Limits()

# Customer 1 buys twice on day 0 and once on day 3; customer 2 once on day 1.
SMALL = Transactions.from_rows(
    [
        (1, T0 + 3 * DAY_MS, 5.25, 1),
        (2, T0 + DAY_MS, 0.0, 1),  # CDNOW has some 0-dollar purchases: valid, amount >= 0
        (1, T0, 10.0, 2),
        (1, T0, 2.5, 1),
    ]
)


def test_transactions_are_in_time_order_and_read_only() -> None:
    assert SMALL.ts_ms.tolist() == [T0, T0, T0 + DAY_MS, T0 + 3 * DAY_MS]
    # Same time: the order they came in.
    assert SMALL.amount.tolist() == [10.0, 2.5, 0.0, 5.25]
    with pytest.raises(ValueError):
        SMALL.amount[0] = 1.0
    with pytest.raises(ValueError, match="time order"):
        Transactions(np.array([1, 1]), np.array([2, 1]), np.array([1.0, 1.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        Transactions.from_rows([(1, T0, -1.0, 1)])


def test_parse_cdnow_reads_the_file_format() -> None:
    text = [
        " customer_id  date number_of_cds  dollar_value\r\n",
        " 00001 19970101  1   11.77\r\n",
        " 00002 19970112  5   77.00\r\n",
        "\r\n",
        " 00002 19970112  1   12.00\r\n",
    ]
    t = parse_cdnow(text)
    assert t.customer.tolist() == [1, 2, 2]
    assert t.ts_ms.tolist() == [T0, T0 + 11 * DAY_MS, T0 + 11 * DAY_MS]
    assert t.amount.tolist() == [11.77, 77.0, 12.0]
    assert t.quantity.tolist() == [1, 5, 1]
    with pytest.raises(RealDataUnavailable, match="line 2 is not a CDNOW purchase"):
        parse_cdnow(["header\n", "00001,19970101,1,11.77\n"])


def test_events_decode_as_valid_purchases_in_time_order() -> None:
    events = list(to_events(SMALL))
    decoded = [
        decode(orjson.dumps(e), str(e["user_id"]).encode(), "shop.purchases", 0, i, NOW, OLD_DATA)
        for i, e in enumerate(events)
    ]
    assert all(isinstance(d, Event) for d in decoded), decoded
    first = decoded[0]
    assert isinstance(first, Event)
    assert (first.user_id, first.type, first.ts_ms) == ("cdnow-1", "purchase", T0)
    assert (first.amount, first.quantity, first.currency) == (10.0, 2, "USD")
    times = [d.ts_ms for d in decoded if isinstance(d, Event)]
    assert times == sorted(times)
    assert [e["event_id"] for e in events] == [
        "cdnow-1-19970101-0",
        "cdnow-1-19970101-1",
        "cdnow-2-19970102-0",
        "cdnow-1-19970104-0",
    ]
    # Stable: the same ids on every run, so a second replay is de-duplicated.
    assert list(to_events(SMALL)) == events


def test_default_limits_accept_the_1990s() -> None:
    event = next(to_events(SMALL))
    out = decode(orjson.dumps(event), b"cdnow-1", "shop.purchases", 0, 0, NOW)
    assert isinstance(out, Event) and out.ts_ms == event["ts"]


def test_write_jsonl_is_what_replay_reads(tmp_path: Path) -> None:
    from consumers.replay import read_jsonl

    path = tmp_path / "events.jsonl.gz"
    assert write_jsonl(path, to_events(SMALL)) == len(SMALL)
    with gzip.open(path, "rb") as f:
        records = list(read_jsonl(f))
    assert [r.problem for r in records] == [None] * len(SMALL)
    assert [r.user_id for r in records] == ["cdnow-1", "cdnow-1", "cdnow-2", "cdnow-1"]


def test_rfm_arithmetic() -> None:
    r = rfm(SMALL, as_of_ms=end_ms(SMALL))
    assert r.customer.tolist() == [1, 2]
    assert r.recency_days.tolist() == [0.0, 2.0]
    assert r.orders.tolist() == [3, 1]
    assert r.spend.tolist() == [17.75, 0.0]
    # As of day 2, customer 1's day-3 purchase has not happened yet.
    r = rfm(SMALL, as_of_ms=T0 + 2 * DAY_MS)
    assert r.recency_days.tolist() == [2.0, 1.0]
    assert r.orders.tolist() == [2, 1]
    assert r.spend.tolist() == [12.5, 0.0]
    # Before customer 2's first purchase, customer 2 has no RFM.
    assert rfm(SMALL, as_of_ms=T0).customer.tolist() == [1]


def test_rfm_profiles_of_any_labelling() -> None:
    as_of = end_ms(SMALL)
    by_user = rfm_profiles({"cdnow-1": "x", "cdnow-2": "x"}, SMALL, as_of)
    assert len(by_user) == 1
    (p,) = by_user
    assert (p.segment, p.size, p.share) == ("x", 2, 1.0)
    assert (p.recency_days, p.orders, p.spend) == (1.0, 2.0, 8.875)
    by_id = rfm_profiles({1: 0, 2: 1}, SMALL, as_of)
    assert [(q.segment, q.size, q.spend) for q in by_id] == [(0, 1, 17.75), (1, 1, 0.0)]
    assert rfm_profiles({}, SMALL, as_of) == []
    with pytest.raises(ValueError, match="no purchase by"):
        rfm_profiles({1: 0, 99: 1}, SMALL, as_of)
    with pytest.raises(ValueError, match="not a CDNOW user id"):
        rfm_profiles({"user-1": 0}, SMALL, as_of)


def three_groups() -> tuple[Transactions, dict[int, int]]:
    """Thirty customers in three obvious RFM groups, and which group each is in."""
    rng = np.random.default_rng(3)
    end = T0 + 600 * DAY_MS
    # (recency days, orders, spend per order): loyal, occasional, lapsed one-timers.
    groups = [(2, 30, 40.0), (60, 5, 20.0), (500, 1, 8.0)]
    rows: list[tuple[int, int, float, int]] = []
    truth: dict[int, int] = {}
    for g, (recency, orders, per_order) in enumerate(groups):
        for i in range(10):
            customer = 100 * g + i
            truth[customer] = g
            last = end - (recency + int(rng.integers(0, 3))) * DAY_MS
            for n in range(orders):
                amount = per_order * float(rng.uniform(0.9, 1.1))
                rows.append((customer, last - n * DAY_MS, round(amount, 2), 1))
    return Transactions.from_rows(rows), truth


def test_batch_rfm_recovers_obvious_groups() -> None:
    pytest.importorskip("sklearn")
    from sklearn.metrics import adjusted_rand_score

    t, truth = three_groups()
    baseline = batch_rfm(t, end_ms(t), k=3, seed=1)
    customers = sorted(truth)
    assert adjusted_rand_score(
        [truth[c] for c in customers], [baseline.labels[c] for c in customers]
    ) == pytest.approx(1.0)
    # Segment 0 spends most: the loyal group.
    assert {baseline.labels[c] for c in customers if truth[c] == 0} == {0}
    assert [p.segment for p in baseline.profiles] == [0, 1, 2]
    assert baseline.profiles[0].orders == 30.0
    assert baseline.selection is None


def test_choose_baseline_k_finds_three_groups() -> None:
    pytest.importorskip("sklearn")
    t, _ = three_groups()
    selection = choose_baseline_k(t, end_ms(t), seed=1, ks=range(2, 6))
    assert selection.k == 3
    assert sorted(selection.silhouette) == sorted(selection.inertia) == [2, 3, 4, 5]
    assert selection.sample_size == 30
    assert selection.reason.startswith("k=3 has the highest silhouette")
    with pytest.raises(ValueError, match="k must run from 2"):
        choose_baseline_k(t, end_ms(t), ks=[1, 2])


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(real_data.importlib.metadata, "distribution", not_installed)
    with pytest.raises(RealDataUnavailable, match=r"pip install -e '\.\[quality\]'"):
        load_transactions()


def _installed() -> bool:
    try:
        real_data.data_path()
    except RealDataUnavailable:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="the quality extra (lifetimes) is not installed")
def test_the_real_file() -> None:
    t = load_transactions()
    assert len(t) == 69_659
    assert len(np.unique(t.customer)) == 23_570
    assert t.ts_ms[0] == T0
    assert end_ms(t) == int(datetime(1998, 6, 30, tzinfo=UTC).timestamp() * 1000)
    assert round(float(t.amount.sum()), 2) == 2_500_315.63
    events = list(to_events(t))
    assert len({e["event_id"] for e in events}) == len(t)
