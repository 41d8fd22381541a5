"""`verify`'s progress on stderr: counts, a rate and ETA that tell the truth, and what
the run waits for.

- The rate is over the last RATE_WINDOW seconds (`RateWindow`), not since the start: a
  burst of reused answers, then a stall on a slow server, would otherwise show a rate
  and an ETA the run is nowhere near. With nothing answered in the window the ETA
  says so instead of a number.
- The status line says what the run waits for (`waiting_for`, from the engine's
  `RunStatus`): greylisting retries and when the next goes, failing DNS, slow servers.
- Records and progress may share one terminal (stdout and stderr on the same tty): the
  display is then taken off the screen before each record and drawn again below it, so
  a record is never overwritten. rich's `Live` coordinates only what is printed
  through its own console, and records must stay on stdout while progress stays on
  stderr, so the display is drawn with rich's `LiveRender` (the piece `Live` is built
  on) and cleared around records here.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live_render import LiveRender
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mailprobe.engine.bulk.status import RunStatus
from mailprobe.report import VERDICT_STYLE

RATE_WINDOW = 30.0  # seconds of answers the rate and ETA are computed over
MIN_SPAN = 2.0  # seconds of samples before a rate is shown at all
REDRAW = 0.2  # seconds between redraws


class RateWindow:
    """Answers per second over the last `span` seconds, from (time, answered) samples."""

    def __init__(self, span: float = RATE_WINDOW) -> None:
        self.span = span
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        self._samples.append((now, done))
        # Keep one sample at or before the window's start, so the window is full.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.span:
            self._samples.popleft()

    def rate(self) -> float | None:
        """None until MIN_SPAN seconds have been seen."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_SPAN:
            return None
        return (d1 - d0) / (t1 - t0)


def eta_text(remaining: int | None, rate: float | None, span: float = RATE_WINDOW) -> str:
    if remaining is None:
        return ""
    if remaining <= 0:
        return "ETA 0s"
    if rate is None:
        return "ETA …"
    if rate <= 0:
        return f"ETA unknown: nothing answered in {span:.0f} s"
    return f"ETA {duration(remaining / rate)}"


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def waiting_for(status: RunStatus | None) -> str:
    """What the run waits for, in words: the most telling first."""
    if status is None:
        return ""
    parts: list[str] = []
    when = f" {duration(status.next_retry)}" if status.next_retry is not None else ""
    if status.throttle_down is not None:
        parts.append(f"throttle unreachable for {duration(status.throttle_down)}: paused")
    if status.resolving:
        parts.append(f"looking up MX for {_n(status.resolving, 'domain')}")
    if status.dns_failing:
        parts.append(f"DNS failing for {_n(status.dns_failing, 'domain')}: retrying")
    if status.greylisted:
        parts.append(
            f"{_n(status.greylisted, 'address', 'addresses')} wait{when} for greylisting retries"
        )
    if status.retrying:
        parts.append(
            f"{_n(status.retrying, 'address', 'addresses')} wait{when} for retries "
            "after temporary failures"
        )
    if status.catch_all_wait:
        parts.append(
            f"{_n(status.catch_all_wait, 'address', 'addresses')} wait for their "
            "domain's catch-all retry"
        )
    for slow in status.slow_servers[:2]:
        parts.append(f"slow server {slow.host}: {_n(slow.sessions, 'session')}")
    if status.sessions or status.queued:
        parts.append(
            f"{_n(status.sessions, 'SMTP session')} open, "
            f"{_n(status.queued, 'address', 'addresses')} queued"
        )
    if not parts and status.reading and not status.in_flight:
        parts.append("reading the input")
    return " · ".join(parts)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def shares_terminal(stdout_fd: int = 1, stderr_fd: int = 2) -> bool:
    """Whether stdout and stderr are the same terminal (records and progress meet)."""
    try:
        if not (os.isatty(stdout_fd) and os.isatty(stderr_fd)):
            return False
        out, err = os.fstat(stdout_fd), os.fstat(stderr_fd)
    except OSError:
        return False
    return (out.st_rdev, out.st_ino) == (err.st_rdev, err.st_ino)


