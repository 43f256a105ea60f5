"""`segmenter replay`: parsing lines and rows into events (no I/O), routing, sending and
confirming with a stand-in producer, and the command's exit codes without a broker."""

from __future__ import annotations

import gzip
import time
from contextlib import ExitStack
from pathlib import Path

import orjson
import pytest

from consumers.producer import Deliveries, DeliveryError, send
from consumers.replay import (
    ReplayInputError,
    ReplayReport,
    csv_cell,
    guess_format,
    messages,
    open_input,
    parse_csv_header,
    parse_csv_row,
    parse_json_line,
    read_csv,
    read_jsonl,
    render_progress,
    summary,
)
from loadtest.devstack.servers import free_port
from stream.settings import Settings
from tests.consumers.test_cli import segmenter

SETTINGS = Settings(clicks_topic="c", purchases_topic="p", deadletter_topic="dl")
VIEW = b'{"event_id":"e1","user_id":"u1","type":"view","ts":1700000000000}'
BUY = b'{"event_id":"e2","user_id":"u2","type":"purchase","ts":1700000000000,"amount":5}'


# -- JSON lines ------------------------------------------------------------------------


def test_a_json_line_is_sent_byte_for_byte_keyed_by_its_user() -> None:
    spaced = b'{ "user_id" : "u1", "type": "view", "event_id": "e", "ts": 1 }'
    r = parse_json_line(3, spaced + b"\r\n")
    assert r is not None
    assert (r.line, r.value, r.user_id, r.event_type, r.problem) == (3, spaced, "u1", "view", None)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{oops", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"u1"', "not a JSON object"),
        (b'{"event_id": "e", "type": "view", "ts": 1}', "no user_id to key it by"),
        (b'{"user_id": 42, "type": "view"}', "no user_id to key it by"),
        (b'{"user_id": "", "type": "view"}', "no user_id to key it by"),
    ],
)
def test_lines_that_are_not_events_are_malformed_and_kept_as_they_are(
    raw: bytes, problem: str
) -> None:
    r = parse_json_line(1, raw + b"\n")
    assert r is not None
    assert (r.problem, r.value, r.user_id) == (problem, raw, None)


def test_events_the_segmenter_would_reject_are_still_events() -> None:
    """Schema checks are the segmenter's: it dead-letters with the precise reason."""
    r = parse_json_line(1, b'{"user_id": "u1", "type": "teleport", "amount": -5}')
    assert r is not None and r.problem is None and r.user_id == "u1"


def test_json_lines_are_numbered_from_one_blank_lines_skipped_but_counted() -> None:
    records = list(read_jsonl([VIEW + b"\n", b"\n", b"   \n", b"nope\n", BUY]))
    assert [(r.line, r.problem) for r in records] == [(1, None), (4, "not JSON"), (5, None)]


# -- CSV -------------------------------------------------------------------------------


def test_csv_header_names_event_fields_only() -> None:
    assert parse_csv_header([" event_id", "user_id ", "type", "ts"]) == REQUIRED_COLS
    with pytest.raises(ReplayInputError, match="unknown column 'amout'"):
        parse_csv_header([*REQUIRED_COLS, "amout"])
    with pytest.raises(ReplayInputError, match="required column ts is missing"):
        parse_csv_header(["event_id", "user_id", "type"])
    with pytest.raises(ReplayInputError, match="column type appears twice"):
        parse_csv_header([*REQUIRED_COLS, "type"])


REQUIRED_COLS = ("event_id", "user_id", "type", "ts")


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("ts", "1700000000000", 1700000000000),
        ("ts", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"),
        ("amount", "12.5", 12.5),
        ("amount", "-5", -5),  # the segmenter says negative_value
        ("amount", "1e3", 1000.0),
        ("quantity", "3", 3),
        ("quantity", " 3 ", 3),
        ("price", "nan", "nan"),  # not a number: the segmenter says bad_type
        ("price", "inf", "inf"),
        ("price", "1_000", "1_000"),
        ("price", "12,50", "12,50"),
        ("user_id", "0042", "0042"),  # ids stay text
        ("event_id", "17", "17"),
    ],
)
def test_csv_cells_are_numbers_only_in_numeric_columns(name: str, text: str, value: object) -> None:
    got = csv_cell(name, text)
    assert got == value and type(got) is type(value)


