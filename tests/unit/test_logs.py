"""What clients can make bootd write to its log is bounded too: an unparseable HTTP request is one line at most
every 10 s, with how many were left out, and a client's control characters never start a line of their own.
A machine step's line, queued without a LogRecord, is the line a LogRecord would have given, in its place."""

import io
import json
import logging
from contextlib import contextmanager

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from appliance.events import Event, EventKind, log_event
from appliance.logs import (
    BadRequestFilter, BatchedStreamHandler, JsonFormatter, TextFormatter, setup_logging, step_handler,
)


def bad_request(text: str) -> logging.LogRecord:
    try:
        raise BadHttpMessage(text)
    except BadHttpMessage:
        import sys

        return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (),
                                 sys.exc_info())


def test_a_flood_of_unparseable_requests_is_one_line_per_interval_with_a_count():
    now = [0.0]
    filter_ = BadRequestFilter(every=10.0, clock=lambda: now[0])
    first = bad_request("Invalid method encountered:\r\n\r\nGET / HTTP/1.1")
    assert filter_.filter(first) and first.levelname == "WARNING" and first.exc_info is None
    line = first.getMessage()
    assert "\n" not in line and "\r" not in line and "\\r\\n" in line
    for _ in range(999):
        now[0] += 0.005
        assert not filter_.filter(bad_request("garbage"))
    now[0] = 10.0
    summary = bad_request("garbage")
    assert filter_.filter(summary) and "999 more unparseable requests" in summary.getMessage()


def test_other_records_pass_untouched():
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "a real bug", (), None)
    assert BadRequestFilter().filter(record) and record.levelname == "ERROR"


# --- a machine step's line without a LogRecord (appliance/logs.py, events.log_event) -----------------------

STEPS = [  # (created, level, message, mac, peer, stage, ok): what log_event passes
    (1764700000.0, logging.INFO, "52:54:00:00:00:01 dhcp: proxy OFFER: arch 0 (BIOS): tftp:undionly.kpxe undionly.kpxe",
     "52:54:00:00:00:01", None, "dhcp", True),
    (1764700000.999, logging.WARNING, '52:54:00:00:00:02 tftp: "quoted" \\ caf\u00e9 \u2026 failed', "52:54:00:00:00:02",
     "192.0.2.7", "tftp", False),
    (1764700001.0005, logging.DEBUG, "192.0.2.9 boot-script: /bootd.ipxe", None, "192.0.2.9", "boot-script", True),
    (1764703599.1239, logging.INFO, "bootd assets: channel stable: 1.2.3", None, None, "assets", True),
]


@pytest.mark.parametrize("formatter_type", [TextFormatter, JsonFormatter])
@pytest.mark.parametrize("step", STEPS)
def test_a_step_line_is_byte_for_byte_the_line_a_log_record_gives(formatter_type, step):
    created, level, message, mac, peer, stage, ok = step
    record = logging.LogRecord("appliance.events", level, __file__, 1, "%s", (message,), None)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0  # as LogRecord makes them
    record.mac, record.peer, record.stage, record.ok = mac, peer, stage, ok  # as extra= sets them, in this order
    expected = formatter_type().format(record)
    line = (created, logging.getLevelName(level), "appliance.events", message, mac, peer, stage, ok)
    assert formatter_type().format_step(line) == expected


def test_step_lines_and_records_are_written_in_the_order_they_were_logged():
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.emit(logging.LogRecord("appliance.daemon", logging.INFO, __file__, 1, "first", (), None))
    handler.emit_step((1764700000.5, "INFO", "appliance.events", "second", "52:54:00:00:00:01", None, "dhcp", True),
                      logging.INFO)
    handler.emit(logging.LogRecord("appliance.daemon", logging.INFO, __file__, 1, "third", (), None))
    handler.flush()
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["first", "second", "third"]


@contextmanager
def bootd_logging():
    """setup_logging as `bootd run` calls it, the root logger's handlers put back afterwards (pytest adds its
    capture handler to the root for each test phase: inside this, bootd's handler is the only one)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    setup_logging("json", "info")
    root.handlers[0].setStream(stream)
    try:
        yield root.handlers[0], stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_a_step_skips_the_logging_module_only_when_bootds_handler_alone_would_get_it():
    events = logging.getLogger("appliance.events")
    with bootd_logging() as (handler, _stream):
        assert step_handler(events, logging.INFO) is handler
        other = logging.StreamHandler(io.StringIO())  # a test's capture, a user's extra handler: the ordinary path
        events.addHandler(other)
        try:
            assert step_handler(events, logging.INFO) is None
        finally:
            events.removeHandler(other)
        handler.addFilter(lambda record: True)
        assert step_handler(events, logging.INFO) is None
        handler.filters.clear()
        handler.setLevel(logging.WARNING)
        assert step_handler(events, logging.INFO) is None and step_handler(events, logging.WARNING) is handler
        handler.setLevel(logging.NOTSET)
        events.propagate = False
        try:
            assert step_handler(events, logging.INFO) is None
        finally:
            events.propagate = True
    assert step_handler(events, logging.INFO) is None  # pytest's capture handler is back beside it


def test_log_event_writes_the_same_line_either_way(caplog):
    """What the daemon writes through the fast path, and what a capture handler (the ordinary path) sees."""
    event = Event(kind=EventKind.DHCP, mac="52:54:00:00:00:03", peer="192.0.2.3", detail="proxy OFFER: x")
    with bootd_logging() as (handler, stream):
        log_event(event)
        log_event(event, news=False)  # a repeat: DEBUG, below the default level
        handler.flush()
    assert not caplog.records  # it did not go through the logging module
    [fast] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {k: v for k, v in fast.items() if k != "time"} == {
        "level": "info", "logger": "appliance.events", "message": "52:54:00:00:00:03 dhcp: proxy OFFER: x",
        "mac": "52:54:00:00:00:03", "peer": "192.0.2.3", "stage": "dhcp", "ok": True}
    with caplog.at_level("INFO", logger="appliance.events"):
        log_event(event)
    [record] = caplog.records
    slow = json.loads(JsonFormatter().format(record))
    assert {k: v for k, v in slow.items() if k != "time"} == {k: v for k, v in fast.items() if k != "time"}
