"""The training runtime: what a training loop needs besides its model and data.

    precision    devices, and one precision/kernel policy from the hardware
    checkpoints  atomic save, safe load, strict weight loading
    rng          seeding and the RNG state that exact resume restores
    distributed  torchrun set-up, collectives, the per-rank data order
    ema          exponential moving average of the weights
    stopping     signals, time budgets and NaN checks between steps
    pace         the early forecast of how long the rest of a run takes
    run_log      metrics as JSON lines (and wandb when asked)
    kernel_cache bounds on the CPU kernel caches, set by every script (utils.run_cli)
"""
