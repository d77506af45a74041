"""The distributed final run: started with torch.distributed's elastic launcher (the API behind
`torchrun`), watched from this process.

    result = launch_final(plan, opts, out, progress, config, start, resume)   # -> FinalResult

The search stays in this process. For the final run the pipeline writes what the workers need
(the plan, the resolved options, the configuration, where it starts) to
`OUT/distributed/launch.json` and launches `python -m autoft.autotrain.dist_worker <that file>` as
`plan.dist.world` processes: one machine rendezvous on 127.0.0.1 (torchrun --standalone's c10d
rendezvous); several machines meet at --rdzv-endpoint (static rendezvous, this machine's
--node-rank). Every worker runs the same `FinalRun`; rank 0 writes the checkpoints, the model and
`result.json`, and its progress events to `events.jsonl`, which this process replays on its own
Progress bus (the CLI's stderr lines, the TUI).

A worker that fails or is killed ends the run: the launcher stops the others (SIGTERM, then
SIGKILL; no process is left behind) and this process raises one AutoftError naming the rank and
why. --resume continues from the last best checkpoint. Ctrl-C (or a listener's RunInterrupted)
stops the workers the same way and is re-raised here as the KeyboardInterrupt it was.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from autoft.autotrain.checkpoints import DIST_DIR
from autoft.autotrain.final import FinalResult, Start
from autoft.autotrain.options import RunOptions
from autoft.autotrain.plan import DistPlan, RunPlan
from autoft.autotrain.progress import Progress
from autoft.autotrain.store import write_json
from autoft.errors import AutoftError

LAUNCH_FILE, EVENTS_FILE, RESULT_FILE, STOP_FILE = "launch.json", "events.jsonl", "result.json", "stop"
# how a worker marks an error that only follows another process's death (a closed connection)
PEER = "[peer] "
RDZV_TIMEOUT_S = 900  # how long the processes of one machine wait for the others (the launcher's default)


def launch_final(plan: RunPlan, opts: RunOptions, out: Path, progress: Progress, config: dict,
                 start: Start | None, resume: bool) -> FinalResult:
    """Run the final fine-tune as `plan.dist.world` processes and return rank 0's result."""
    d = _prepare(out, plan)
    launch = {"out": str(out), "plan": plan.to_dict(), "options": opts.to_dict(), "config": config,
              "start": asdict(start) if start else None, "resume": resume}
    write_json(d / LAUNCH_FILE, launch)
    progress.emit("stage", name="final", detail=f"{plan.dist.world} training processes ({plan.dist.strategy}): "
                  f"{plan.dist.reason}")
    tail = _EventTail(d / EVENTS_FILE, d / STOP_FILE, progress)
    tail.start()
    try:
        _launch(plan.dist, d, cuda=plan.trial.device.startswith("cuda"))
    except _Failed as failed:
        tail.finish()
        if tail.interrupt is not None:  # a listener stopped the run: say so the way it asked
            raise tail.interrupt from None
        raise AutoftError(failed.line, f"see the logs in {d / 'logs'}; fix the cause and continue with "
                          f"autoft run --resume {shlex.quote(str(out))}") from None
    finally:
        tail.finish()
    return FinalResult(**json.loads((d / RESULT_FILE).read_text(encoding="utf-8")))


def join(opts: RunOptions, out: Path, say=lambda text: None, poll_s: float = 2.0) -> None:
    """A machine other than 0 (--node-rank R > 0): wait for machine 0's plan (it advises and
    searches first, which may take hours, longer than a rendezvous waits), then start this
    machine's processes; they read the plan from the shared output folder. Nothing is written to
    the output folder from here: machine 0 owns it (and refuses a non-empty one); this machine's
    logs go to a local temporary folder."""
    import tempfile
    import time

    import torch

    plan, started = out / DIST_DIR / LAUNCH_FILE, time.time()
    say(f"machine {opts.node_rank}: waiting for machine 0's final-run plan ({plan})")
    # a plan written before this machine started counts while machine 0 may still be waiting at
    # the rendezvous (LaunchConfig's default timeout, 900 s)
    while not (plan.is_file() and plan.stat().st_mtime >= started - RDZV_TIMEOUT_S):
        time.sleep(poll_s)

    q = opts.question or {}
    per_node = int(q.get("processes") or q.get("gpus") or 1)
    dist = DistPlan(nproc_per_node=per_node, nnodes=int(q.get("nnodes") or 1), node_rank=opts.node_rank,
                    rdzv_endpoint=opts.rdzv_endpoint)
    logs = Path(tempfile.mkdtemp(prefix=f"autoft-node{opts.node_rank}-"))
    try:
        _launch(dist, out / DIST_DIR, cuda=torch.cuda.is_available() and q.get("gpu") != "cpu", logs=logs)
    except _Failed as failed:
        raise AutoftError(failed.line, f"see the logs in {logs}; machine 0 reports the run's outcome") from None
    shutil.rmtree(logs, ignore_errors=True)


def _prepare(out: Path, plan: RunPlan) -> Path:
    """OUT/distributed/ without the files of an earlier launch."""
    d = out / DIST_DIR
    d.mkdir(parents=True, exist_ok=True)
    for name in (LAUNCH_FILE, EVENTS_FILE, RESULT_FILE, STOP_FILE):
        (d / name).unlink(missing_ok=True)
    if plan.dist.strategy == "fsdp" and plan.trial.technique == "qlora":
        raise AutoftError("QLoRA with FSDP is not supported (bitsandbytes' 4-bit weights shard only with FSDP1)",
                          "use --strategy ddp, or --technique lora")
    return d


