"""Log set-up: human-readable text or one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from aiohttp.http_exceptions import HttpProcessingError

# Attributes a LogRecord always has; anything else was passed in `extra=` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
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


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is per request: it belongs at DEBUG with the other per-packet detail.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server.filters):
        server.addFilter(BadRequestFilter())
