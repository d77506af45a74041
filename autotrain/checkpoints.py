"""Where a run keeps its checkpoints, and what a trial's failure looks like: torch-free, so the
search and the pipeline use the trainer's files without knowing how the trainer writes them.

    out/checkpoints/trial-003/rung-1/   a search trial after a rung (the winner's last one is kept
                                        for the final run to continue)
    out/final-best/                     the final run's last best checkpoint + final-state.json
    out/distributed/                    a distributed final run's launch.json, events, logs
    out/ray/                            --search-backend ray: Ray Tune's experiment folder (its
                                        storage: trial results, experiment state for --resume,
                                        checkpoints until the search ends)
A checkpoint is complete once its `trial.json` exists: the trainer writes it last.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

SEARCH_DIR = "checkpoints"
FINAL_DIR = "final-best"
RAY_DIR = "ray"
FINAL_STATE = "final-state.json"
TRIAL_META = "trial.json"  # written last by Trial.save_checkpoint
DIST_DIR = "distributed"  # a distributed final run's launch file, rank 0's events and result, logs


class TrialDiverged(RuntimeError):
    """The training loss turned NaN or infinite: this configuration failed (not a bug, not fatal).

    `step` is the optimizer step at which it was seen, `loss` the value read back."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"training loss became {loss} at optimizer step {step}")


def is_complete(path: str | Path) -> bool:
    return (Path(path) / TRIAL_META).is_file()


def steps_done(path: str | Path) -> int:
    """Optimizer steps a complete checkpoint has trained."""
    return int(json.loads((Path(path) / TRIAL_META).read_text())["steps_done"])


def search_dir(out: Path, trial: int, rung: int) -> Path:
    return out / SEARCH_DIR / f"trial-{trial:03d}" / f"rung-{rung}"


def drop_rung(out: Path, rung: int) -> None:
    """Remove every trial's checkpoint of a finished rung (its survivors saved newer ones)."""
    for d in (out / SEARCH_DIR).glob(f"trial-*/rung-{rung}"):
        shutil.rmtree(d, ignore_errors=True)


def drop_search(out: Path, keep: str | None = None) -> None:
    """Remove every search checkpoint but `keep` (relative to out), and the folders left empty."""
    root = out / SEARCH_DIR
    if not root.is_dir():
        return
    keep_path = (out / keep).resolve() if keep else None
    for d in root.glob("trial-*/rung-*"):
        if d.resolve() != keep_path:
            shutil.rmtree(d, ignore_errors=True)
    for d in root.glob("trial-*"):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if not any(root.iterdir()):
        root.rmdir()
