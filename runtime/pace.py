"""How long the rest of a run will take, said early.

Recipes are counted in steps, so their wall time is the machine's: the cat-face stage 2 took
60 min on a 2-core AMX CPU in bf16, and its steps run about twice as long in fp32 on AVX2
(1.43 against 2.81 s, the same host under AVX2 emulation). A user should
learn that after a minute, not at the end, and learn too when a --time-budget will stop the
run before the recipe's last step.
"""
from __future__ import annotations

import math
import time

from tqdm import tqdm

WARMUP = 2  # steps not timed: the first ones pay for allocation and kernel selection


def duration(seconds: float) -> str:
    """'40 s', '49 min', '2.6 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Pace:
    """Times `steps` training steps after a short warm-up, then prints the forecast of the
    steps left (validations and checkpoints not counted) and, where the `deadline` of a time
    budget (a `time.time()` value; inf for none) falls before the end, the step it stops near.

    `slower_from` is a step from which steps cost more (the GAN's start in stage 1): the
    first forecast says so, and the pace is measured again there for a second one. The
    first end-of-epoch validation (with its checkpoints), timed between `validation_starts`
    and `validation_ends`, completes the forecast: one validation per `steps_per_epoch`."""

    def __init__(self, start_step: int, total_steps: int, steps_per_epoch: int,
                 deadline: float = math.inf, steps: int = 20, enabled: bool = True,
                 slower_from: int | None = None, why_slower: str = ""):
        self.total, self.deadline, self.steps, self.enabled = total_steps, deadline, steps, enabled
        self.steps_per_epoch = steps_per_epoch
        self.slower_from = slower_from if slower_from and start_step < slower_from < total_steps else None
        self.why_slower = why_slower
        self.per_step = self.t_validation = None
        self.validation_said = not enabled
        self._arm(start_step)

    def _arm(self, step: int) -> None:
        self.begin, self.t0 = step + WARMUP, None  # the clock starts after step `begin`
        self.armed = self.enabled and self.total - self.begin > self.steps

    def after_step(self, step: int) -> str | None:
        """Call after every optimizer step; returns (and prints) a forecast when one is due."""
        if step == self.slower_from:
            self._arm(step)
        if not self.armed:
            return None
        if step == self.begin:
            self.t0 = time.time()
        if self.t0 is None or step != self.begin + self.steps:
            return None
        self.armed = False
        now = time.time()
        per_step = self.per_step = (now - self.t0) / self.steps
        left = self.total - step
        line = (f"pace: {per_step:.2f} s per step (steps {self.begin + 1}-{step}); at this pace "
                f"the {left} steps left take about {duration(left * per_step)} more on this "
                f"machine, validations not counted")
        if self.slower_from and step < self.slower_from:
            line += (f"; from step {self.slower_from} {self.why_slower} and steps cost more: "
                     f"a second forecast follows there")
        if now + left * per_step > self.deadline:
            near = step + int((self.deadline - now) / per_step)
            line += (f"\nnote: at this pace the time budget stops the run near step {near} of "
                     f"{self.total}, so its result will not be the recipe's; --resume continues it")
        tqdm.write(line)
        return line

    def validation_starts(self) -> None:
        self.t_validation = time.time()

    def validation_ends(self, step: int) -> str | None:
        """After the first validation that follows a forecast: the pace over every step
        timed so far, and the rest of the run with the validations still to come, printed
        and returned. The step clock does not run during validations."""
        if self.t_validation is None:
            return None
        seconds = time.time() - self.t_validation
        if self.t0 is not None:
            self.t0 += seconds
        if self.per_step is None or self.validation_said:
            return None
        self.validation_said = True
        left = self.total - step
        if left <= 0:
            return None
        if self.t0 is not None and step > self.begin:  # a longer baseline than the first one
            self.per_step = (self.t_validation - self.t0 + seconds) / (step - self.begin)
        count = math.ceil(left / self.steps_per_epoch)
        line = (f"pace: {self.per_step:.2f} s per step (steps {self.begin + 1}-{step}) and "
                f"{duration(seconds)} per validation; with {count} more, the {left} steps left "
                f"take about {duration(left * self.per_step + count * seconds)} more")
        tqdm.write(line)
        return line
