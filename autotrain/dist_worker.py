"""One process of a distributed final run: `python -m autoft.autotrain.dist_worker OUT/distributed/launch.json`,
started by torch.distributed's elastic launcher (autotrain/launch.py), never by hand.

It joins the process group, loads the data as the pipeline did (the resolved options are in the
launch file), and runs the same `FinalRun` as every other process with a `DistributedTrial`:
rank 0 writes the checkpoints, the model, its progress events (events.jsonl) and its result
(result.json); the others only train. On an error it writes one line to the launcher's error file
(TORCHELASTIC_ERROR_FILE) and the traceback to its log, and exits 1: the launcher then stops the
other processes and the pipeline reports that line.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from autoft.autotrain import launch as L

# errors that only follow another process's death: the launcher reports that one instead
_PEER_SIGNS = ("closed by peer", "reset by peer", "broken pipe", "connection refused", "communicator was aborted",
               "socket timeout", "timed out", "connection closed")


def run(launch_file: Path) -> None:
    import torch.distributed as dist

    from autoft.autotrain.distributed import init_process_group, trial_class
    from autoft.autotrain.final import FinalRun, Start
    from autoft.autotrain.options import RunOptions
    from autoft.autotrain.pipeline import load_and_profile
    from autoft.autotrain.plan import RunPlan
    from autoft.autotrain.progress import Progress
    from autoft.autotrain.store import write_json

    launch = json.loads(launch_file.read_text(encoding="utf-8"))
    d, out = launch_file.parent, Path(launch["out"])
    plan = RunPlan.from_dict(launch["plan"])
    cuda = plan.trial.device.startswith("cuda")
    rank, _, local = init_process_group("cuda" if cuda else "cpu")
    # this process's share: the same micro-batch, 1/world of the one-process accumulation
    spec = replace(plan.dist.per_process(plan.trial), device=f"cuda:{local}" if cuda else "cpu")
    plan = replace(plan, trial=spec)
    bundle, _, _ = load_and_profile(RunOptions(**launch["options"]), Progress())
    progress = Progress([_EventWriter(d / L.EVENTS_FILE), _stop_check(d / L.STOP_FILE)] if rank == 0 else [])
    start = Start(**launch["start"]) if launch["start"] else None
    result = FinalRun(plan, bundle, out, progress, trial_class(plan.dist.strategy), main=rank == 0).run(
        launch["config"], start, resume=launch["resume"])
    if rank == 0:
        write_json(d / L.RESULT_FILE, asdict(result))
    dist.barrier()
    dist.destroy_process_group()


class _EventWriter:
    """Rank 0's progress events, one JSON object per line, for the launching process to replay."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the run)

    def __call__(self, ev: dict) -> None:
        self.f.write(json.dumps(ev, default=str) + "\n")
        self.f.flush()


def _stop_check(path: Path):
    def check(ev: dict) -> None:
        from autoft.autotrain.progress import RunInterrupted

        if ev["kind"] == "step" and path.exists():
            raise RunInterrupted()
    return check


def one_line(err: BaseException) -> str:
    """What the launcher reports for this process: the error in one line, marked as a follower
    when it is a communication error that another process's death caused."""
    from autoft.errors import AutoftError

    if isinstance(err, KeyboardInterrupt):
        return "stopped (interrupted)"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = text if isinstance(err, AutoftError) else f"{type(err).__name__}: {text}" if text else type(err).__name__
    if any(s in str(err).lower() for s in _PEER_SIGNS) or type(err).__name__.startswith("Dist"):
        line = L.PEER + line
    return line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        run(Path(argv[0]))
        return 0
    except BaseException as err:  # noqa: BLE001  (every failure is reported, Ctrl-C included)
        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"message": one_line(err), "timestamp": int(time.time())}, f)
        traceback.print_exc()  # into this rank's log file
        return 1


if __name__ == "__main__":
    sys.exit(main())
