"""What clients can make bootd write to its log is bounded too: an unparseable HTTP request is one line at most
every 10 s, with how many were left out, and a client's control characters never start a line of their own."""

import logging

from aiohttp.http_exceptions import BadHttpMessage

from appliance.logs import BadRequestFilter


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
