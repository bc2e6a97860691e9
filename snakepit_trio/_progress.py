"""A small progress display for the command line: a live bar on a terminal, nothing elsewhere.

Only the CLI uses it; the library itself never writes to a terminal. Off a terminal (a pipe, a
file, a CI log) it stays silent: progress lines there are noise that buries the output.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

__all__ = ["Progress", "is_terminal", "use_colour"]


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (``TERM=dumb`` counts as not)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


class Progress:
    """Shows ``done`` of ``total`` for ``label`` on ``stream`` (stderr by default).

    On a terminal it redraws one line in place (at most every 50 ms, and always at the end)
    and erases it on close; anywhere else it writes nothing.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        width: int = 28,
        live: bool | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.live = is_terminal(self.stream) if live is None else live
        self.done = 0
        self._drawn_at = 0.0
        self._started = time.monotonic()
        self._closed = False

    def update(self, done: int, note: str = "") -> None:
        """Record that ``done`` items are finished; ``note`` is shown after the count."""
        self.done = min(done, self.total) if self.total else done
        if self.live:
            now = time.monotonic()
            if now - self._drawn_at >= 0.05 or self.done == self.total:
                self._drawn_at = now
                self._draw(note)

    def _draw(self, note: str) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = round(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self._started
        text = f"\r{self.label} [{bar}] {self.done}/{self.total} {fraction:4.0%} {elapsed:5.2f}s"
        if note:
            text += f"  {note}"
        self.stream.write(text + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line (on a terminal, the bar is erased so the next output starts clean)."""
        if self._closed:
            return
        self._closed = True
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
