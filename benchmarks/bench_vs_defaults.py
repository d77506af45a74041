"""autoft against what a user would do by hand: the seed-style defaults (transformers `Trainer`,
learning rate 2e-5, batch 16, 3 epochs, full fine-tune, Trainer's default linear schedule) on the
same model (MiniLM) and data (an sst2 subset), vs `autoft run` (advisor + successive-halving
search + final run with early stopping) at equal or less total compute, search included.

Compute = training samples processed (optimizer steps x effective batch), counted from the
runs themselves (Trainer's global_step; autoft's trials.jsonl + metrics.json: search steps plus
the final run's steps after the search winner's checkpoint it continued from).

    python benchmarks/bench_vs_defaults.py [--train 1600] [--seeds 1]

Writes benchmarks/results/vs_defaults.json and vs_defaults.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import RESULTS, minilm  # noqa: E402

DATA = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data")) / "sst2"


def make_slice(tmp: Path, n_train: int, n_val: int, n_test: int) -> Path:
    out = tmp / "sst2"
    out.mkdir()
    for split, k in (("train", n_train), ("validation", n_val), ("test", n_test)):
        lines = (DATA / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)[: k + 1]
        (out / f"{split}.csv").write_text("".join(lines), encoding="utf-8")
    return out


def by_hand(model: str, bundle, seed: int, tmp: Path, seq_len: int) -> dict:
    """What the seed scripts do: Trainer, lr 2e-5, batch 16, 3 epochs, full fine-tune."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)

    labels = bundle.label_names
    lid = {n: i for i, n in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForSequenceClassification.from_pretrained(model, num_labels=len(labels))

    def ds(split):
        rows = [{**tok(r["text"], truncation=True, max_length=seq_len), "labels": lid[r["label"]]}
                for r in bundle.splits[split]]

        class D(torch.utils.data.Dataset):
            def __len__(self):
                return len(rows)

            def __getitem__(self, i):
                return rows[i]
        return D()

    args = TrainingArguments(output_dir=str(tmp / f"hand-{seed}"), learning_rate=2e-5, per_device_train_batch_size=16,
                             per_device_eval_batch_size=64, num_train_epochs=3, save_strategy="no", report_to=[],
                             seed=seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=True, logging_steps=50)
    tr = Trainer(model=m, args=args, train_dataset=ds("train"), data_collator=DataCollatorWithPadding(tok))
    t0 = time.time()
    out = tr.train()
    secs = time.time() - t0
    pred = tr.predict(ds("test"))
    acc = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    return {"test_accuracy": acc, "steps": out.global_step, "samples": out.global_step * 16, "seconds": round(secs, 1)}


def autoft_run(data: Path, model: str, seed: int, tmp: Path, max_steps: int, trials: int, min_steps: int,
               seq_len: int) -> dict:
    from autoft.autotrain.pipeline import RunOptions, run

    out = tmp / f"autoft-{seed}"
    t0 = time.time()
    res = run(RunOptions(data=str(data), question={"model": model, "seq_len": seq_len}, search_trials=trials,
                         min_steps=min_steps, max_steps=max_steps, seed=seed, output=str(out), yes=True))
    secs = time.time() - t0
    m = json.loads((out / "metrics.json").read_text())
    recs = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines() if line.strip()]
    eff = m["batch_size"] * m["grad_accum"]
    search = json.loads((out / "search.json").read_text())
    prev = {r["index"]: r["prev_budget_steps"] for r in search["rungs"]}
    search_steps = sum(r["steps"] - prev[r["rung"]] for r in recs)
    return {"test_accuracy": res.test["accuracy"], "final_steps": m["final_steps"], "search_steps": search_steps,
            "continued_from_step": m.get("continued_from_step", 0),
            "samples": (search_steps + m["final_steps"] - m.get("continued_from_step", 0)) * eff,
            "effective_batch": eff, "technique": res.technique,
            "config": res.config, "seconds": round(secs, 1), "search_seconds": m["search_seconds"],
            "train_seconds": m["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1600)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--search-trials", type=int, default=6)
    ap.add_argument("--min-steps", type=int, default=15)
    ap.add_argument("--max-steps", type=int, default=195,
                    help="autoft's final run, counting the search winner's 45 steps it continues (6 x 15 + "
                    "2 x 30 search steps + 195 - 45 = 300, the by-hand run's steps)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from autoft.autotrain.data import load_data

    model = minilm()
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        data = make_slice(tmp, a.train, a.val, a.test)
        bundle = load_data(str(data))
        for seed in range(a.seeds):
            hand = by_hand(model, bundle, seed, tmp, a.seq_len)
            print(f"seed {seed} by hand: {hand}", file=sys.stderr)
            auto = autoft_run(data, model, seed, tmp, a.max_steps, a.search_trials, a.min_steps, a.seq_len)
            print(f"seed {seed} autoft: {auto}", file=sys.stderr)
            rows.append({"seed": seed, "by_hand": hand, "autoft": auto,
                         "compute_ratio": round(auto["samples"] / hand["samples"], 3),
                         "accuracy_gain": round(auto["test_accuracy"] - hand["test_accuracy"], 4)})
    out = {"benchmark": "autoft run vs by-hand defaults (Trainer, lr 2e-5, batch 16, 3 epochs, full fine-tune)",
           "goal": "autoft test accuracy >= by-hand at compute_ratio <= 1",
           "model": "sentence-transformers/all-MiniLM-L6-v2", "data": f"sst2: first {a.train} train rows, "
           f"{a.val} validation, {a.test} test", "settings": vars(a), "results": rows,
           "wall_seconds": round(time.time() - t0, 1),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vs_defaults.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(rows, RESULTS / "vs_defaults.png")
    print(json.dumps(rows, indent=2))


def _plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, color in (("by_hand", "by hand (Trainer defaults)", "tab:orange"), ("autoft", "autoft run", "tab:blue")):
        ax.scatter([r[key]["samples"] for r in rows], [r[key]["test_accuracy"] for r in rows], color=color, label=label, s=60)
    ax.set_xlabel("training samples processed (search included)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MiniLM on sst2 subset: autoft vs by-hand defaults")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
