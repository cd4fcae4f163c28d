"""Console output: rich progress bars on a terminal, plain lines otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.errors import LiveError
from rich.progress import BarColumn, MofNCompleteColumn
from rich.progress import Progress as RichProgress
from rich.progress import ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from utils.files import DataError

# Off a terminal (logs, CI) rich would assume 80 columns and squeeze the wide tables.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def log(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"warning: {message}", markup=False,
                                                 soft_wrap=True)


# Off a terminal, the longest gap between two progress lines (a log file, a cluster job).
PLAIN_EVERY = 10.0


def rate_text(per_second: float) -> str:
    """A rate for people: one decimal under 10/s (0.4, not 0), thousands separated above."""
    return f"{per_second:.1f}" if per_second < 10 else f"{per_second:,.0f}"


def duration_text(seconds: float) -> str:
    """h:mm:ss (m:ss under an hour); '?' for an unknown duration."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RateColumn(ProgressColumn):
    """Units per second, with one decimal under 10/s."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{rate_text(speed)} {task.fields['unit']}/s" if speed else "")


class Progress:
    """Progress of `total` units (frames, windows, clips): a rich bar on a terminal; otherwise a
    plain line at least every `every` seconds (PLAIN_EVERY) with done/total, rate and ETA, and
    one line when it ends. `show=False` (DDP ranks other than 0) keeps it silent.

    Usage: bar = Progress(n, "predict val", "frames"); bar.advance(len(batch)) ...; bar.close()."""

    def __init__(self, total: int | None, description: str, unit: str = "it", every: float | None = None,
                 show: bool = True):
        self.total, self.description, self.unit, self.show = total, description, unit, show
        self.every = PLAIN_EVERY if every is None else every
        self.done, self.closed, self.rich = 0, not show, None
        self.start = self.last = time.monotonic()
        if show and sys.stdout.isatty():
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn()]
            self.rich = RichProgress(*columns, console=console, transient=False)
            try:
                self.rich.start()
            except LiveError:   # a bar already live (nested loops): this one prints plain lines
                self.rich = None
            else:
                self.task = self.rich.add_task(description, total=total, unit=unit)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def advance(self, n: int = 1) -> None:
        if self.closed:
            return
        self.done += n
        if self.total is not None:
            self.done = min(self.done, self.total)
        if self.rich is not None:
            self.rich.update(self.task, completed=self.done)
            return
        now = time.monotonic()
        if now - self.last >= self.every and self.done != self.total:   # the end has its own line
            self.last = now
            log(self.line(now))

    def rate(self, now: float | None = None) -> float:
        return self.done / max((time.monotonic() if now is None else now) - self.start, 1e-9)

    def line(self, now: float, final: bool = False) -> str:
        elapsed, rate = now - self.start, self.rate(now)
        total = f"{self.total:,}" if self.total is not None else "?"
        if final:
            return (f"{self.description}: {self.done:,}/{total} {self.unit} done in {duration_text(elapsed)} "
                    f"({rate_text(rate)} {self.unit}/s)")
        eta = (self.total - self.done) / rate if self.total is not None and rate > 0 else None
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.description}: {self.done:,}/{total} {self.unit}{share}, {rate_text(rate)} {self.unit}/s, "
                f"{duration_text(elapsed)} elapsed, ETA {duration_text(eta)}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.rich is not None:
            self.rich.update(self.task, completed=self.done)
            self.rich.stop()
        else:
            log(self.line(time.monotonic(), final=True))


def track(iterable, total: int | None = None, description: str = "working", every: float | None = None,
          unit: str = "it", scale: int = 1, show: bool = True):
    """Iterate with a Progress (a rich bar on a terminal, plain lines otherwise).

    `scale` items per step (a batch size) counts items, not steps: total and done are in `unit`
    (the last, smaller batch is counted full but done never passes total)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(None if total is None else total * scale, description, unit, every, show) as bar:
        for item in iterable:
            yield item
            bar.advance(scale)


def table(title: str, columns: list[str], rows: list[list], justify_first: str = "left") -> Table:
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify=justify_first if i == 0 else "right")
    for row in rows:
        t.add_row(*[_fmt(v) for v in row])
    console.print(t)
    return t


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class WarningCounter:
    """Counted, logged fallbacks: each kind prints its first few lines, the total at the end."""

    def __init__(self, shown_per_kind: int = 5):
        self.shown_per_kind = shown_per_kind
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, message: str, count: int = 1) -> None:
        seen = self.counts.get(kind, 0)
        self.counts[kind] = seen + count
        if seen < self.shown_per_kind:
            warn(message)
        elif seen == self.shown_per_kind:
            warn(f"further '{kind}' warnings are counted, not shown")

    def summary(self) -> dict[str, int]:
        return dict(self.counts)


def cli(main) -> None:
    """Run a script's main() from the shell: bad input (DataError) and a stopped training
    (FloatingPointError) end in one line naming the file or the rows, never a traceback."""
    try:
        main()
    except (DataError, FloatingPointError) as err:
        raise SystemExit(f"error: {err}") from None
