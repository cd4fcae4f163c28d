"""What a training run will do, printed before its first step, and the ETA of the whole run.

A Plan counts the work in the units a script thinks in (images, windows, frames, clips): the
items drawn per epoch, the epochs, the items validated after each epoch and those predicted per
split at the end. The Trainer times training and validation as they happen and turns the plan
into an ETA for everything left (training, validation, prediction): once after the first minute,
then on every epoch line. Prediction runs the validation's code path, so it is timed at the
validation's rate; before the first validation is timed, at 3x the training rate (a forward pass
costs about a third of a training step). Early stopping can end a run sooner than its ETA.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils.console import duration_text, log


@dataclass
class Plan:
    unit: str                     # what one item is: "images", "windows", "frames", "clips"
    per_epoch: int                # training items drawn per epoch (every rank together)
    batch_size: int               # per step (every rank together)
    epochs: int
    val: int                      # items validated after each epoch
    predict: dict = field(default_factory=dict)   # split -> items predicted at the end
    passes: int = 1               # forward passes per predicted item (2 with flip TTA)
    val_unit: str = ""            # the validation's and prediction's unit, when not `unit`
    note: str = ""                # anything else worth saying (the cap, the stride ...)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.per_epoch // max(self.batch_size, 1))

    @property
    def predicted(self) -> int:
        return sum(self.predict.values()) * self.passes

    def describe(self, start_epoch: int = 0) -> str:
        unit = self.val_unit or self.unit
        left = max(self.epochs - start_epoch, 0)
        resumed = f" (resumed: {left} left)" if start_epoch else ""
        splits = ", ".join(f"{s} {n:,}" for s, n in self.predict.items()) or "nothing"
        tta = f" x {self.passes} passes (flip TTA)" if self.passes > 1 else ""
        return (f"plan: {self.epochs} epoch{'s' if self.epochs != 1 else ''}{resumed} x {self.per_epoch:,} {self.unit} ({self.steps_per_epoch:,} steps "
                f"of {self.batch_size}); validation {self.val:,} {unit} after each epoch; then predict {unit}: "
                f"{splits}{tta}" + (f"; {self.note}" if self.note else "") + "; the whole run's ETA after its first minute")


class Clock:
    """Times the training and validation of a run against its Plan."""

    def __init__(self, plan: Plan, start_epoch: int = 0):
        self.plan, self.epoch = plan, start_epoch
        self.train_items, self.train_seconds = 0, 0.0
        self.val_items, self.val_seconds = 0, 0.0

    def trained(self, items: int, seconds: float) -> None:
        self.train_items, self.train_seconds = self.train_items + items, self.train_seconds + seconds

    def validated(self, seconds: float) -> None:
        self.val_items, self.val_seconds = self.val_items + self.plan.val, self.val_seconds + seconds

    def eta(self, epoch: int, done_in_epoch: int, validated: bool, running_items: int = 0,
            running_seconds: float = 0.0) -> tuple[float, str]:
        """Seconds left for the whole run when `done_in_epoch` items of `epoch` are trained (and its
        validation done when `validated`), and how that splits between the stages. The epoch
        still running counts in the training rate with `running_items` in `running_seconds`."""
        p = self.plan
        train_rate = (self.train_items + running_items) / max(self.train_seconds + running_seconds, 1e-9)
        measured = self.val_items > 0 and self.val_seconds > 0
        eval_rate = self.val_items / self.val_seconds if measured else 3 * train_rate
        if train_rate <= 0:
            return float("inf"), "not measured yet"
        train_left = (p.epochs - epoch) * p.per_epoch - done_in_epoch
        vals_left = p.epochs - epoch - (1 if validated else 0)
        parts = dict(training=max(train_left, 0) / train_rate, validation=vals_left * p.val / eval_rate,
                     prediction=p.predicted / eval_rate)
        how = ", ".join(f"{k} {duration_text(v)}" for k, v in parts.items())
        how += "" if measured else " (validation and prediction at 3x the training rate until timed)"
        return sum(parts.values()), how


def log_plan(plan: Plan, start_epoch: int = 0) -> None:
    log(plan.describe(start_epoch))
