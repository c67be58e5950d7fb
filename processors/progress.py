"""Progress of a long foreground job: one updating line on a terminal, plain lines in a log."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m': short enough for one line, precise enough for an ETA."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_line(
    stage: str,
    done: int,
    total: int,
    elapsed: float,
    partitions_done: int | None = None,
    partitions: int | None = None,
) -> str:
    """One line: records done of total, partitions done (when known), rate, and ETA or time taken.

    >>> progress_line("read", 500, 2000, 10.0, 1, 4)
    'read: 500/2,000 records (25%), 1/4 partitions, 50/s, ETA 30s'
    """
    share = 100 * done // total if total else 100
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = f", {partitions_done}/{partitions} partitions" if partitions is not None else ""
    if done >= total:
        tail = f"done in {duration(elapsed)}"
    elif rate > 0:
        tail = f"ETA {duration((total - done) / rate)}"
    else:
        tail = "ETA unknown"
    return f"{stage}: {done:,}/{total:,} records ({share}%){parts}, {rate:,.0f}/s, {tail}"


class Progress:
    """Reports one stage of a job to a stream, throttled so that reporting costs nothing.

    On a terminal it rewrites one line in place (carriage return) a few times a second and ends
    it with a newline when finished. Elsewhere (a log, a pipe) it never writes a carriage
    return: a plain line every `every_s` seconds or each time another tenth of the total is done,
    and a last line when finished. The clock and the terminal flag are injected, so tests need
    neither a terminal nor time to pass.

    Args:
        stage: what is being done ("read", "process", "write").
        total: records the stage will handle.
        stream: where lines go (stderr in `cfn replay`).
        tty: whether `stream` is a terminal.
        clock: monotonic seconds.
        partitions: how many partitions the stage covers, or None to leave them out.
        every_s: seconds between plain lines when not on a terminal.
        redraw_s: seconds between redraws on a terminal.
    """

    def __init__(
        self,
        stage: str,
        total: int,
        stream: TextIO,
        *,
        tty: bool,
        clock: Callable[[], float],
        partitions: int | None = None,
        every_s: float = 10.0,
        redraw_s: float = 0.2,
    ) -> None:
        self.stage = stage
        self.total = total
        self.stream = stream
        self.tty = tty
        self.clock = clock
        self.partitions = partitions
        self.every_s = every_s
        self.redraw_s = redraw_s
        self._started = clock()
        self._last_at: float | None = None
        self._last_tenth = 0
        self._width = 0
        self._finished = False

    def update(self, done: int, partitions_done: int | None = None) -> None:
        """Report `done` records if a line is due (see the class docstring); the line for the
        whole total is `finish`'s."""
        if self._finished or done >= self.total:
            return
        now = self.clock()
        tenth = 10 * done // self.total
        if self.tty:
            due = self._last_at is None or now - self._last_at >= self.redraw_s
        else:
            since = now - (self._started if self._last_at is None else self._last_at)
            due = since >= self.every_s or tenth > self._last_tenth
        if due:
            self._emit(now, done, partitions_done, final=False)
            self._last_tenth = tenth

    def finish(self, done: int, partitions_done: int | None = None) -> None:
        """The stage's last line; later calls write nothing."""
        if not self._finished:
            self._emit(self.clock(), done, partitions_done, final=True)
            self._finished = True

    def _emit(self, now: float, done: int, partitions_done: int | None, *, final: bool) -> None:
        parts = partitions_done if self.partitions is not None else None
        line = progress_line(
            self.stage, done, self.total, now - self._started, parts, self.partitions
        )
        if self.tty:
            # Pad over the tail of a longer previous line; the newline only once finished.
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_at = now
