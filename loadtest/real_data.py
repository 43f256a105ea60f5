"""A real retail purchase history (CDNOW) as segmenter events, and its batch RFM baseline.

The generator's personas are made up; this is what real shoppers did. CDNOW, an online
CD shop, recorded every purchase of the 23,570 customers who first bought from it in the
first quarter of 1997, up to the end of June 1998: one row per purchase with the customer,
the day, the number of CDs and the dollar value. The file ``CDNOW_master.txt`` ships as
package data of the ``lifetimes`` distribution on PyPI, installed by this project's
``quality`` extra (``pip install -e '.[quality]'``). Only the file is read, located through
the distribution's metadata and parsed here: ``lifetimes`` itself is never imported (its
code loads pandas, scipy and autograd, none of which reading one text file needs).

What this module gives a quality run:

- :func:`load_transactions`: the purchases, in time order (:class:`Transactions`);
- :func:`to_events` and :func:`write_jsonl`: one ``purchase`` event per purchase, in the
  input schema, as JSON lines for ``segmenter replay``;
- :func:`rfm`, :func:`batch_rfm` and :func:`choose_baseline_k`: recency, frequency and
  monetary value per customer as of a date, and a batch k-means on them, the method of the
  source documents, to compare the segmenter's segments with;
- :func:`rfm_profiles`: each segment's size and mean recency, orders and spend for any
  labelling (the baseline's, or the segmenter's as read from Redis), side by side.

Time. The file has days, not times: a purchase is placed at midnight UTC of its day, so
a customer's purchases on one day share a timestamp. The data ends on 1998-06-30
(:func:`end_ms`); RFM "as of the end of data" is as of that midnight, so a purchase on the
last day has a recency of 0 days. The segmenter accepts events from any time since 1970
by default, so the file replays as it is.

    python -m loadtest.real_data --jsonl loadtest/out/cdnow.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import sys
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from stream.errors import SegmenterError

#: The distribution that ships the data file, and the file inside it.
DISTRIBUTION = "lifetimes"
DATA_FILE = "lifetimes/datasets/CDNOW_master.txt"
#: What to run when the data is missing (the extra holds just the distribution).
INSTALL_HINT = "pip install -e '.[quality]'"
#: Prefix of the user ids of the events: CDNOW customer 42 is user ``cdnow-42``.
USER_PREFIX = "cdnow-"
#: Every CDNOW amount is in US dollars.
CURRENCY = "USD"
#: The candidate segment counts of :func:`choose_baseline_k`, as in the source documents.
K_RANGE = range(2, 9)

DAY_MS = 86_400_000


class RealDataUnavailable(SegmenterError):
    """The real data set is not installed, or its file cannot be read as CDNOW purchases."""


@dataclass(frozen=True, eq=False)
class Transactions:
    """Purchases, one per row of the source, in time order (file order within a day).

    Parallel read-only arrays, one element per purchase: a data set of 70,000 rows is a
    few arrays rather than 70,000 objects, and the RFM arithmetic is vectorised over them.

    Attributes
    ----------
    customer
        Customer id (``int64``).
    ts_ms
        Purchase time, epoch milliseconds UTC (``int64``): midnight of the purchase day.
    amount
        Order total in US dollars (``float64``), ``>= 0``.
    quantity
        Number of items (``int64``), ``>= 0``.
    """

    customer: np.ndarray
    ts_ms: np.ndarray
    amount: np.ndarray
    quantity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.customer)
        for name in ("ts_ms", "amount", "quantity"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, customer {n}")
        if n and np.any(np.diff(self.ts_ms) < 0):
            raise ValueError("transactions must be in time order (see from_rows)")
        if np.any(self.amount < 0) or np.any(self.quantity < 0):
            raise ValueError("amounts and quantities must be >= 0")
        # Frozen all the way down: a shared data set that one caller could edit in place
        # would silently change every later result.
        for name in ("customer", "ts_ms", "amount", "quantity"):
            getattr(self, name).flags.writeable = False

    def __len__(self) -> int:
        return len(self.customer)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, int, float, int]]) -> Transactions:
        """Transactions from ``(customer, ts_ms, amount, quantity)`` rows in any order.

        Rows are put in time order by a stable sort, so rows of the same time keep the
        order they came in: the result does not depend on anything but the input.

        Examples
        --------
        >>> t = Transactions.from_rows([(2, 2 * DAY_MS, 5.0, 1), (1, DAY_MS, 10.0, 2)])
        >>> t.customer.tolist(), t.ts_ms.tolist(), t.amount.tolist(), len(t)
        ([1, 2], [86400000, 172800000], [10.0, 5.0], 2)
        """
        listed = list(rows)
        customer = np.array([r[0] for r in listed], dtype=np.int64)
        ts_ms = np.array([r[1] for r in listed], dtype=np.int64)
        amount = np.array([r[2] for r in listed], dtype=np.float64)
        quantity = np.array([r[3] for r in listed], dtype=np.int64)
        order = np.argsort(ts_ms, kind="stable")
        return cls(customer[order], ts_ms[order], amount[order], quantity[order])


def parse_cdnow(lines: Iterable[str]) -> Transactions:
    """Parse the text of ``CDNOW_master.txt``.

    A header row, then one purchase per row, four fields separated by blanks: customer
    id, day (``YYYYMMDD``), number of CDs, dollar value. Blank rows are skipped.

    Raises
    ------
    RealDataUnavailable
        For a row that is not four such fields: a different file, or a damaged one.

    Examples
    --------
    >>> t = parse_cdnow([" customer_id  date number_of_cds  dollar_value\\r\\n",
    ...                  " 00002 19970112  1   12.00\\r\\n", " 00001 19970101  1   11.77\\r\\n"])
    >>> t.customer.tolist(), t.ts_ms.tolist(), t.amount.tolist(), t.quantity.tolist()
    ([1, 2], [852076800000, 853027200000], [11.77, 12.0], [1, 1])
    """
    rows: list[tuple[int, int, float, int]] = []
    epoch_day: dict[str, int] = {}  # ~550 distinct days: parse each once
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or number == 1:
            continue
        try:
            customer, day, quantity, amount = fields
            if day not in epoch_day:
                parsed = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
                epoch_day[day] = int(parsed.timestamp()) * 1000
            row = (int(customer), epoch_day[day], float(amount), int(quantity))
        except ValueError:
            raise RealDataUnavailable(
                f"line {number} is not a CDNOW purchase (customer, YYYYMMDD, CDs, dollars): "
                f"{line.strip()[:80]!r}"
            ) from None
        rows.append(row)
    return Transactions.from_rows(rows)


def data_path() -> Path:
    """Where the installed ``lifetimes`` distribution keeps ``CDNOW_master.txt``.

    Found through the distribution's metadata, so its code is never imported.

    Raises
    ------
    RealDataUnavailable
        If the distribution is not installed or does not hold the file.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RealDataUnavailable(
            f"the CDNOW purchase history ships in the {DISTRIBUTION!r} package, which is not "
            f"installed: run {INSTALL_HINT}"
        ) from None
    path = Path(str(dist.locate_file(DATA_FILE)))
    if not path.is_file():
        raise RealDataUnavailable(
            f"{DISTRIBUTION} {dist.version} is installed but has no {DATA_FILE} "
            f"(looked at {path}): reinstall it with {INSTALL_HINT}"
        )
    return path


