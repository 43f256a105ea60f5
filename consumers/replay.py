"""``segmenter replay FILE``: events from a file (JSON lines or CSV) into the input topics.

An event goes where live traffic would: ``type`` purchase to the purchases topic, every
other type to the clicks topic, keyed by its ``user_id`` (the co-partitioning of the two
topics rests on that key). The producer is the generator's (:mod:`consumers.producer`):
idempotent, ``acks=all``, and an event counts as sent only once the broker confirmed it.

Formats
    *JSON lines*: one event object per line, sent byte for byte as it is in the file.
    *CSV*: a header row naming event fields (:data:`FIELDS`; the four of
    :data:`REQUIRED` must be there), then one event per row; empty cells are absent
    fields, and the numeric fields (:data:`NUMERIC`) hold numbers. Each row is sent as a
    JSON object. Either may be gzip-compressed; ``-`` reads standard input.

A line that is not an event (not JSON, not a JSON object, no ``user_id`` to key it by, a
row that is not valid CSV) is *malformed*. It is not dropped silently: by default it is
sent as it is, to the clicks topic, so that the segmenter dead-letters it with a reason
like any bad input, and the summary counts it; ``--skip-invalid`` leaves it out instead.
Events that parse but break the event schema (a negative amount, an unknown type) are the
segmenter's to judge: they are sent, and dead-lettered there.

Parsing (:func:`parse_json_line`, :func:`parse_csv_header`, :func:`parse_csv_row`,
:func:`read_jsonl`, :func:`read_csv`) is pure; :func:`replay` does the I/O.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO, cast

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumers import topics
from consumers.exit_codes import EXIT_CONFIG, EXIT_OK
from consumers.producer import Deliveries, DeliveryError, event_producer_config, input_topic, send
from stream.errors import SegmenterError
from stream.settings import Settings

#: Exit code when some events were not confirmed by the broker.
EXIT_UNDELIVERED = 4
#: Exit code after Ctrl-C (what was sent before it is still confirmed).
EXIT_INTERRUPTED = 130

FORMATS = ("jsonl", "csv")
#: The event fields a CSV header may name (see the README's "Input events").
FIELDS = (
    "event_id",
    "user_id",
    "type",
    "ts",
    "session_id",
    "product_id",
    "category",
    "price",
    "quantity",
    "amount",
    "currency",
)
REQUIRED = ("event_id", "user_id", "type", "ts")
#: Fields whose CSV cells are read as numbers (``ts``: epoch ms; ISO-8601 stays text).
NUMERIC = frozenset(("ts", "price", "quantity", "amount"))
_INT = re.compile(r"[-+]?\d+")
# Plain decimal notation only: float() would also take "nan", "inf" and "1_0".
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?")
#: Malformed lines quoted by line number in the output; the rest are only counted.
_QUOTED = 5
_GZIP_MAGIC = b"\x1f\x8b"


class ReplayInputError(SegmenterError):
    """The input cannot be read as events at all: no such file, a bad CSV header."""


@dataclass(frozen=True, slots=True)
class Record:
    """One line (JSON lines) or row (CSV) of the input, ready to send.

    Attributes
    ----------
    line
        Its (first) line number in the file, from 1.
    value
        The message value: the line as it is (JSON lines), or the row as a JSON object
        (CSV); for a malformed row, the row's text as it is.
    user_id
        The message key, or None when there is no string ``user_id``.
    event_type
        The ``type`` field as found (it picks the topic), or None.
    problem
        None for an event; for a malformed line, what is wrong with it.
    """

    line: int
    value: bytes
    user_id: str | None
    event_type: object
    problem: str | None = None


def _record(line: int, value: bytes, doc: object) -> Record:
    if not isinstance(doc, dict):
        return Record(line, value, None, None, "not a JSON object")
    user_id, event_type = doc.get("user_id"), doc.get("type")
    if not isinstance(user_id, str) or not user_id:
        return Record(line, value, None, event_type, "no user_id to key it by")
    return Record(line, value, user_id, event_type)


def parse_json_line(line: int, raw: bytes) -> Record | None:
    """The record of one JSON line (None for a blank line).

    Examples
    --------
    >>> parse_json_line(1, b'{"event_id":"e1","user_id":"u1","type":"view","ts":1}\\n')
    Record(line=1, value=b'{"event_id":"e1","user_id":"u1","type":"view","ts":1}', \
user_id='u1', event_type='view', problem=None)
    >>> parse_json_line(2, b"{oops").problem, parse_json_line(3, b"[1]").problem
    ('not JSON', 'not a JSON object')
    >>> parse_json_line(4, b"  \\r\\n") is None
    True
    """
    value = raw.rstrip(b"\r\n")
    if not value.strip():
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return Record(line, value, None, None, "not JSON")
    return _record(line, value, doc)


def parse_csv_header(cells: Sequence[str]) -> tuple[str, ...]:
    """The column names of a CSV header row.

    Raises
    ------
    ReplayInputError
        For a column that is not an event field (a typo would lose that field from every
        event), a repeated column, or a required field missing.

    Examples
    --------
    >>> parse_csv_header(["event_id", "user_id", "type", "ts", "amount"])
    ('event_id', 'user_id', 'type', 'ts', 'amount')
    >>> parse_csv_header(["event_id", "user_id", "type", "ts", "amout"])
    Traceback (most recent call last):
    ...
    consumers.replay.ReplayInputError: CSV header: unknown column 'amout'; columns are \
