"""Training metrics as JSON lines next to the checkpoints, and in wandb when asked."""
from __future__ import annotations

import json
import os
from pathlib import Path


class RunLogger:
    """Appends metrics as JSON lines next to the checkpoints and, when asked, to wandb.

    wandb runs offline unless the user has logged in (WANDB_API_KEY or WANDB_MODE set).
    """

    def __init__(self, out_dir, use_wandb: bool, config: dict, name: str, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.wandb = None
        if enabled and use_wandb:
            import wandb
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY")
                                                    else "offline")
            self.wandb = wandb.init(project="maskgit-inpainting", name=name, config=config,
                                    dir=str(out_dir), mode=mode)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
