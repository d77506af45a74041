"""Estimator accuracy against published, measured peak memory.

    python benchmarks/bench_estimator_accuracy.py [--fit] [--out benchmarks/results]

Reads benchmarks/data/published_memory.json (each row: model architecture, setup as the source
states it (technique, precision, attention kernel, LoRA rank and targets), the training stack, the
measured figure, what was measured and its source), predicts the comparable quantity with
autoft.advisor.memory (allocated: no context, no allocator margin; reserved: no context;
nvidia-smi: everything, with the context the source itself measured when it did), and writes
estimator_accuracy.json (per row and summary: median / worst relative error, under-predictions)
and estimator_accuracy.png (predicted vs measured). The summaries count rows of autoft's own stack
(transformers + peft + torch AdamW, `like_ours`); other stacks are scored apart, and per stack.
`--fit` refits the calibration constants on
the rows not marked held_out and reports the held-out rows separately; without it the shipped
constants (autoft.advisor.memory.CONSTANTS) are scored. Pure Python + matplotlib; no GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from autoft.advisor.memory import CONSTANTS, Measurement, estimate, fit_constants, predicted, relative_errors
from autoft.advisor.spec import ModelSpec, TrainSetup

HERE = Path(__file__).resolve().parent
UNITS = {"B": 1, "MiB": 1024**2, "GiB": 1024**3, "GB": 1e9, "MB": 1e6}


def load(path: Path) -> list[tuple[dict, Measurement]]:
    data = json.loads(path.read_text())
    out = []
    for row in data["measurements"]:
        arch = data["models"][row["model"]]
        spec = ModelSpec(id=row["model"], **arch)
        setup = TrainSetup(**row["setup"])
        ctx = row.get("context_mib")
        out.append((row, Measurement(spec=spec, setup=setup, measured_bytes=row["measured"] * UNITS[row["unit"]],
                                     kind=row["kind"], dtype_policy=row.get("dtype_policy"),
                                     context_bytes=ctx * UNITS["MiB"] if ctx is not None else None)))
    return out


def score(rows: list[tuple[dict, Measurement]], base) -> list[dict]:
    res = []
    for row, m in rows:
        cst = replace(base, **row.get("constants", {}))
        err = relative_errors([m], cst)[0]
        est = estimate(m.spec, m.setup, cst, m.dtype_policy)
        pred = m.measured_bytes * (1 + err)
        res.append({"id": row["id"], "model": row["model"], "technique": m.setup.technique, "kind": m.kind,
                    "stack": row.get("stack", "not stated"), "like_ours": bool(row.get("like_ours")),
                    "lora_targets": m.setup.lora_targets if m.setup.technique in ("lora", "qlora") else None,
                    "held_out": bool(row.get("held_out")), "reliability": row.get("reliability", "high"),
                    "measured_gib": round(m.measured_bytes / 1024**3, 3),
                    "predicted_gib": round(pred / 1024**3, 3), "relative_error": round(err, 4),
                    "breakdown_gib": est.to_dict()["breakdown_gib"],
                    "peak_gib": round(predicted(est, "peak") / 1024**3, 3), "source": row["url"]})
    return res


def summary(res: list[dict]) -> dict:
    if not res:
        return {}
    errs = [r["relative_error"] for r in res]
    return {"n": len(errs), "median_abs_relative_error": round(statistics.median(abs(e) for e in errs), 4),
            "median_relative_error": round(statistics.median(errs), 4),
            "worst_abs_relative_error": round(max(abs(e) for e in errs), 4),
            "worst_under_prediction": round(min(min(errs), 0.0), 4),
            "under_predictions": sum(e < 0 for e in errs),
            "under_by_more_than_10pct": sum(e < -0.10 for e in errs)}


def plot(res: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    colors = {"full": "tab:red", "freeze": "tab:orange", "lora": "tab:blue", "qlora": "tab:green"}
    for r in res:
        ax.scatter(r["measured_gib"], r["predicted_gib"], c=colors[r["technique"]],
                   marker="s" if r["held_out"] else "o", s=36, edgecolors="black", linewidths=0.5)
    hi = max(max(r["measured_gib"], r["predicted_gib"]) for r in res) * 1.08
    ax.plot([0, hi], [0, hi], "k-", lw=0.8, label="exact")
    ax.plot([0, hi], [0, 1.1 * hi], "k:", lw=0.8, label="+/-10%")
    ax.plot([0, hi], [0, 0.9 * hi], "k:", lw=0.8)
    for t, c in colors.items():
        ax.scatter([], [], c=c, label=t, edgecolors="black", linewidths=0.5)
    ax.scatter([], [], c="white", marker="s", edgecolors="black", label="held out")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("measured (GiB; allocated, reserved or nvidia-smi as published)")
    ax.set_ylabel("predicted, same quantity (GiB)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE / "data" / "published_memory.json")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--fit", action="store_true", help="refit constants on the non-held-out rows first")
    args = ap.parse_args(argv)
    rows = load(args.data)
    base = CONSTANTS
    fitted = None
    if args.fit:
        train = [m for row, m in rows if not row.get("held_out") and not row.get("constants")]
        fitted = fit_constants(train)
        base = fitted
    res = score(rows, base)
    out = {
        "constants": base.to_dict(),
        "fitted": fitted is not None,
        "constants_note": ("refitted in this run on the calibration rows" if fitted is not None else
                           "the shipped constants (autoft.advisor.memory.CONSTANTS), which were fitted with --fit "
                           "on the calibration rows; held-out rows were not used"),
        # the goal counts rows of autoft's own stack (transformers + peft + torch AdamW), each compared
        # with the estimate for its stated settings and the same kind of measurement; other stacks apart
        "all": summary([r for r in res if r["like_ours"]]),
        "other_stacks": summary([r for r in res if not r["like_ours"]]),
        "by_stack": {k: summary([r for r in res if r["stack"] == k]) for k in sorted({r["stack"] for r in res})},
        "calibration_rows": summary([r for r in res if not r["held_out"] and r["like_ours"]]),
        "held_out_rows": summary([r for r in res if r["held_out"] and r["like_ours"]]),
        "without_low_reliability_rows": summary([r for r in res if not r["reliability"].startswith("low")
                                                 and r["like_ours"]]),
        "rows": res,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "estimator_accuracy.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["all"]
    plot(res, args.out / "estimator_accuracy.png",
         f"autoft estimator vs {s['n']} published measurements\nmedian |err| {100 * s['median_abs_relative_error']:.1f}%, "
         f"worst {100 * s['worst_abs_relative_error']:.1f}%, under by >10%: {s['under_by_more_than_10pct']}")
    for r in res:
        print(f"{r['id']:<45} {r['kind']:<10} measured {r['measured_gib']:7.2f}  predicted {r['predicted_gib']:7.2f} GiB"
              f"  {100 * r['relative_error']:+6.1f}%{'  (held out)' if r['held_out'] else ''}")
    for k in ("all", "other_stacks", "calibration_rows", "held_out_rows", "without_low_reliability_rows"):
        print(k, out[k])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
