"""Stopping between training steps: signals, the time budget and non-finite losses."""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import torch

from utils import UserError
from .distributed import all_reduce_mean, is_distributed


def check_finite(value: torch.Tensor, step: int, ckpt_dir, what: str = "loss") -> None:
    """Stop on a NaN/inf `what` before it reaches a checkpoint. Under DDP the check sees
    the mean over ranks, so every rank stops together (a NaN anywhere makes it NaN)."""
    value = all_reduce_mean(value.detach().float())
    if not torch.isfinite(value).all():
        raise UserError(f"{what} became {value.item()} at step {step}; the last good checkpoint "
                        f"in {ckpt_dir} is kept; lower the learning rate or use --precision fp32")


class GracefulStop:
    """Turns Ctrl-C (SIGINT), SIGTERM (e.g. cluster pre-emption) and the end of a time
    budget into a request that the training loop honours between steps, so the
    checkpoint it then writes holds a finished step, never a half-applied one. The
    budget is a safety stop, never part of a recipe: recipes are counted in steps. Another
    signal over a second later aborts at once; sooner, it is the same Ctrl-C again
    (torchrun forwards the terminal's SIGINT to workers that already got it).
    """

    def __init__(self, device: torch.device, time_budget_minutes: float = 0.0):
        self.device, self.signal, self._since = device, None, 0.0
        self.deadline = time.time() + 60 * time_budget_minutes if time_budget_minutes else math.inf
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal, self._since = signum, time.monotonic()
            print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort "
                  f"without saving)", file=sys.stderr)
        elif time.monotonic() - self._since > 1.0:
            raise KeyboardInterrupt

    def requested(self) -> bool:
        """True once a signal arrived or the budget ran out on any rank: under DDP all ranks
        must leave the loop at the same step, or the others would wait forever (collective)."""
        flag = torch.tensor(float(self.signal is not None or time.time() > self.deadline),
                            device=self.device)
        if is_distributed():
            import torch.distributed as dist
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_step(self, step: int, ckpt_interval: int, save_last) -> bool:
        """Between two steps: whether to leave the loop now. `save_last()` (which writes
        last.pt) runs first when so, and every `ckpt_interval` steps (0 = never)."""
        stopping = self.requested()
        if stopping or (ckpt_interval and step % ckpt_interval == 0):
            save_last()
        return stopping

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def finish(self, stopped: bool, checkpoint: Path, step: int, total_steps: int,
               verbose: bool) -> None:
        """After the loop: say why it stopped early. A signal ends the process with the
        shell's code for it (130 for Ctrl-C, 143 for SIGTERM); a spent budget returns.
        Either way the run is a prefix of the recipe's `total_steps`, and says so."""
        if not stopped:
            return
        if verbose:
            why = "time budget reached" if self.signal is None else "interrupted"
            print(f"{why} after {step} of the recipe's {total_steps} steps: saved {checkpoint}; "
                  f"the result is not the recipe's until the rest runs (continue with --resume)")
        if self.signal is not None:
            sys.exit(128 + self.signal)