def test_csv_row_needs_one_cell_per_column() -> None:
    with pytest.raises(ValueError, match="3 cells for 4 columns"):
        parse_csv_row(REQUIRED_COLS, ["e", "u", "view"])


def test_csv_rows_become_json_events_and_bad_rows_keep_their_text() -> None:
    text = (
        "\ufeffevent_id,user_id,type,ts,category,amount\r\n"  # a BOM, as spreadsheets write
        "\r\n"
        'e1,u1,view,1700000000000,"books, rare",\r\n'
        'e2,u2,purchase,1700000000001,"multi\r\nline",9.99\r\n'
        "e3,u3,view\r\n"
        'e4,u4,view,1,"a"b,\r\n'
        "e5,u5,click,2026-01-02T03:04:05Z,,\r\n"
    )
    records = list(read_csv(text.removeprefix("\ufeff").splitlines(keepends=True)))
    events = [(r.line, orjson.loads(r.value)) for r in records if r.problem is None]
    common = {"type": "view", "ts": 1700000000000}
    assert events == [
        (3, {"event_id": "e1", "user_id": "u1", **common, "category": "books, rare"}),
        (
            4,
            {
                "event_id": "e2",
                "user_id": "u2",
                "type": "purchase",
                "ts": 1700000000001,
                "category": "multi\r\nline",  # a quoted line end is data
                "amount": 9.99,
            },
        ),
        (8, {"event_id": "e5", "user_id": "u5", "type": "click", "ts": "2026-01-02T03:04:05Z"}),
    ]
    assert [r.event_type for r in records if r.problem is None] == ["view", "purchase", "click"]
    bad = [(r.line, r.value, r.user_id, r.problem) for r in records if r.problem]
    assert bad == [
        (6, b"e3,u3,view", None, "not a CSV event row: 3 cells for 6 columns"),
        (7, b'e4,u4,view,1,"a"b,', None, "not a CSV row: ',' expected after '\"'"),
    ]


def test_a_csv_row_that_is_not_utf8_is_sent_with_its_own_bytes(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"event_id,user_id,type,ts\ne1,u\xe9,view,1\ne2,u2,view,2\n")
    with ExitStack() as stack:
        records = list(open_input(str(path), "csv", stack).records)
    assert [(r.value, r.problem is None) for r in records] == [
        (b"e1,u\xe9,view,1", False),
        (b'{"event_id":"e2","user_id":"u2","type":"view","ts":2}', True),
    ]


def test_a_bad_csv_header_stops_before_any_record() -> None:
    with pytest.raises(ReplayInputError, match="unknown column 'user'"):
        next(read_csv(["event_id,user,type,ts\n", "e1,u1,view,1\n"]))


# -- files -----------------------------------------------------------------------------


def test_gzip_is_recognised_by_its_bytes_and_progress_is_in_compressed_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.data"  # no telling name: the magic bytes decide
    path.write_bytes(gzip.compress(VIEW + b"\n" + BUY + b"\n"))
    with ExitStack() as stack:
        source = open_input(str(path), "jsonl", stack)
        assert [r.user_id for r in source.records] == ["u1", "u2"]
        assert source.size == path.stat().st_size == source.position()


def test_a_missing_file_is_a_readable_error(tmp_path: Path) -> None:
    with ExitStack() as stack, pytest.raises(ReplayInputError, match="No such file"):
        open_input(str(tmp_path / "nope.jsonl"), "jsonl", stack)


def test_format_follows_the_name() -> None:
    assert [guess_format(p) for p in ("a.CSV", "a.csv.gz", "a.jsonl.gz", "a.txt", "-")] == [
        "csv",
        "csv",
        "jsonl",
        "jsonl",
        "jsonl",
    ]


# -- routing, counting, sending --------------------------------------------------------


def test_purchases_and_clicks_go_to_their_topics_keyed_by_user_malformed_to_clicks() -> None:
    records = list(read_jsonl([VIEW, BUY, b"nope", b'{"type": "purchase"}']))
    report = ReplayReport()
    sent = list(messages(records, SETTINGS, skip_invalid=False, report=report))
    assert sent == [
        ("c", VIEW, b"u1"),
        ("p", BUY, b"u2"),
        ("c", b"nope", None),
        ("p", b'{"type": "purchase"}', None),
    ]
    assert (report.events, report.malformed, report.skipped) == (2, 2, 0)
    assert report.quoted == [(3, "not JSON"), (4, "no user_id to key it by")]


