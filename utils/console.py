"""Console output: rich progress bars on a terminal, plain lines otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
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


class RateColumn(ProgressColumn):
    """Items per second, e.g. images/s when each step is a batch of `scale` images."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed * task.fields['scale']:,.0f} {task.fields['unit']}/s" if speed else "")


def track(iterable, total: int | None = None, description: str = "working", every: float = 10.0,
          unit: str = "it", scale: int = 1):
    """Iterate with a progress bar on a terminal, or a plain line every `every` seconds.

    `scale` items per step (a batch size) turns the rate into items/s (`unit`/s)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if sys.stdout.isatty():
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   RateColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(description, total=total, unit=unit, scale=scale)
            for item in iterable:
                yield item
                progress.advance(task)
        return
    start = last = time.monotonic()
    done = 0

    def line(now, suffix=""):
        rate = done * scale / max(now - start, 1e-9)
        log(f"{description}: {done}/{total if total is not None else '?'}{suffix} "
            f"({now - start:.0f}s, {rate:,.0f} {unit}/s)")

    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            line(now)
    line(time.monotonic(), " done")


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
