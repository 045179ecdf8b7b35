"""Log set-up: human-readable text or one JSON object per line (`--log-format json`).

A line per machine step is logged at INFO, so at thousands of machines a second logging is on the hot path
(a third of proxy-DHCP's time once): the lines of 5 ms are written in one write instead of a write and a
flush each, with the timestamp's text made once per second. ERROR lines, lines logged outside the
loop (worker threads, the CLI) and a batch of 256 are written at once; logging.shutdown writes what is left
at exit.

A machine step's line does not go through the logging module at all when it would only reach bootd's own
handler (`step_handler`): the event's log sink queues a `StepLine` (a tuple of what the line says) in the
handler's batch, in order with the other records, and the batch's write formats it, to the same text or
JSON a LogRecord would have given (a test holds the two to the same bytes). A LogRecord, its dict of extra
fields, the logger's and handler's walk and a formatter call per step were half of proxy-DHCP's time. Any
other set-up (a test's capture handler, a filter, another formatter) gets the ordinary logging path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _json_string  # what json.dumps writes for a str

from aiohttp.http_exceptions import HttpProcessingError

# Attributes a LogRecord always has; anything else was passed in `extra=` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# A machine step's line, queued without a LogRecord: (created, levelname, logger name, message, mac, peer,
# stage, ok), as `logger.log(level, message, extra={"mac": mac, "peer": peer, "stage": stage, "ok": ok})` says it.
StepLine = tuple[float, str, str, str, "str | None", "str | None", str, bool]


class TextFormatter(logging.Formatter):
    """logging.Formatter's text, with the date and time made once per second (strftime per line was a tenth
    of a log line's cost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
        return f"{self._text},{int(record.msecs):03d}"

    def format_step(self, line: StepLine) -> str:
        """What `format` gives for the record of a step's line (msecs computed as LogRecord does)."""
        created, levelname, name, message = line[0], line[1], line[2], line[3]
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
        return f"{self._text},{int((created - second) * 1000):03d} {levelname} {name}: {message}"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._text = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, timezone.utc).isoformat(timespec="seconds")[:-6]
        return f"{self._text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)

    def format_step(self, line: StepLine) -> str:
        """What `format` gives for the record of a step's line: the same keys in the same order, None left out."""
        created, levelname, name, message, mac, peer, stage, ok = line
        text = (f'{{"time": "{self._time(created)}", "level": "{levelname.lower()}", "logger": {_json_string(name)}, '
                f'"message": {_json_string(message)}')
        if mac is not None:
            text += f', "mac": {_json_string(mac)}'
        if peer is not None:
            text += f', "peer": {_json_string(peer)}'
        return f'{text}, "stage": {_json_string(stage)}, "ok": {"true" if ok else "false"}}}'


class BadRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line or header over its limit, bad bytes) as an
    ERROR with a traceback. That is the client's fault, not a bug: make it one WARNING line that names
    the problem (control characters escaped: a client's bytes never start a log line of their own), and
    keep tracebacks for real bugs. A client sending garbage in a loop would fill the log (the fuzz campaign
    made 67,000 such lines): at most one line per `every` seconds, saying how many were not logged."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self.suppressed = 0
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.every
        more = f" ({self.suppressed} more unparseable requests since the last such line)" if self.suppressed else ""
        self.suppressed = 0
        message = record.getMessage()
        record.msg = "%s: %s %s%s"
        record.args = (_printable(message), exc.code, _printable(str(exc.message)[:200]), more)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes the lines of LINGER seconds together (see the module docstring)."""

    BATCH = 256
    # Lines wait this long for company: a loop turn under moderate load serves one or two packets, and a write
    # per turn was then a system call per packet. Short enough that a person watching the log sees no delay.
    LINGER = 0.005

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._lines: list[str | StepLine] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._queue(line, record.levelno)

    def emit_step(self, line: StepLine, levelno: int) -> None:
        """Queue a step's line; it is formatted when the batch is written (see the module docstring)."""
        self._queue(line, levelno)

    def _queue(self, line: str | StepLine, levelno: int) -> None:
        self._lines.append(line)
        if levelno >= logging.ERROR or len(self._lines) >= self.BATCH:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.LINGER, self.flush)
            except RuntimeError:  # not on the loop's thread: write now
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        with self.lock:  # the loop's call and a worker thread's emit may meet here
            self._scheduled = False
            lines, self._lines = self._lines, []
            if not lines or self.stream is None:
                return
            format_step = getattr(self.formatter, "format_step", None)
            try:
                text = "\n".join([line if line.__class__ is str else format_step(line) for line in lines])
            except Exception:  # a bug of ours: say so once, keep the lines that format
                text = "\n".join(line for line in lines if line.__class__ is str)
                logging.getLogger(__name__).exception("logs: formatting a step's line failed")
            try:
                self.stream.write(text + "\n")
                if hasattr(self.stream, "flush"):
                    self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing better to do with a log line
                pass


def step_handler(logger: logging.Logger, levelno: int) -> BatchedStreamHandler | None:
    """bootd's handler when a record of `logger` at `levelno` would reach it and nothing else: no handler,
    filter or disabled flag on the way, a handler without filters whose formatter is one of ours. Then a step's line may
    skip the logging module (`BatchedStreamHandler.emit_step`); else None: log it the ordinary way. The
    caller has checked the level (`logger.isEnabledFor`); this runs per step, so it looks only at the few
    attributes logging itself would read."""
    if logger.disabled or logger.filters:
        return None
    current = logger
    while current.parent is not None:  # up to the root, as Logger.callHandlers walks
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    handlers = current.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (handler.__class__ is not BatchedStreamHandler or handler.filters or levelno < handler.level
            or handler.formatter.__class__ not in (TextFormatter, JsonFormatter)):
        return None
    return handler


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    # Neither format shows the caller's file and line, thread or process: don't look them up per record (the
    # logging HOWTO's "Optimization"; finding the caller walks the stack at every line)
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchedStreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is per request: it belongs at DEBUG with the other per-packet detail.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server.filters):
        server.addFilter(BadRequestFilter())