def test_skip_invalid_leaves_malformed_lines_out_but_counts_them() -> None:
    report = ReplayReport()
    sent = list(messages(read_jsonl([VIEW, b"nope"]), SETTINGS, True, report))
    assert sent == [("c", VIEW, b"u1")]
    assert (report.malformed, report.skipped, report.messages) == (1, 1, 1)


class Recorder:
    """Stands in for confluent_kafka.Producer: its queue holds ``room`` messages."""

    def __init__(self, room: int = 1_000_000, undelivered: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.room, self.undelivered, self.polls = room, undelivered, 0

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        if len(self.sent) >= self.room:
            raise BufferError("queue full")
        self.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        self.room += 1
        return 0

    def flush(self, timeout: float) -> int:
        return self.undelivered


def test_send_waits_for_room_in_a_full_queue_and_never_drops() -> None:
    producer = Recorder(room=2)
    msgs = [("c", b"%d" % i, None) for i in range(5)]
    assert send(producer, msgs, Deliveries()) == 5
    assert producer.sent == msgs and producer.polls >= 3


def test_send_paces_at_the_rate_and_reports_progress() -> None:
    seen: list[int] = []
    producer = Recorder()
    started = time.monotonic()
    send(producer, [("c", b"x", None)] * 40, Deliveries(), rate=200.0, progress=seen.append)
    assert time.monotonic() - started >= 0.18  # 40 messages at 200/s
    assert seen and seen[-1] == 40


def test_deliveries_confirm_raises_on_failures_and_undelivered() -> None:
    d = Deliveries()
    d.confirm(Recorder(), 3)  # nothing failed: no error
    d.fail("c: Broker: Message size too large")
    with pytest.raises(DeliveryError, match=r"1 of 3 messages failed delivery \(c: Broker"):
        d.confirm(Recorder(), 3)
    with pytest.raises(DeliveryError, match="2 still undelivered"):
        Deliveries().confirm(Recorder(undelivered=2), 3, timeout=0.01)


def test_progress_line_and_summary() -> None:
    assert render_progress(250, 1.0, 25, 100, width=4) == "[#   ]  25%  250 events  250/s"
    assert render_progress(10, 1.0, 500, 100, width=2) == "[##] 100%  10 events  10/s"
    r = ReplayReport(events=1200, malformed=2, skipped=2, elapsed_s=1.0)
    r.by_topic.update({"c": 1000, "p": 200})
    assert summary(r, SETTINGS, dry_run=False) == (
        "sent 1,200 events and 2 malformed lines in 1.0s (1,200/s): 1,000 to c, 200 to p; "
        "2 malformed skipped"
    )
    assert summary(r, SETTINGS, dry_run=True) == (
        "dry run, nothing sent: 1,200 events and 2 malformed lines (to be skipped): "
        "1,000 to c, 200 to p"
    )


# -- the command, without a broker ---------------------------------------------------


def test_dry_run_reads_stdin_counts_and_contacts_no_broker() -> None:
    done = segmenter(
        "replay", "-", "--dry-run", stdin=(VIEW + b"\nnope\n" + BUY + b"\n").decode(),
        SEGMENTER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "dry run, nothing sent: 2 events and 1 malformed line (to be sent as they are): "
        "2 to shop.clicks, 1 to shop.purchases"
    )
    assert "line 2: malformed: not JSON" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/events.jsonl"], "cannot read /nonexistent/events.jsonl"),
        (["-", "--rate", "0"], "--rate must be greater than 0"),
        (["-", "--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_usage_exits_2_with_a_message(args: list[str], message: str) -> None:
    done = segmenter("replay", *args, stdin="")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_csv_header_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("event_id,user,type,ts\n")
    done = segmenter("replay", str(path), "--dry-run")
    assert done.returncode == 2
    assert "unknown column 'user'" in done.stderr


def test_an_unreachable_broker_exits_1_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(VIEW + b"\n")
    port = free_port()
    done = segmenter("replay", str(path), SEGMENTER_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
    err = done.stderr
    assert done.returncode == 1
    assert f"cannot reach the Kafka broker at 127.0.0.1:{port}" in err
    assert "SEGMENTER_KAFKA_BOOTSTRAP" in err
    assert err.count("\n") == 1, err  # one readable line, not librdkafka's retries