def load_transactions(path: str | Path | None = None) -> Transactions:
    """Load the CDNOW purchases.

    Parameters
    ----------
    path
        A copy of ``CDNOW_master.txt``; by default the one of the installed ``lifetimes``
        distribution (:func:`data_path`). Never downloaded: without the package or a
        path, this fails.

    Returns
    -------
    Transactions
        69,659 purchases of 23,570 customers from the installed file, in time order.

    Raises
    ------
    RealDataUnavailable
        If the data is not installed (the message says what to install) or not readable.
    """
    source = Path(path) if path is not None else data_path()
    try:
        with open(source, encoding="ascii") as text:
            return parse_cdnow(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise RealDataUnavailable(f"cannot read the CDNOW purchases from {source}: {exc}") from None


def end_ms(transactions: Transactions) -> int:
    """The end of the data: the time of its last purchase (the analysis date of RFM).

    >>> end_ms(Transactions.from_rows([(1, 5 * DAY_MS, 1.0, 1), (2, 9 * DAY_MS, 1.0, 1)]))
    777600000
    """
    if not len(transactions):
        raise ValueError("no transactions")
    return int(transactions.ts_ms[-1])


def user_id(customer: int) -> str:
    """The event ``user_id`` of a customer.

    >>> user_id(42)
    'cdnow-42'
    """
    return f"{USER_PREFIX}{customer}"


def customer_of(user: int | str) -> int:
    """The customer id of a ``user_id`` (``cdnow-42``), or of a customer id as it is.

    >>> customer_of("cdnow-42"), customer_of(42)
    (42, 42)
    """
    if isinstance(user, int):
        return user
    if not user.startswith(USER_PREFIX) or not user[len(USER_PREFIX) :].isdigit():
        raise ValueError(f"{user!r} is not a CDNOW user id ({USER_PREFIX}<customer id>)")
    return int(user[len(USER_PREFIX) :])


def to_events(transactions: Transactions) -> Iterator[dict[str, object]]:
    """One ``purchase`` event per purchase, in time order, in the input event schema.

    The ``event_id`` is ``cdnow-<customer>-<YYYYMMDD>-<n>``, ``n`` counting the customer's
    purchases of that day from 0 in the order of the data: unique, and the same on every
    run, so a replay of the file twice is de-duplicated rather than counted twice.

    Examples
    --------
    >>> t = Transactions.from_rows([(7, 852076800000, 11.77, 1), (7, 852076800000, 0.0, 2)])
    >>> for e in to_events(t):
    ...     print(e)  # doctest: +NORMALIZE_WHITESPACE
    {'event_id': 'cdnow-7-19970101-0', 'user_id': 'cdnow-7', 'type': 'purchase',
     'ts': 852076800000, 'amount': 11.77, 'currency': 'USD', 'quantity': 1}
    {'event_id': 'cdnow-7-19970101-1', 'user_id': 'cdnow-7', 'type': 'purchase',
     'ts': 852076800000, 'amount': 0.0, 'currency': 'USD', 'quantity': 2}
    """
    seen: Counter[tuple[int, int]] = Counter()
    day_text: dict[int, str] = {}
    for customer, ts_ms, amount, quantity in zip(
        transactions.customer.tolist(),
        transactions.ts_ms.tolist(),
        transactions.amount.tolist(),
        transactions.quantity.tolist(),
        strict=True,
    ):
        day = ts_ms // DAY_MS
        if day not in day_text:
            day_text[day] = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y%m%d")
        n = seen[customer, day]
        seen[customer, day] += 1
        yield {
            "event_id": f"{USER_PREFIX}{customer}-{day_text[day]}-{n}",
            "user_id": user_id(customer),
            "type": "purchase",
            "ts": ts_ms,
            # Cents as in the source: float sums can leave 12.000000000000002.
            "amount": round(amount, 2),
            "currency": CURRENCY,
            "quantity": quantity,
        }


def write_jsonl(path: str | Path, events: Iterable[Mapping[str, object]]) -> int:
    """Write events as JSON lines (gzip-compressed if ``path`` ends in ``.gz``).

    The file is what ``segmenter replay`` reads. Returns the number of events written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(target, "wb") as raw:
        out: io.BufferedWriter | gzip.GzipFile = raw
        if target.suffix == ".gz":
            out = gzip.GzipFile(fileobj=raw, mode="wb")
        with out:
            for event in events:
                out.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
                count += 1
    return count


@dataclass(frozen=True, eq=False)
class RFM:
    """Recency, frequency and monetary value per customer, as of one time.

    Parallel arrays, one element per customer with a purchase by then, by customer id.

    Attributes
    ----------
    as_of_ms
        The analysis time (epoch ms); purchases after it are not counted.
    customer
        Customer ids, ascending.
    recency_days
        Days from the customer's last purchase to ``as_of_ms``.
    orders
        Number of purchases (rows of the data, so two orders on one day count twice, as
        two purchase events do in the segmenter).
    spend
        Total of their amounts, US dollars.
    """

    as_of_ms: int
    customer: np.ndarray
    recency_days: np.ndarray
    orders: np.ndarray
    spend: np.ndarray

    def index_of(self, customers: Sequence[int]) -> np.ndarray:
        """Positions of ``customers`` in the arrays.

        Raises
        ------
        ValueError
            Naming up to five customers that have no purchase by ``as_of_ms``.
        """
        wanted = np.asarray(customers, dtype=np.int64)
        pos = np.searchsorted(self.customer, wanted)
        pos = np.minimum(pos, max(len(self.customer) - 1, 0))
        if not len(self.customer):
            missing = wanted
        else:
            missing = wanted[self.customer[pos] != wanted]
        if len(missing):
            some = ", ".join(str(c) for c in missing[:5].tolist())
            raise ValueError(
                f"{len(missing)} customers have no purchase by the analysis time "
                f"{self.as_of_ms} (e.g. {some})"
            )
        return pos


def rfm(transactions: Transactions, as_of_ms: int) -> RFM:
    """Recency, frequency and monetary value of each customer as of ``as_of_ms``.

    Recency is measured from the analysis time, not from the customer's own last
    activity, and only purchases at or before it count: the figures are what was known
    then, as the segmenter's are as of its watermark.

    Examples
    --------
    >>> t = Transactions.from_rows([(1, 0, 10.0, 1), (1, 2 * DAY_MS, 5.0, 1),
    ...                             (2, DAY_MS, 7.5, 3), (2, 20 * DAY_MS, 99.0, 1)])
    >>> r = rfm(t, as_of_ms=10 * DAY_MS)
    >>> r.customer.tolist(), r.recency_days.tolist(), r.orders.tolist(), r.spend.tolist()
    ([1, 2], [8.0, 9.0], [2, 1], [15.0, 7.5])
    """
    known = transactions.ts_ms <= as_of_ms
    customer_rows = transactions.customer[known]
    customer, inverse = np.unique(customer_rows, return_inverse=True)
    inverse = inverse.reshape(-1)
    last = np.full(len(customer), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, inverse, transactions.ts_ms[known])
    return RFM(
        as_of_ms=as_of_ms,
        customer=customer,
        recency_days=(as_of_ms - last) / DAY_MS,
        orders=np.bincount(inverse, minlength=len(customer)),
        spend=np.bincount(inverse, weights=transactions.amount[known], minlength=len(customer)),
    )


def rfm_matrix(values: RFM) -> np.ndarray:
    """The ``(customers, 3)`` clustering input: log1p of R, F and M, then standardised.

    The logarithm because all three are heavily skewed (a few customers buy hundreds of
    times): on raw values the distance would be about the top spenders alone. Then each
    column to mean 0 and standard deviation 1, so no unit dominates (a constant column
    stays 0).

    >>> t = Transactions.from_rows([(1, 0, 10.0, 1), (2, 0, 30.0, 1)])
    >>> rfm_matrix(rfm(t, as_of_ms=0)).round(3).tolist()
    [[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]
    """
    x = np.log1p(np.column_stack([values.recency_days, values.orders, values.spend]))
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


@dataclass(frozen=True, slots=True)
class SegmentProfile:
    """One segment described by its members' RFM, in human units.

    Attributes
    ----------
    segment
        The segment's label, as given.
    size
        Number of customers.
    share
        Fraction of all labelled customers.
    recency_days, orders, spend
        Their mean days since the last purchase, mean number of purchases and mean total
        spend (US dollars), as of the analysis time.
    """

    segment: Hashable
    size: int
    share: float
    recency_days: float
    orders: float
    spend: float


def _profiles(values: RFM, rows: np.ndarray, labels: Sequence[Hashable]) -> list[SegmentProfile]:
    """Profiles of ``labels[i]``'s segment over RFM row ``rows[i]``, biggest spenders first."""
    names: dict[Hashable, int] = {}
    group = np.array([names.setdefault(label, len(names)) for label in labels], dtype=np.int64)
    sizes = np.bincount(group, minlength=len(names))

    def mean(column: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=column[rows], minlength=len(names)) / sizes

    recency, orders, spend = mean(values.recency_days), mean(values.orders), mean(values.spend)
    profiles = [
        SegmentProfile(
            segment=name,
            size=int(sizes[i]),
            share=float(sizes[i] / len(group)),
            recency_days=float(recency[i]),
            orders=float(orders[i]),
            spend=float(spend[i]),
        )
        for name, i in names.items()
    ]
    return sorted(profiles, key=lambda p: (-p.spend, -p.size))


def rfm_profiles(
    labels: Mapping[int, Hashable] | Mapping[str, Hashable],
    transactions: Transactions,
    as_of_ms: int,
) -> list[SegmentProfile]:
    """Each segment's size and mean recency, orders and spend, for any labelling.

    Parameters
    ----------
    labels
        Segment per customer, keyed by customer id (``42``) or by event user id
        (``"cdnow-42"``): the baseline's :attr:`BatchRFM.labels`, or the segmenter's
        segments as read from Redis. Customers left out are left out of the profiles.
    transactions
        The purchases the RFM figures come from.
    as_of_ms
        The analysis time (:func:`end_ms` for the end of the data).

    Returns
    -------
    list[SegmentProfile]
        One per segment, highest mean spend first.

    Raises
    ------
    ValueError
        If a key is not a CDNOW user id, or a customer has no purchase by ``as_of_ms``.

    Examples
    --------
    >>> t = Transactions.from_rows([(1, 0, 10.0, 1), (1, 2 * DAY_MS, 5.0, 1),
    ...                             (2, DAY_MS, 7.5, 3), (3, 4 * DAY_MS, 1.0, 1)])
    >>> for p in rfm_profiles({"cdnow-1": "a", "cdnow-2": "b", "cdnow-3": "b"}, t, 4 * DAY_MS):
    ...     print(p.segment, p.size, p.recency_days, p.orders, p.spend)
    a 1 2.0 2.0 15.0
    b 2 1.5 1.0 4.25
    """
    if not labels:
        return []
    values = rfm(transactions, as_of_ms)
    rows = values.index_of([customer_of(user) for user in labels])
    return _profiles(values, rows, list(labels.values()))


@dataclass(frozen=True)
class KSelection:
    """The baseline's number of segments and the figures it was chosen on.

    Attributes
    ----------
    k
        The chosen number of segments: the highest silhouette, a tie going to the
        smaller ``k``.
    silhouette
        Mean silhouette of the best k-means run of each candidate ``k``.
    inertia
        Its within-segment sum of squares (SSE), for an elbow plot beside the choice.
    sample_size
        Number of customers the silhouettes were computed on (the same ones for every k).
    """

    k: int
    silhouette: dict[int, float]
    inertia: dict[int, float]
    sample_size: int

    @property
    def reason(self) -> str:
        """One sentence saying why ``k`` was chosen."""
        others = ", ".join(f"k={k} {s:.3f}" for k, s in self.silhouette.items() if k != self.k)
        return (
            f"k={self.k} has the highest silhouette ({self.silhouette[self.k]:.3f}) on "
            f"{self.sample_size:,} customers; {others}"
        )


@dataclass(frozen=True, eq=False)
class BatchRFM:
    """The batch RFM k-means baseline.

    Attributes
    ----------
    k
        Number of segments.
    as_of_ms
        The analysis time of the RFM figures.
    labels
        Segment per customer id. Segments are numbered by mean spend, 0 the highest, so
        the numbering does not depend on the random starts.
    profiles
        Each segment's size and mean recency, orders and spend (:func:`rfm_profiles`).
    silhouette
        Mean silhouette of the labels on the scaled features (on ``sample_size`` customers).
    inertia
        Within-segment sum of squares on the scaled features.
    selection
        How ``k`` was chosen, or None when it was given.
    """

    k: int
    as_of_ms: int
    labels: dict[int, int]
    profiles: list[SegmentProfile]
    silhouette: float
    inertia: float
    selection: KSelection | None


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, float]:
    """Labels and inertia of the best of ``n_init`` k-means++ starts (scikit-learn)."""
    # Imported here: scikit-learn comes with the dev extra, and the rest of this module
    # (loading, events, RFM profiles of the segmenter's labels) works without it.
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise RealDataUnavailable(
            "the batch baseline needs scikit-learn: pip install -e '.[dev]'"
        ) from None
    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit(x)
    return np.asarray(model.labels_), float(model.inertia_)


def _silhouette(x: np.ndarray, labels: np.ndarray, sample: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(x[sample], labels[sample]))


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    """The same ``size`` rows of ``n`` for every silhouette (all of them if fewer)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def choose_baseline_k(
    transactions: Transactions,
    as_of_ms: int,
    seed: int = 7,
    ks: Iterable[int] = K_RANGE,
    *,
    n_init: int = 10,
    sample_size: int = 10_000,
) -> KSelection:
    """Choose the baseline's number of segments by the silhouette, from ``ks`` (2 to 8).

    The silhouette, as the source documents ask and as the segmenter itself chooses its
    ``k`` (:mod:`stream.selection`), so that both sides of the comparison use the same
    rule: for each ``k`` the best of ``n_init`` k-means++ starts, scored by its mean
    silhouette on one random sample of ``sample_size`` customers (the exact score is
    quadratic in the customers; the sample is drawn once, so every ``k`` is judged on the
    same ones). The highest wins; a tie goes to the smaller ``k``. The inertia of each ``k``
    is kept too, for an elbow plot: on skewed data like RFM the SSE curve falls smoothly
    and its elbow is a matter of eye, which is why it is shown but does not decide.

    On CDNOW as of the end of the data this picks k=2 (silhouette 0.57): the customers
    who bought once or twice long ago against the repeat buyers, half the customers
    having bought only once. The segmenter chooses from ``k_min`` to ``k_max`` (3 to 8 by
    default), where the same rule picks k=3 (0.48): the quality run's headline baseline
    chooses among the segmenter's ``k`` (``batch_rfm(..., ks=range(3, 9))``) and reports
    this wider choice beside it.
    """
    x = rfm_matrix(rfm(transactions, as_of_ms))
    candidates = sorted(set(ks))
    if not candidates or candidates[0] < 2 or candidates[-1] >= len(x):
        raise ValueError(f"k must run from 2 to fewer than {len(x)} customers, got {candidates}")
    sample = _sample(len(x), sample_size, seed)
    silhouette: dict[int, float] = {}
    inertia: dict[int, float] = {}
    for k in candidates:
        labels, inertia[k] = _kmeans(x, k, seed, n_init)
        silhouette[k] = _silhouette(x, labels, sample)
    best = max(candidates, key=lambda k: (round(silhouette[k], 12), -k))
    return KSelection(best, silhouette, inertia, len(sample))


def batch_rfm(
    transactions: Transactions,
    as_of_ms: int,
    k: int | None = None,
    seed: int = 7,
    *,
    ks: Iterable[int] = K_RANGE,
    n_init: int = 10,
    sample_size: int = 10_000,
) -> BatchRFM:
    """The batch RFM k-means baseline as of ``as_of_ms``.

    Per customer, recency (days since the last purchase), frequency (purchases over the
    whole history up to then) and monetary value (their total), :func:`rfm_matrix`
    scaled, then scikit-learn's k-means, the best of ``n_init`` k-means++ starts.

    Parameters
    ----------
    transactions
        The purchases.
    as_of_ms
        The analysis time; :func:`end_ms` for the end of the data.
    k
        Number of segments; None chooses it with :func:`choose_baseline_k` from ``ks``.
    seed
        Seeds the k-means starts and the silhouette sample: same seed, same result.
    n_init
        k-means++ starts per fit.
    sample_size
        Customers the silhouette is computed on.

    Returns
    -------
    BatchRFM

    Raises
    ------
    RealDataUnavailable
        If scikit-learn is not installed.
    """
    selection = None
    if k is None:
        selection = choose_baseline_k(
            transactions, as_of_ms, seed, ks, n_init=n_init, sample_size=sample_size
        )
        k = selection.k
    values = rfm(transactions, as_of_ms)
    x = rfm_matrix(values)
    raw, inertia = _kmeans(x, k, seed, n_init)
    # Renumber by mean spend, highest first: labels then read the same on every run.
    spend = np.bincount(raw, weights=values.spend, minlength=k) / np.bincount(raw, minlength=k)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-spend, kind="stable")] = np.arange(k)
    labels = rank[raw]
    rows = np.arange(len(values.customer))
    return BatchRFM(
        k=k,
        as_of_ms=as_of_ms,
        labels=dict(zip(values.customer.tolist(), labels.tolist(), strict=True)),
        profiles=_profiles(values, rows, labels.tolist()),
        silhouette=_silhouette(x, labels, _sample(len(x), sample_size, seed)),
        inertia=inertia,
        selection=selection,
    )


def profile_table(profiles: Sequence[SegmentProfile]) -> str:
    """Profiles as a Markdown table.

    >>> print(profile_table([SegmentProfile(0, 3, 0.75, 12.0, 4.5, 210.0)]))
    | segment | customers | share | mean recency (days) | mean orders | mean spend ($) |
    |---|---:|---:|---:|---:|---:|
    | 0 | 3 | 75.0% | 12.0 | 4.50 | 210.00 |
    """
    lines = [
        "| segment | customers | share | mean recency (days) | mean orders | mean spend ($) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p.segment} | {p.size:,} | {p.share:.1%} | {p.recency_days:.1f} | {p.orders:.2f} "
        f"| {p.spend:,.2f} |"
        for p in profiles
    ]
    return "\n".join(lines)


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def main(argv: list[str] | None = None) -> int:
    """Summarise the data set and its baseline; optionally write it as JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jsonl", metavar="PATH", help="write the purchase events here (.gz ok)")
    ap.add_argument("--k", type=int, help="baseline segments (default: by silhouette, 2..8)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    try:
        started = time.perf_counter()
        transactions = load_transactions()
        loaded = time.perf_counter()
        as_of = end_ms(transactions)
        baseline = batch_rfm(transactions, as_of, args.k, args.seed)
        done = time.perf_counter()
    except RealDataUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    customers = len(np.unique(transactions.customer))
    print(
        f"CDNOW: {len(transactions):,} purchases of {customers:,} customers, "
        f"{_day(int(transactions.ts_ms[0]))} to {_day(as_of)}, "
        f"${transactions.amount.sum():,.2f} in all"
    )
    print(f"loaded in {loaded - started:.2f}s; batch RFM baseline in {done - loaded:.2f}s")
    if baseline.selection is not None:
        print(baseline.selection.reason)
    print(f"baseline k={baseline.k}, silhouette {baseline.silhouette:.3f}, as of {_day(as_of)}")
    print(profile_table(baseline.profiles))
    if args.jsonl:
        count = write_jsonl(args.jsonl, to_events(transactions))
        print(f"wrote {count:,} events to {args.jsonl}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
