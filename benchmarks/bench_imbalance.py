"""Class-weighted loss on imbalanced data: macro-F1 with and without `--class-weights balanced`.

An imbalanced real slice: ag_news (4 topics) subsampled with a fixed seed so that the classes
fall geometrically from the largest to the smallest at `--ratio` (20:1 by default: 800, 295, 109
and 40 train rows; which topic is small is chosen by the slice seed). Validation is cut with the
same proportions; the test set is ag_news's balanced test split (500 per topic, or --test rows),
so every topic's F1 is measured on the same number of rows.

For each of `--seeds` training seeds, two Trials are trained directly, identical but for the loss:
plain cross-entropy, and cross-entropy weighted by `imbalance.class_weights(bundle, "balanced")`
(what `--class-weights auto` picks here: rule WEIGHT-001 fires at 10x and above, checked below by
asking the advisor about this slice). MiniLM (the demo model), full fine-tune, fixed learning rate
with warmup and linear decay, no search: the comparison isolates the loss.

    python benchmarks/bench_imbalance.py                       # the measurement (3 seeds)
    python benchmarks/bench_imbalance.py --max-train 120 --steps 4 --test 80 --seeds 1 --out /tmp/x

Writes benchmarks/results/imbalance.json and imbalance.png (or under --out).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import RESULTS, minilm  # noqa: E402

DATA = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data")) / "ag_news"


def _read(split: str) -> list[dict]:
    with open(DATA / f"{split}.csv", newline="", encoding="utf-8") as f:
        return [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]


def class_sizes(n_max: int, ratio: float, k: int) -> list[int]:
    """Geometric sizes from n_max down to n_max / ratio over k classes."""
    return [max(1, round(n_max / ratio ** (i / (k - 1)))) for i in range(k)]


def imbalanced_slice(n_max: int, ratio: float, n_test: int | None, seed: int):
    """A DataBundle-like object: train and validation skewed n_max : ... : n_max / ratio, test balanced."""
    from autoft.autotrain.data.load import DataBundle

    rng = random.Random(f"imbalance-{seed}")
    train_all, val_all, test_all = _read("train"), _read("validation"), _read("test")
    labels = sorted({r["label"] for r in train_all})
    order = labels[:]
    rng.shuffle(order)                                   # which topic is large, which is small
    sizes = dict(zip(order, class_sizes(n_max, ratio, len(order))))
    val_sizes = {l: max(2, round(n / 8)) for l, n in sizes.items()}

    def take(rows, want):
        by = {l: [r for r in rows if r["label"] == l] for l in labels}
        out = [r for l in labels for r in rng.sample(by[l], min(want[l], len(by[l])))]
        rng.shuffle(out)
        return out

    test = test_all
    if n_test:
        test = take(test_all, {l: n_test // len(labels) for l in labels})
    return DataBundle(task="classification", splits={"train": take(train_all, sizes),
                                                     "validation": take(val_all, val_sizes), "test": test},
                      label_names=labels, source=f"ag_news {ratio:g}:1 slice (seed {seed})",
                      columns={"text": "text", "label": "label"}), sizes


def advisor_choice(bundle) -> dict:
    """What `autoft advise` decides for this slice: class weights and the search metric."""
    from autoft.advisor.hardware import plan_hardware
    from autoft.advisor.question import Question
    from autoft.advisor.recommend import advise
    from autoft.autotrain.data import build_profile

    prof = build_profile(bundle)
    q = Question(**{**prof.to_question_fields(), "gpu": "cpu", "model": minilm(), "technique": "full"})
    rec = advise(q, plan_hardware("cpu"))
    return {"class_weights": rec.class_weights, "metric": rec.metric, "imbalance_ratio": prof.imbalance_ratio,
            "rules": [r["rule"] for r in rec.reasons if r["rule"].startswith(("WEIGHT", "METRIC"))]}


def one_run(model: str, bundle, mode: str, seed: int, a) -> dict:
    from autoft.autotrain import imbalance
    from autoft.autotrain.trainer import Trial

    weights = imbalance.class_weights(bundle, mode)
    t = Trial(model, bundle, task="classification", technique="full", hparams={"learning_rate": a.lr},
              batch_size=a.batch_size, seq_len=a.seq_len, seed=seed, lr_schedule="linear",
              total_steps=a.steps, warmup_steps=max(1, a.steps // 10), class_weights=weights)
    t0 = time.perf_counter()
    t.train(a.steps)
    secs = time.perf_counter() - t0
    test = t.evaluate("test")
    t.close()
    return {"mode": mode, "seed": seed, "class_weights": weights, "macro_f1": test["macro_f1"],
            "accuracy": test["accuracy"], "train_seconds": round(secs, 1),
            "recall": {l: round(v["recall"], 4) for l, v in test["per_class"].items()},
            "f1": {l: round(v["f1"], 4) for l, v in test["per_class"].items()}}


def _plot(runs: list[dict], sizes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in runs})
    labels = sorted(sizes, key=lambda l: -sizes[l])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for k, mode in enumerate(("none", "balanced")):
        vals = [next(r["macro_f1"] for r in runs if r["seed"] == s and r["mode"] == mode) for s in seeds]
        ax1.bar([i + 0.4 * k for i in range(len(seeds))], vals, width=0.4, label=f"class weights {mode}")
        rec = [sum(r["recall"][l] for r in runs if r["mode"] == mode) / len(seeds) for l in labels]
        ax2.bar([i + 0.4 * k for i in range(len(labels))], rec, width=0.4, label=f"class weights {mode}")
    ax1.set_xticks([i + 0.2 for i in range(len(seeds))], [f"seed {s}" for s in seeds])
    ax1.set_ylabel("test macro-F1")
    ax1.set_title("macro-F1 per seed")
    ax1.legend()
    ax2.set_xticks([i + 0.2 for i in range(len(labels))], [f"{l}\n({sizes[l]} rows)" for l in labels])
    ax2.set_ylabel("test recall (mean over seeds)")
    ax2.set_title("recall per topic, largest to smallest")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-train", type=int, default=800, help="train rows of the largest class")
    p.add_argument("--ratio", type=float, default=20.0, help="largest : smallest class")
    p.add_argument("--test", type=int, default=None, help="balanced test rows (default: all 2,000)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=240, help="optimizer steps per run")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--slice-seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    model = minilm()
    bundle, sizes = imbalanced_slice(a.max_train, a.ratio, a.test, a.slice_seed)
    choice = advisor_choice(bundle)
    print(f"slice {sizes}; advisor: {choice}", flush=True)
    runs = []
    for seed in range(a.seeds):
        for mode in ("none", "balanced"):
            r = one_run(model, bundle, mode, seed, a)
            runs.append(r)
            print(f"seed {seed} {mode:8s} macro-F1 {r['macro_f1']:.4f} accuracy {r['accuracy']:.4f} "
                  f"recall {r['recall']} ({r['train_seconds']} s)", flush=True)
    mean = {m: sum(r["macro_f1"] for r in runs if r["mode"] == m) / a.seeds for m in ("none", "balanced")}
    diffs = [next(r["macro_f1"] for r in runs if r["seed"] == s and r["mode"] == "balanced")
             - next(r["macro_f1"] for r in runs if r["seed"] == s and r["mode"] == "none") for s in range(a.seeds)]
    smallest = min(sizes, key=sizes.get)
    out = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "model": "all-MiniLM-L6-v2",
                     "data": "ag_news", "train_sizes": sizes, "test_rows": len(bundle.splits["test"]),
                     "validation_rows": len(bundle.splits["validation"])},
        "advisor": choice,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": "cpu", "load_average_at_end": os.getloadavg()},
        "runs": runs,
        "summary": {"mean_macro_f1": {k: round(v, 4) for k, v in mean.items()},
                    "macro_f1_gain_per_seed": [round(d, 4) for d in diffs],
                    "seeds_where_weighting_wins": sum(d > 0 for d in diffs),
                    "smallest_class": smallest,
                    "smallest_class_recall": {m: round(sum(r["recall"][smallest] for r in runs if r["mode"] == m)
                                                       / a.seeds, 4) for m in ("none", "balanced")}},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "imbalance.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(runs, sizes, a.out / "imbalance.png")
    print(json.dumps(out["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
