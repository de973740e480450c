"""Per-epoch curves with dvclive: one `Live` directory per trained model (member) and seed.

Every metric the loop reports is logged at step = epoch: `train/loss` (the weighted total),
`train/<term>` (each unweighted term of the recipe), `lr`, `val/acc`, `val/teacher_agreement`.
A resumed run starts the directory afresh and replays the epochs restored from the checkpoint, so
each epoch appears exactly once however often the run was killed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dvclive import Live


class EpochLogger:
    """Callable `(epoch, {member: metrics})` that writes each member's metrics to its Live dir.

    live_dirs: member name -> directory (removed and recreated on construction).
    """

    def __init__(self, live_dirs: dict[str, Path]) -> None:
        self.lives = {}
        for member, directory in live_dirs.items():
            shutil.rmtree(directory, ignore_errors=True)
            self.lives[member] = Live(str(directory), dvcyaml=False, save_dvc_exp=False, report=None)

    def __call__(self, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        for member, live in self.lives.items():
            live.step = epoch
            for name, value in metrics.get(member, {}).items():
                live.log_metric(name, value)
            live.next_step()

    def close(self) -> None:
        """Flush and close every Live, and the DVC repo handle each opened to find its project
        (left open, dulwich prints "Exception ignored" tracebacks at interpreter exit)."""
        for live in self.lives.values():
            live.end()
            repo = getattr(live, "_dvc_repo", None)
            if repo is not None:
                repo.close()
