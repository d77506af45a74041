"""The FSDP per-GPU memory arithmetic (autoft.advisor.sharding) against published multi-GPU runs.

    python benchmarks/bench_sharded_memory.py [--out benchmarks/results]

Reads benchmarks/data/published_multi_gpu_memory.json (each row: model architecture, GPUs,
strategy, per-GPU setup, the measured figure, what was measured, what the source did that the
arithmetic does not model, and its source), predicts the comparable per-GPU quantity (reserved:
no CUDA context; nvidia-smi: everything) and writes sharded_memory.json (per row: measured,
predicted, relative error, the predicted per-GPU breakdown) and sharded_memory.png. Pure Python +
matplotlib; no GPU.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from autoft.advisor.memory import predicted
from autoft.advisor.sharding import per_gpu_estimate
from autoft.advisor.spec import ModelSpec, TrainSetup

HERE = Path(__file__).resolve().parent
UNITS = {"GiB": 1024**3, "GB": 1e9}


def score(data: dict) -> list[dict]:
    out = []
    for row in data["measurements"]:
        spec = ModelSpec(id=row["model"], **data["models"][row["model"]])
        est = per_gpu_estimate(spec, TrainSetup(**row["setup"]), row["world"], row["strategy"],
                               dtype_policy=row.get("dtype_policy"))
        pred = predicted(est, row["kind"])
        m = row["measured"]
        lo, hi = (m, m) if isinstance(m, (int, float)) else m
        lo, hi = lo * UNITS[row["unit"]], hi * UNITS[row["unit"]]
        err = 0.0 if lo <= pred <= hi else (pred - lo) / lo if pred < lo else (pred - hi) / hi
        out.append({"id": row["id"], "world": row["world"], "technique": row["setup"]["technique"], "kind": row["kind"],
                    "measured_gib": [round(lo / 1024**3, 2), round(hi / 1024**3, 2)],
                    "predicted_gib": round(pred / 1024**3, 2), "relative_error": round(err, 3),
                    "breakdown_gib": est.to_dict()["breakdown_gib"], "differs": row.get("differs", []),
                    "source": row["url"]})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    y = range(len(rows))
    for i, r in enumerate(rows):
        lo, hi = r["measured_gib"]
        ax.plot([lo, hi] if hi > lo else [lo - 0.3, lo + 0.3], [i, i], color="black", lw=6, solid_capstyle="butt",
                label="measured" if i == 0 else None)
        ax.plot(r["predicted_gib"], i, "o", color="tab:orange", label="predicted" if i == 0 else None)
    ax.set_yticks(list(y), [f"{r['id']}\n({r['world']} GPUs, {r['technique']})" for r in rows], fontsize=7)
    ax.set_xlabel("per-GPU peak memory, GiB")
    ax.set_title("FSDP per-GPU memory: autoft's arithmetic vs published runs", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "data" / "published_multi_gpu_memory.json")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    rows = score(json.loads(args.data.read_text()))
    errs = [abs(r["relative_error"]) for r in rows]
    result = {"rows": rows, "summary": {"rows": len(rows), "median_abs_error": sorted(errs)[len(errs) // 2],
                                        "worst_abs_error": max(errs),
                                        "under_predicted": sum(r["relative_error"] < 0 for r in rows)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sharded_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, args.out / "sharded_memory.png")
    for r in rows:
        lo, hi = r["measured_gib"]
        meas = f"{lo:.1f}" if lo == hi else f"{lo:.1f}-{hi:.1f}"
        print(f"{r['id']:<40} {r['world']} GPUs  measured {meas:>9} GiB  predicted {r['predicted_gib']:6.1f} GiB  "
              f"error {r['relative_error']:+.0%}")
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