class _Failed(Exception):
    def __init__(self, line: str):
        super().__init__(line)
        self.line = line


def _launch(dist: DistPlan, d: Path, cuda: bool, logs: str | Path = "logs") -> None:
    """torch.distributed's elastic launch of the workers; raises _Failed with one line when one
    of them fails, KeyboardInterrupt on Ctrl-C (the launcher has stopped them either way)."""
    import sys

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _check_devices(dist, cuda)
    single = dist.nnodes == 1
    config = LaunchConfig(
        min_nodes=dist.nnodes, max_nodes=dist.nnodes, nproc_per_node=dist.nproc_per_node,
        run_id="autoft-" + (uuid.uuid4().hex[:8] if single else "final"),
        # one machine: torchrun --standalone's rendezvous on a free local port; several: machine 0
        # hosts a static rendezvous at --rdzv-endpoint and --node-rank orders the machines
        rdzv_backend="c10d" if single else "static",
        rdzv_endpoint="127.0.0.1:0" if single else dist.rdzv_endpoint,
        rdzv_configs={"timeout": RDZV_TIMEOUT_S} if single else {"rank": dist.node_rank, "timeout": RDZV_TIMEOUT_S},
        local_addr="127.0.0.1" if single else None,
        max_restarts=0, monitor_interval=0.2, start_method="spawn", shutdown_timeout=10,
        # workers' own output goes to one log file per rank; what the user sees is this process's
        logs_specs=DefaultLogsSpecs(log_dir=str(d / logs), redirects=Std.ALL))
    args = ["-u", "-m", "autoft.autotrain.dist_worker", str(d / LAUNCH_FILE)]
    with _quiet_launcher(), _worker_threads(dist.nproc_per_node):
        try:
            elastic_launch(config, sys.executable)(*args)
        except ChildFailedError as err:
            raise _Failed(failure_line(err.failures, dist.world)) from None
        except SignalException:
            raise KeyboardInterrupt from None
        except Exception as err:  # noqa: BLE001  (the rendezvous: a timeout, an unreachable endpoint)
            first = (str(err).strip().splitlines() or [""])[0]
            raise _Failed(f"the launcher could not run the {dist.world} training processes: "
                          f"{type(err).__name__}: {first}") from None


def failure_line(failures: dict, world: int) -> str:
    """One line for the failed worker that caused the others' failures: a killed process or a
    worker's own error before the "connection closed" errors its death caused in the others."""
    def key(item):  # not a follower (a closed connection, the launcher's own SIGTERM), killed, earliest
        rank, f = item
        return (_message(f).startswith(PEER), f.exitcode == -signal.SIGTERM, f.exitcode >= 0, f.timestamp, rank)

    rank, f = min(failures.items(), key=key)
    if f.exitcode < 0:
        return f"training process {rank} of {world} was killed ({f.signal_name()})"
    return f"training process {rank} of {world} failed: {_message(f).removeprefix(PEER)}"


def _message(f) -> str:
    m = f.message.get("message", "") if isinstance(f.message, dict) else f.message
    m = str(m or "").strip()
    return m.splitlines()[0] if m else f"exit code {f.exitcode}"


def _check_devices(dist: DistPlan, cuda: bool) -> None:
    import torch

    if cuda:
        n = torch.cuda.device_count()
        if dist.nproc_per_node > n:
            raise AutoftError(f"{dist.nproc_per_node} processes per machine but {n} CUDA GPU(s) visible",
                              f"pass --gpus {n} (or --processes {n})")


@contextmanager
def _quiet_launcher():
    """The launcher logs its own steps and the workers' failures on stderr; autoft says what
    matters in one line instead (AUTOFT_DEBUG=1 keeps the launcher's logs)."""
    if os.environ.get("AUTOFT_DEBUG", "") not in ("", "0"):
        yield
        return
    lg = logging.getLogger("torch.distributed")  # torch gives it its own stderr handler
    handlers, propagate = lg.handlers[:], lg.propagate
    lg.handlers, lg.propagate = [logging.NullHandler()], False
    try:
        yield
    finally:
        lg.handlers, lg.propagate = handlers, propagate


@contextmanager
def _worker_threads(nproc: int):
    """N processes share the machine's cores: OMP_NUM_THREADS = cores / N unless set (torchrun sets 1)."""
    key = "OMP_NUM_THREADS"
    if key in os.environ:
        yield
        return
    os.environ[key] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        yield
    finally:
        os.environ.pop(key, None)


class _EventTail(threading.Thread):
    """Replays rank 0's progress events (one JSON object per line) on this process's bus. A
    listener that interrupts (RunInterrupted, Ctrl-C from a test) is remembered and the workers
    are asked to stop through the stop file, which rank 0 checks at every logged step."""

    def __init__(self, path: Path, stop_file: Path, progress: Progress):
        super().__init__(daemon=True, name="autoft-dist-events")
        self.path, self.stop_file, self.progress = path, stop_file, progress
        self.interrupt: BaseException | None = None
        self._done = threading.Event()
        self._offset = 0

    def run(self) -> None:
        while not self._done.wait(0.2):
            self._drain()
        self._drain()

    def finish(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def _drain(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind("\n") + 1  # whole lines only
        self._offset += len(chunk[:end].encode("utf-8"))
        for line in chunk[:end].splitlines():
            ev = json.loads(line)
            if self.interrupt is not None:
                continue
            kind = ev.pop("kind")
            for k in ("elapsed_s", "eta_s"):  # this bus adds its own
                ev.pop(k, None)
            try:
                self.progress.emit(kind, **ev)
            except KeyboardInterrupt as err:  # RunInterrupted too
                self.interrupt = err
                self.stop_file.write_text("stop\n")
