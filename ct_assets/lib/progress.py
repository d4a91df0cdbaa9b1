"""Progress of long work on stderr: a bar on a terminal, one plain line per step elsewhere.

On a terminal (stderr and stdout both TTYs, `NO_COLOR` unset or empty, `TERM` not `dumb`) one
line is redrawn in place (a carriage return, the line, erase to its end): the bar, done/total,
the step under way, the time elapsed and the time left. It is cut to the terminal's width and
ended with a newline when the work ends. Anywhere else (a pipe, a file, a CI log) each step that
ends writes one line, `[3/12] data_job 2026-01-01 … 2026-01-14  ok  1.2 s`, with no carriage
return and no escape code.

When the total is not known, the count stands alone (`[3] …`, and no bar): a bar is drawn only
against a total.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

ERASE_TO_END = "\x1b[K"
BAR_WIDTH = 24  # cells of the bar at most; fewer on a narrow terminal, none on a tiny one


def is_terminal(stream: TextIO, stdout: TextIO | None = None) -> bool:
    """Whether progress on `stream` may be a bar redrawn in place.

    Both `stream` and stdout (default `sys.stdout`) must be terminals: output redirected to a
    file or a pipe asks for plain lines, as do `NO_COLOR` (set and not empty) and `TERM=dumb`.
    """
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _isatty(stream) and _isatty(sys.stdout if stdout is None else stdout)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # not a file, or closed
        return False


def wanted(json_output: bool, stream: TextIO | None = None) -> bool:
    """Whether a command shows its progress (on `stream`, default stderr).

    Always, except with `--json` when stderr is not a terminal: a program that reads the JSON
    on stdout and a failure's one-line message on stderr gets nothing else.
    """
    return not json_output or _isatty(sys.stderr if stream is None else stream)


def duration(seconds: float) -> str:
    """`4.2 s` under a minute, then `m:ss`, then `h:mm:ss`."""
    if seconds < 59.95:
        return f"{max(seconds, 0.0):.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fit(text: str, room: int) -> str:
    """`text` cut to `room` characters, an ellipsis marking the cut."""
    if len(text) <= room:
        return text
    return text[:room - 1] + "…" if room > 1 else ""


class Progress:
    """Steps of one piece of work, counted against a total (which may grow, or be unknown).

    `start(name)` names the step under way; `done(note)` ends it (a plain line, or the bar
    redrawn); `say(text)` writes a line of its own above the bar. Used as a context manager,
    the bar's line is ended on the way out, an error included. With `keep`, each ended step
    also stays on a terminal as its plain line above the bar (for a few long steps whose
    outcome matters). With `enabled=False`, nothing is written.
    """

    def __init__(self, total: int | None = None, *, stream: TextIO | None = None,
                 stdout: TextIO | None = None, enabled: bool = True, keep: bool = False,
                 tick: float | None = 0.5, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        """Progress against `total` steps, written to `stream` (default: stderr).

        Args:
            total: Steps expected; None when not known (then no bar). Can be set later.
            stream: Where progress goes.
            stdout: The output the command's result goes to, which must be a terminal too
                for a bar (default: `sys.stdout`).
            enabled: False writes nothing.
            keep: On a terminal, also keep each ended step's line above the bar.
            tick: Seconds between redraws of the bar while a step runs (None: only when a
                step starts or ends).
            clock: Monotonic seconds (a fake one in tests).
        """
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.keep, self.clock = enabled, keep, clock
        self.bar = enabled and is_terminal(self.stream, stdout)
        self.count, self.name, self.spent = 0, "", 0.0
        self.began = self.step_began = clock()
        self._drawn, self._closed, self._running = False, False, False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._tick = tick
        self._cells = "█░" if _encodes(self.stream, "█░") else "#-"

    def start(self, name: str) -> None:
        """The step `name` is under way (named on the bar; nothing in plain lines)."""
        with self._lock:
            self.name, self.step_began, self._running = name, self.clock(), True
            if self.bar:
                self._draw()
                self._start_ticker()

    def done(self, note: str = "", *, name: str | None = None) -> float:
        """The step under way (or `name`) ended; its seconds (since it started or the last end).

        Plain: writes `[count/total] name  note  seconds`. Terminal: redraws the bar (and,
        with `keep`, writes that line above it).
        """
        with self._lock:
            now = self.clock()
            seconds = now - self.step_began
            self.count += 1
            self.spent += seconds
            self.step_began, self._running = now, False
            if name is not None:
                self.name = name
            if self.enabled:
                line = self.line(note, seconds)
                if not self.bar:
                    self._write(line + "\n")
                elif self.keep:
                    self._above(line)
                else:
                    self._draw()
            return seconds

    def say(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        with self._lock:
            if not self.enabled:
                return
            if self.bar:
                self._above(text)
            else:
                self._write(text + "\n")

    def close(self, finished: bool = True) -> None:
        """The work ended: a terminal's bar is drawn one last time and its line ended.

        `finished` names the last bar `done`; otherwise (an error, Ctrl-C) it keeps the name
        of the step under way, where the work stopped.
        """
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.bar and self._drawn:
                if finished:
                    self.name = "done"
                self._draw()
                self._write("\n")

    def __enter__(self) -> Progress:
        """The progress itself; closed on the way out."""
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        """Close (end the bar's line), whatever happened."""
        self.close(finished=kind is None)

    def line(self, note: str, seconds: float) -> str:
        """The plain line of the step just ended: `[3/12] name  note  1.2 s`."""
        count = f"{self.count}/{self.total}" if self.total is not None else f"{self.count}"
        return f"[{count}] {self.name}" + (f"  {note}" if note else "") + \
            f"  {duration(seconds)}"

    def eta(self) -> float | None:
        """Seconds left: the mean step so far times the steps left (None: nothing to go on).

        While a step is under way, the time it has run counts down its share (up to the
        mean: a step longer than the mean is taken to end soon, not in negative time).
        """
        if self.total is None or self.count == 0 or self.count >= self.total:
            return None
        mean = self.spent / self.count
        running = min(self.clock() - self.step_began, mean) if self._running else 0.0
        return mean * (self.total - self.count) - running

    def render(self, width: int) -> str:
        """The bar's line, at most `width - 1` characters (a full line would wrap).

        `[████░░░░] 3/12  name  0:12  ETA 0:40`; on a narrow terminal the name is cut first,
        then the bar shrinks and goes; the count and times are cut last.
        """
        room = max(width - 1, 0)
        tail = f"  {duration(self.clock() - self.began)}"
        eta = self.eta()
        if eta is not None:
            tail += f"  ETA {duration(eta)}"
        if self.total is None:
            head, cells = f"[{self.count}]  " if self.count else "", 0
        else:
            head = f"{self.count}/{self.total}  "
            cells = min(BAR_WIDTH, (room - len(head) - len(tail) - 12) // 2)
        if cells >= 4 and self.total:
            full = min(cells, cells * self.count // self.total)
            head = f"[{self._cells[0] * full}{self._cells[1] * (cells - full)}] " + head
        name = _fit(self.name, room - len(head) - len(tail))
        return _fit((head + name).rstrip() + tail, room)

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        self._write(f"\r{self.render(width)}{ERASE_TO_END}")
        self._drawn = True

    def _above(self, text: str) -> None:
        self._write(f"\r{ERASE_TO_END}{text}\n")
        self._draw()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _start_ticker(self) -> None:
        if self._tick is None or self._ticker is not None:
            return
        self._ticker = threading.Thread(target=self._redraw, name="progress", daemon=True)
        self._ticker.start()

    def _redraw(self) -> None:
        """Redraw every `tick` seconds, so the times move while a long step runs."""
        assert self._tick is not None
        while not self._stop.wait(self._tick):
            with self._lock:
                if not self._closed:
                    self._draw()


def _encodes(stream: TextIO, text: str) -> bool:
    """Whether `stream` can write `text` (a terminal in an ASCII locale cannot draw █)."""
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
