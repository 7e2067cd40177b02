"""The learning-rate schedule of both trainers, a pure function of the step."""
import math


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak rate at optimizer step `step`: linear warm-up over `warmup`
    steps, then cosine decay to `min_ratio` at `total` steps (constant past it).
    `min_ratio` 1 keeps the rate constant after the warm-up."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
