"""Deterministic stand-ins for the core, for the TUI's tests and snapshots.

They keep the core's contracts (docs/architecture.md): one-line AutoftError for bad input, a
profile with to_dict()/warnings/to_question_fields(), a Recommendation-shaped dict that refuses an
override that does not fit unless forced, and a run that emits progress events, persists finished
trials, stops on cancel and skips persisted trials on --resume."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoft.advisor.spec import GPU, Hardware
from autoft.advisor.units import GIB
from autoft.errors import AutoftError, DataError
from autoft.autotrain.progress import RunInterrupted
from autoft.tui.services import Services


@dataclass
class FakeProfile:
    rows: dict = field(default_factory=lambda: {"train": 1200, "validation": 150, "test": 150})
    counts: dict = field(default_factory=lambda: {"positive": 600, "negative": 450, "neutral": 150})
    warnings: list = field(default_factory=lambda: ["classes are imbalanced: positive has 4.0x the rows of neutral"])

    def to_dict(self) -> dict:
        # the keys of autoft.autotrain.data.DataProfile.to_dict()
        return {"task": "classification", "rows": self.rows, "label_names": list(self.counts),
                "num_labels": len(self.counts), "label_counts": {"train": self.counts},
                "imbalance_ratio": 4.0,
                "token_lengths": {"p50": 24, "p95": 61, "p99": 80, "max": 112},
                "lengths_estimated": True, "length_method": "characters / 4", "language": "de",
                "warnings": self.warnings, "notes": ["read train from train.csv"]}

    def to_question_fields(self) -> dict:
        return {"task": "classification", "data_size": self.rows["train"], "num_labels": len(self.counts),
                "seq_len_p95": 61, "seq_len_p99": 80, "language": "de"}


def fake_load_data(path: str):
    if not Path(path).exists():
        raise DataError(f"no such file or folder: {path}", "check the path")
    return {"path": path}


def fake_build_profile(bundle):
    return FakeProfile()


def fake_probe() -> Hardware:
    return Hardware(kind="cpu", cpu_cores=2, ram_bytes=8 * GIB, reason="no NVIDIA GPU found")


TABLE = {"T4": GPU("T4", 16 * GIB, bf16=False), "A100-80GB": GPU("A100-80GB", 80 * GIB)}


def fake_gpu_table() -> dict:
    return dict(TABLE)


def fake_plan_hardware(gpu="auto", gpu_memory=None, gpus=1) -> Hardware:
    from autoft.advisor.units import parse_size

    if gpu in (None, "auto", "cpu"):
        hw = fake_probe()
        if gpu_memory:
            return Hardware(kind="gpu", gpus=[GPU("GPU", parse_size(gpu_memory))] * (gpus or 1), source="manual")
        return hw
    if gpu not in TABLE:
        raise AutoftError(f"unknown GPU {gpu!r}", "pick one from the table")
    g = TABLE[gpu]
    if gpu_memory:
        g = GPU(g.name, parse_size(gpu_memory), bf16=g.bf16)
    return Hardware(kind="gpu", gpus=[g] * (gpus or 1), source="table")


def _peak(batch: int, seq: int) -> dict:
    acts = 0.25 * batch * seq / 128
    return {"weights": 0.5, "gradients": 0.5, "optimizer": 1.0, "activations": acts}


def fake_advise(question, hardware):
    cap = hardware.memory_bytes / GIB if hardware is not None else 8.0
    seq = question.seq_len or 128
    batch = question.batch_size
    if batch is None:  # the largest power of two that fits under a 90% margin
        batch = 1
        while sum(_peak(batch * 2, seq).values()) <= 0.9 * cap and batch < 64:
            batch *= 2
    terms = _peak(batch, seq)
    peak = sum(terms.values())
    fits = peak <= cap
    if not fits and not question.force:
        near = batch
        while near > 1 and sum(_peak(near, seq).values()) > cap:
            near //= 2
        raise AutoftError(f"batch size {batch} will not fit: predicted peak {peak:.2f} GiB of {cap:.1f} GiB",
                          f"use --batch-size {near} (the nearest that fits) or --force")
    return {
        "model": {"id": question.model or "deepset/gbert-base", "params": 110_000_000,
                  "languages": ["de"], "domains": ["general"], "licence": "mit"},
        "technique": question.technique or "full", "batch_size": batch,
        "gradient_accumulation_steps": question.gradient_accumulation_steps or max(1, 32 // batch),
        "seq_len": seq, "precision": question.precision or "fp32",
        "gradient_checkpointing": bool(question.gradient_checkpointing), "lora": {},
        "optimizer": "adamw",
        "estimate": {"peak_gib": round(peak, 3), "breakdown_gib": terms},
        "fits": fits, "gpu": {"name": "CPU", "memory_gib": cap},
        "reasons": [{"rule": "model.language", "because": f"the data is in {question.language}: a model that knows it"},
                    {"rule": "batch.largest-fit", "because": f"batch {batch} is the largest that fits under 90% of {cap:.0f} GiB"}],
        "alternatives": [{"model": {"id": "xlm-roberta-base"}, "technique": "lora", "batch_size": 16,
                          "estimate": {"peak_gib": 3.1}, "fits": True}],
        "search_space": {"learning_rate": [1e-5, 1e-4]},
        "speed": {"examples_per_s": round(64 / (1 + batch / 8), 2), "step_s": 2.5, "epoch_s": 180.0,
                  "tokens_assumed": "the data's mean length, 42 tokens", "method": "model", "device": "CPU (8 cores)",
                  "assumption": "288 GFLOP/s on the CPU (8 cores) (assumed 36 GFLOP/s per core in fp32)"},
        "question": {"data_size": question.data_size},
    }


class FakeRun:
    """Two rungs of three and one trial; trials finished before a cancel are persisted and skipped
    on --resume. `gate` (an Event) holds the run at its first step until set, for cancel tests."""

    def __init__(self, step_delay: float = 0.0, hold_at: tuple[int, int] | None = None):
        self.calls: list[list[str]] = []
        self.trained: list[tuple[int, int]] = []
        self.step_delay = step_delay
        self.hold_at = hold_at  # (trial, rung): wait there, at step 2, until cancelled
        self.holding = threading.Event()

    def __call__(self, argv, *, on_event, cancel):
        self.calls.append(list(argv))
        out = Path(argv[argv.index("--resume" if "--resume" in argv else "--output") + 1])
        if "--output" in argv and out.exists() and any(out.iterdir()):
            raise AutoftError(f"output folder {out} is not empty", "pass --overwrite, --resume or another --output")
        out.mkdir(parents=True, exist_ok=True)
        store = out / "trials.jsonl"
        done = {(r["trial"], r["rung"]) for r in map(json.loads, store.read_text().splitlines())} if store.exists() else set()

        def emit(kind, **kw):
            on_event({"kind": kind, **kw})
            if cancel.is_set():
                raise RunInterrupted()

        for rung, trials, steps in ((0, (0, 1, 2), 10), (1, (1,), 30)):
            emit("rung_start", rung=rung, n_rungs=2, n_trials=len(trials), budget_steps=steps)
            for t in trials:
                if (t, rung) in done:
                    continue
                emit("trial_start", rung=rung, trial=t, index=0, n_trials=len(trials),
                     config={"learning_rate": [3e-5, 1e-4, 3e-4][t]})
                for s in range(1, 4):
                    time.sleep(self.step_delay)
                    emit("step", phase="search", rung=rung, trial=t, step=s * steps // 3, total=steps,
                         loss=1.0 / (s + t), eta_s=30 - s, done_steps=s)
                    if (t, rung) == self.hold_at and s == 2 and len(self.calls) == 1:
                        self.holding.set()
                        while not cancel.is_set() and not _worker_cancelled():
                            time.sleep(0.01)
                        raise RunInterrupted()
                rec = {"trial": t, "rung": rung, "metric": 0.6 + 0.1 * t + 0.05 * rung, "status": "ok",
                       "metric_name": "accuracy", "steps": steps, "config": {"learning_rate": [3e-5, 1e-4, 3e-4][t]}}
                with open(store, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                self.trained.append((t, rung))
                emit("trial_end", **rec)
            emit("rung_end", rung=rung, promoted=[1] if rung == 0 else [])
        (out / "README.md").write_text("# model card\n")
        (out / "metrics.json").write_text("{}")
        emit("done", output_dir=str(out), seconds=12.0)
        return {"output_dir": str(out), "test": {"accuracy": 0.8123, "macro_f1": 0.7011},
                "baseline": {"accuracy": 0.5, "macro_f1": 0.2222}, "search_seconds": 8.0, "train_seconds": 4.0}


def _worker_cancelled() -> bool:
    """The app closed (snapshot taken): let the held thread end."""
    try:
        from textual.worker import get_current_worker

        return get_current_worker().is_cancelled
    except Exception:  # noqa: BLE001
        return True


async def until(pilot, cond, timeout: float = 60.0, what: str = "") -> None:
    """Let the app run until cond() holds (workers report back through the event loop)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def fake_services(run=None) -> Services:
    return Services(load_data=fake_load_data, build_profile=fake_build_profile, probe=fake_probe,
                    plan_hardware=fake_plan_hardware, gpu_table=fake_gpu_table, advise=fake_advise,
                    run=run or FakeRun())