event fields: event_id, user_id, type, ts, session_id, product_id, category, price, \
quantity, amount, currency
    """
    names = tuple(c.strip() for c in cells)
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise ReplayInputError(
            f"CSV header: unknown column {', '.join(map(repr, unknown))}; "
            f"columns are event fields: {', '.join(FIELDS)}"
        )
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise ReplayInputError(f"CSV header: column {', '.join(repeated)} appears twice")
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise ReplayInputError(f"CSV header: required column {', '.join(missing)} is missing")
    return names


def csv_cell(name: str, text: str) -> object:
    """The value of a non-empty cell of column ``name``.

    Numbers in numeric columns become numbers; anything else stays text, so that the
    segmenter names what is wrong with it (``bad_type``) rather than losing it.

    >>> csv_cell("amount", "12.50"), csv_cell("quantity", "2"), csv_cell("ts", "1700000000000")
    (12.5, 2, 1700000000000)
    >>> csv_cell("ts", "2026-01-02T03:04:05Z"), csv_cell("price", "nan"), csv_cell("user_id", "7")
    ('2026-01-02T03:04:05Z', 'nan', '7')
    """
    if name in NUMERIC:
        bare = text.strip()
        if _INT.fullmatch(bare):
            return int(bare)
        if _FLOAT.fullmatch(bare):
            return float(bare)
    return text


def parse_csv_row(header: Sequence[str], cells: Sequence[str]) -> dict[str, object]:
    """The event of one CSV row: empty cells are absent fields.

    Raises
    ------
    ValueError
        If the row does not have one cell per column.

    Examples
    --------
    >>> header = ("event_id", "user_id", "type", "ts", "amount")
    >>> parse_csv_row(header, ["e1", "u1", "purchase", "1700000000000", "30"])
    {'event_id': 'e1', 'user_id': 'u1', 'type': 'purchase', 'ts': 1700000000000, 'amount': 30}
    >>> parse_csv_row(header, ["e2", "u1", "view", "1", ""])
    {'event_id': 'e2', 'user_id': 'u1', 'type': 'view', 'ts': 1}
    """
    if len(cells) != len(header):
        raise ValueError(f"{len(cells)} cells for {len(header)} columns")
    return {name: csv_cell(name, cell) for name, cell in zip(header, cells, strict=True) if cell}


def read_jsonl(lines: Iterable[bytes]) -> Iterator[Record]:
    """The records of JSON lines, blank lines left out.

    >>> [r.problem for r in read_jsonl([b'{"user_id":"u1"}\\n', b"\\n", b"nope\\n"])]
    [None, 'not JSON']
    """
    for number, raw in enumerate(lines, 1):
        record = parse_json_line(number, raw)
        if record is not None:
            yield record


def read_csv(lines: Iterable[str]) -> Iterator[Record]:
    """The records of CSV text: a header row, then one event per row; blank rows left out.

    Text that is not valid UTF-8 should come decoded with ``errors="surrogateescape"``:
    such a row is malformed and sent with its bytes as they were.

    Raises
    ------
    ReplayInputError
        From :func:`parse_csv_header`, before the first record.

    Examples
    --------
    >>> rows = ["user_id,event_id,type,ts,amount\\r\\n", "u1,e1,purchase,5,9.5\\r\\n",
    ...         "u1,e2,view\\r\\n", "u2,e3,view,6,\\r\\n"]
    >>> [(r.line, r.user_id, r.value, r.problem) for r in read_csv(rows)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [(2, 'u1', b'{"user_id":"u1","event_id":"e1","type":"purchase","ts":5,"amount":9.5}', None),
     (3, None, b'u1,e2,view', 'not a CSV event row: 3 cells for 5 columns'),
     (4, 'u2', b'{"user_id":"u2","event_id":"e3","type":"view","ts":6}', None)]
    """
    consumed: list[str] = []  # the text of the row being read, for a malformed row
    count = 0

    def tracked() -> Iterator[str]:
        nonlocal count
        for text in lines:
            count += 1
            consumed.append(text)
            yield text

    # strict: a stray quote is an error (a malformed row), not a silently merged field.
    reader = csv.reader(tracked(), strict=True)
    header: tuple[str, ...] | None = None
    while True:
        first = count + 1
        consumed.clear()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, problem = None, f"not a CSV row: {exc}"
        if cells is not None and not any(c.strip() for c in cells):
            continue
        if header is None:
            if cells is None:
                raise ReplayInputError(f"CSV header (line {first}): {problem}")
            header = parse_csv_header(cells)
            continue
        text = "".join(consumed).rstrip("\r\n")
        raw = text.encode("utf-8", "surrogateescape")
        record = None
        if cells is not None:
            try:
                event = parse_csv_row(header, cells)
                record = _record(first, orjson.dumps(event), event)
            except ValueError as exc:
                problem = f"not a CSV event row: {exc}"
            except orjson.JSONEncodeError:  # text that was not UTF-8 in the file
                problem = "not UTF-8"
        yield record or Record(first, raw, None, None, problem)


def guess_format(path: str) -> str:
    """``csv`` for a ``.csv`` file (``.csv.gz`` too), else ``jsonl``.

    >>> guess_format("a/events.csv.gz"), guess_format("events.jsonl"), guess_format("-")
    ('csv', 'jsonl', 'jsonl')
    """
    name = path.lower().removesuffix(".gz")
    return "csv" if name.endswith(".csv") else "jsonl"


@dataclass
class Input:
    """An opened input: its records, and how far into it reading is (for the progress bar).

    Attributes
    ----------
    records
        The records, read lazily.
    size
        The file's size in bytes (compressed, for gzip), or None (standard input).
    position
        Bytes of the file read so far (compressed, for gzip).
    """

    records: Iterator[Record]
    size: int | None
    position: Callable[[], int]


def open_input(path: str, fmt: str, stack: ExitStack) -> Input:
    """Open ``path`` (``-``: standard input) as ``fmt`` (:data:`FORMATS`), gzip or not.

    Compression is recognised by its magic bytes, not the name. Closed with ``stack``.

    Raises
    ------
    ReplayInputError
        If the file cannot be opened.
    """
    raw: io.BufferedReader
    if path == "-":
        raw = sys.stdin.buffer  # type: ignore[assignment]
        size = None
    else:
        try:
            raw = stack.enter_context(open(path, "rb"))  # noqa: SIM115
        except OSError as exc:
            raise ReplayInputError(f"cannot read {path}: {exc.strerror}") from None
        size = Path(path).stat().st_size
    data: IO[bytes] = raw
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        data = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")))
    records: Iterator[Record]
    if fmt == "csv":
        # newline="": the csv module handles line ends itself (quoted ones included).
        text = io.TextIOWrapper(data, encoding="utf-8-sig", errors="surrogateescape", newline="")
        records = read_csv(text)
    else:
        records = read_jsonl(data)
    position = raw.tell if size is not None else (lambda: 0)
    return Input(records, size, position)


def render_progress(
    sent: int, elapsed_s: float, done: int, size: int | None, width: int = 30
) -> str:
    """One line of progress: a bar when the size is known, the count and the rate.

    >>> render_progress(500, 2.0, 50, 100, width=10)
    '[#####     ]  50%  500 events  250/s'
    >>> render_progress(500, 2.0, 0, None)
    '500 events  250/s'
    """
    counts = f"{sent:,} events  {sent / max(elapsed_s, 1e-9):,.0f}/s"
    if not size:
        return counts
    share = min(done / size, 1.0)
    filled = int(share * width)
    return f"[{'#' * filled}{' ' * (width - filled)}] {share:4.0%}  {counts}"


class ProgressBar:
    """A progress line on a terminal, redrawn at most every ``interval`` seconds."""

    def __init__(
        self, out: TextIO, size: int | None, position: Callable[[], int], interval: float = 0.1
    ) -> None:
        self.out, self.size, self.position, self.interval = out, size, position, interval
        self.started = time.monotonic()
        self.sent = 0
        self._drawn = 0.0

    def __call__(self, sent: int) -> None:
        self.sent = sent
        now = time.monotonic()
        if now - self._drawn >= self.interval:
            self._drawn = now
            line = render_progress(sent, now - self.started, self.position(), self.size)
            self.out.write(f"\r{line}\x1b[K")  # \x1b[K: clear what a longer line left
            self.out.flush()

    def close(self, sent: int | None = None) -> None:
        """Draw the final state (``sent`` messages, if given) and end the line."""
        self._drawn = 0.0
        self(self.sent if sent is None else sent)
        self.out.write("\n")
        self.out.flush()


@dataclass
class ReplayReport:
    """What one replay read and sent.

    Attributes
    ----------
    events
        Records that parsed as events (sent, or counted in a dry run).
    malformed
        Malformed lines, sent or not.
    skipped
        Of those, the ones left out (``--skip-invalid``).
    by_topic
        Messages per topic (sent, or that would be in a dry run).
    quoted
        The first few malformed lines: ``(line number, problem)``.
    elapsed_s
        From the first message to the last confirmation.
    interrupted
        True if Ctrl-C stopped the reading.
    """

    events: int = 0
    malformed: int = 0
    skipped: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    quoted: list[tuple[int, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def messages(self) -> int:
        """Messages sent (or that would be, in a dry run)."""
        return sum(self.by_topic.values())


def messages(
    records: Iterable[Record], settings: Settings, skip_invalid: bool, report: ReplayReport
) -> Iterator[tuple[str, bytes, bytes | None]]:
    """``(topic, value, key)`` of each record to send, counted in ``report``."""
    for r in records:
        if r.problem is None:
            report.events += 1
        else:
            report.malformed += 1
            if len(report.quoted) < _QUOTED:
                report.quoted.append((r.line, r.problem))
            if skip_invalid:
                report.skipped += 1
                continue
        topic = input_topic(r.event_type, settings.clicks_topic, settings.purchases_topic)
        report.by_topic[topic] += 1
        yield topic, r.value, None if r.user_id is None else r.user_id.encode()


def replay(
    records: Iterable[Record],
    settings: Settings,
    rate: float | None = None,
    skip_invalid: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Send ``records`` to the input topics of ``settings`` and confirm their delivery.

    Parameters
    ----------
    records
        From :func:`read_jsonl`, :func:`read_csv` or :func:`open_input`.
    settings
        Bootstrap, topics and client properties.
    rate
        Messages per second; None sends as fast as the broker takes them.
    skip_invalid
        Leave malformed lines out instead of sending them as they are.
    dry_run
        Read and count only: no broker is contacted.
    progress
        Called with the number of messages sent so far, now and then.

    Returns
    -------
    ReplayReport
        With ``interrupted`` set if Ctrl-C stopped it: what was sent before is confirmed.

    Raises
    ------
    BrokerError
        If the broker cannot be reached, or the input topics are missing or not
        co-partitioned (checked first, so that nothing auto-creates them wrongly).
    DeliveryError
        If any message was not confirmed by the broker.
    ReplayInputError
        If the input cannot be read; what was sent before is confirmed first.
    """
    report = ReplayReport()
    outgoing = messages(records, settings, skip_invalid, report)
    if dry_run:
        try:
            for _ in outgoing:
                pass
        except (OSError, EOFError) as exc:
            raise _read_error(report, exc) from None
        return report
    # log_level 2: without a broker, librdkafka would log each failed connection attempt
    # (twenty a second) on stderr, burying the one readable error raised here instead.
    admin = AdminClient({**settings.kafka_client_config(), "log_level": 2})
    topics.check_input_topics(topics.partition_counts(admin, settings.kafka_bootstrap), settings)
    deliveries = Deliveries()
    config = event_producer_config(settings.kafka_bootstrap, settings.kafka_client_config())
    producer = Producer({**config, "on_delivery": deliveries.report})
    started = time.monotonic()
    failure: ReplayInputError | None = None
    try:
        send(producer, outgoing, deliveries, rate, progress)
    except KeyboardInterrupt:
        report.interrupted = True
    except (OSError, EOFError) as exc:
        failure = _read_error(report, exc)
    deliveries.confirm(producer, report.messages)
    report.elapsed_s = time.monotonic() - started
    if failure is not None:
        raise failure
    return report


def _read_error(report: ReplayReport, exc: Exception) -> ReplayInputError:
    """A read error part-way (a truncated or corrupt gzip stream, a disk error)."""
    return ReplayInputError(f"reading stopped after {report.messages} messages: {exc}")


def summary(report: ReplayReport, settings: Settings, dry_run: bool) -> str:
    """The final line: events, malformed lines, where they went, and the rate.

    >>> r = ReplayReport(events=3, malformed=1, by_topic=Counter({"c": 3, "p": 1}), elapsed_s=2)
    >>> print(summary(r, Settings(deadletter_topic="dl"), dry_run=False))
    sent 3 events and 1 malformed line in 2.0s (2/s): 3 to c, 1 to p; the segmenter \
dead-letters malformed lines to dl
    """
    where = ", ".join(f"{n:,} to {t}" for t, n in sorted(report.by_topic.items()))
    bad = f"{report.malformed:,} malformed line{'' if report.malformed == 1 else 's'}"
    if dry_run:
        what = "skipped" if report.skipped else "sent as they are"
        return f"dry run, nothing sent: {report.events:,} events and {bad} (to be {what}): {where}"
    line = (
        f"sent {report.events:,} events and {bad} in {report.elapsed_s:.1f}s "
        f"({report.messages / max(report.elapsed_s, 1e-9):,.0f}/s): {where or 'nothing'}"
    )
    if report.skipped:
        line += f"; {report.skipped:,} malformed skipped"
    elif report.malformed:
        line += f"; the segmenter dead-letters malformed lines to {settings.deadletter_topic}"
    return line


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``segmenter replay``: the command around :func:`replay`; returns the exit code."""
    if args.rate is not None and not args.rate > 0:
        print(f"error: --rate must be greater than 0, got {args.rate}", file=sys.stderr)
        return EXIT_CONFIG
    fmt = args.format or guess_format(args.file)
    with ExitStack() as stack:
        try:
            source = open_input(args.file, fmt, stack)
            bar = None
            if sys.stderr.isatty() and not args.dry_run:
                bar = ProgressBar(sys.stderr, source.size, source.position)
            try:
                report = replay(
                    source.records, settings, args.rate, args.skip_invalid, args.dry_run, bar
                )
            finally:
                if bar is not None:
                    bar.close()
        except ReplayInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except DeliveryError as exc:
            print(f"error: not every event reached the broker: {exc}", file=sys.stderr)
            return EXIT_UNDELIVERED
    for number, problem in report.quoted:
        print(f"line {number}: malformed: {problem}", file=sys.stderr)
    if report.malformed > len(report.quoted):
        print(f"... and {report.malformed - len(report.quoted)} more", file=sys.stderr)
    print(summary(report, settings, args.dry_run))
    if report.interrupted:
        print("interrupted: the rest of the file was not sent", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK
