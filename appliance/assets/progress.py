"""How a download's progress is shown: a bar redrawn in place on a terminal (bytes, rate, time left), plain
lines when the output is piped or logged (one at each tenth, so a log stays short). The rendering is a pure
function of the transfer and the time; the reporter only decides when to write."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from appliance.assets.download import Transfer

BAR = 24
REDRAW_SECONDS = 0.2


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def progress_text(transfer: Transfer, elapsed: float, *, bar: bool) -> str:
    """`flatcar_production_pxe.vmlinuz [#####-----] 12.0 MiB / 48.0 MiB, 3.1 MiB/s, 12 s left`."""
    new_bytes = transfer.done - transfer.resumed_from
    rate = new_bytes / elapsed if elapsed > 0 else 0.0
    parts = [transfer.name]
    if transfer.total:
        fraction = min(transfer.done / transfer.total, 1.0)
        if bar:
            filled = int(fraction * BAR)
            parts.append("[" + "#" * filled + "-" * (BAR - filled) + "]")
        else:
            parts.append(f"{int(fraction * 100)}%")
        amount = f"{human(transfer.done)} / {human(transfer.total)}"
    else:
        amount = human(transfer.done)
    if transfer.resumed_from:
        amount += f" (resumed at {human(transfer.resumed_from)})"
    parts.append(amount + ",")
    parts.append(f"{human(rate)}/s")
    if transfer.total and rate > 0 and transfer.done < transfer.total:
        parts[-1] += ","
        parts.append(f"{(transfer.total - transfer.done) / rate:.0f} s left")
    return " ".join(parts)


class ProgressReporter:
    def __init__(self, out: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.tty = tty
        self.clock = clock
        self._name = ""
        self._started = 0.0
        self._last_draw = 0.0
        self._last_tenth = -1

    def __call__(self, transfer: Transfer) -> None:
        now = self.clock()
        if transfer.name != self._name or transfer.done == transfer.resumed_from:
            self._name, self._started, self._last_draw, self._last_tenth = transfer.name, now, 0.0, -1
        finished = transfer.total is not None and transfer.done >= transfer.total
        elapsed = now - self._started
        if self.tty:
            if finished or now - self._last_draw >= REDRAW_SECONDS:
                self._last_draw = now
                self.out.write("\r\x1b[K" + progress_text(transfer, elapsed, bar=True) + ("\n" if finished else ""))
                self.out.flush()
            return
        tenth = int(transfer.done * 10 / transfer.total) if transfer.total else 0
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.out.write(progress_text(transfer, elapsed, bar=False) + "\n")
            self.out.flush()