class ProgressView:
    """The display on stderr; silent when disabled (--quiet, stderr not a terminal)."""

    def __init__(
        self,
        total: int | None,
        enabled: bool,
        *,
        shared: bool = False,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: Counter[str] = Counter()
        self.total = total
        self.enabled = enabled
        self.shared = shared  # records are written to the same terminal
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.status: RunStatus | None = None
        self.window = RateWindow()
        self._started = clock()
        self._render = LiveRender(Text(""))
        self._drawn = False
        self._last_draw = 0.0
        self._last_sample = -1.0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def advance(self, record: dict[str, Any]) -> None:
        self.counts[record["verdict"]] += 1
        self.tick()

    def writing(self, write: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """`write`, with the display taken off a shared terminal before each record."""
        if not (self.enabled and self.shared):
            return write

        def through(record: dict[str, Any]) -> None:
            self._clear()
            write(record)

        return through

    def update(self, status: RunStatus | None) -> None:
        self.status = status
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        """Sample the rate; redraw if it is time (`force`: the periodic tick)."""
        if not self.enabled:
            return
        now = self.clock()
        if now - self._last_sample >= 0.5:
            self.window.add(now, self.done)
            self._last_sample = now
        if force or now - self._last_draw >= REDRAW:
            self._draw(now)

    def renderable(self, now: float) -> Group:
        c = self.counts
        rate = self.window.rate()
        remaining = None if self.total is None else self.total - self.done
        line = Table.grid(padding=(0, 1))
        cells: list[Any] = [
            Text.from_markup(
                f"[{VERDICT_STYLE['deliverable']}]{c['deliverable']}✓[/] "
                f"[{VERDICT_STYLE['undeliverable']}]{c['undeliverable']}✗[/] "
                f"[{VERDICT_STYLE['risky']}]{c['risky']}?[/] "
                f"[{VERDICT_STYLE['unknown']}]{c['unknown']} unknown[/]"
            )
        ]
        if self.total is not None:
            cells.append(ProgressBar(total=max(self.total, 1), completed=self.done, width=30))
        cells.append(Text(f"{self.done}/{self.total}" if self.total else f"{self.done}"))
        cells.append(Text("…/s" if rate is None else f"{rate:.1f}/s"))
        cells.append(Text(duration(now - self._started)))
        eta = eta_text(remaining, rate)
        if eta:
            cells.append(Text(eta))
        for _ in cells:
            line.add_column(no_wrap=True)
        line.add_row(*cells)
        said = waiting_for(self.status)
        return Group(line, Text(said, style="dim", overflow="ellipsis", no_wrap=True))

    def _draw(self, now: float) -> None:
        if self._drawn:
            self.console.control(self._render.position_cursor())
        self._render.set_renderable(self.renderable(now))
        self.console.print(self._render)
        self._drawn = True
        self._last_draw = now

    def _clear(self) -> None:
        if self._drawn:
            self.console.control(self._render.position_cursor())
            self.console.file.flush()
            self._drawn = False

    def close(self) -> None:
        """Leave the last state on screen, and the cursor on a fresh line."""
        if not self.enabled:
            return
        self._draw(self.clock())
        self.console.print()
        self._drawn = False
        self.enabled = False

    def summary(self, summary: Any, shown: bool) -> None:
        if not shown:
            return
        table = Table(title="mailprobe verify: summary")
        table.add_column("verdict")
        table.add_column("addresses", justify="right")
        for verdict in ("deliverable", "undeliverable", "risky", "unknown"):
            table.add_row(f"[{VERDICT_STYLE[verdict]}]{verdict}[/]", str(self.counts[verdict]))
        table.add_row("total", str(summary.total))
        self.console.print(table)
        self.console.print(
            f"{summary.elapsed:.1f}s, "
            f"{summary.total / max(summary.elapsed, 1e-9):.1f} addresses/s, "
            f"{summary.sessions} SMTP sessions, "
            f"{summary.rcpts_per_session:.1f} RCPTs per session, "
            f"{summary.reused} reused from earlier runs"
            + (f", {summary.pending} retries left pending (--resume)" if summary.pending else "")
        )
