"""The search on Ray vs the local backend: wall time, the final model's test accuracy, and what
Ray costs per trial. MiniLM (real weights) fully fine-tuned on an sst2 slice, CPU, 2 cores.

Three runs of the same `autoft run` (same data, model, seed, configurations, rungs, final steps):
- local, 2 threads: the local backend as it runs by default (torch uses both cores);
- local, 1 thread: the same with one thread, to tell parallelism from threading;
- ray: `--search-backend ray --trials-in-parallel 2 --cpus-per-trial 1` (2 trials at once, 1 thread
  each) on a Ray cluster of its own on this machine (`ray start --head`, 2 CPUs; started before
  the run, its start-up time recorded apart).
Goal (issue 14): the Ray search at least 1.6x faster than the local one (wall time of the search,
`search_seconds`), and the final model's test accuracy the same or better.

Ray's overhead per trial = (Ray's search wall time x trials at once - the optimizer steps its
search trained x the local 1-thread search's seconds per step) / trials: the slot time the same
work would not have needed in one warm process (worker start and imports, Tune's scheduling,
checkpoint copies into Ray's storage, two trials sharing the memory bus, slots idle at the end).
Seconds per step count everything inside a trial-rung (model load, evaluation, checkpoint).

ASHA is asynchronous, so the Ray search may promote other trials than the local (synchronous)
one: the JSON records both winners, the trial-rungs per rung and the optimizer steps each search
trained. The summary ends with the arithmetic for larger set-ups (a rung of N trials on G GPUs),
from the step time and overhead measured here.

    python benchmarks/bench_ray_search.py                 # the measurement (quiet machine, ~15-25 min)
    python benchmarks/bench_ray_search.py --smoke         # end to end in a few minutes; timings meaningless

Writes benchmarks/results/ray_search.json and ray_search.png (--smoke: a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_throughput import DATA, RESULTS, minilm  # noqa: E402

GOAL_SPEEDUP = 1.6


def sst2_slice(tmp: Path, n_train: int, n_val: int, n_test: int) -> Path:
    out = tmp / "sst2"
    out.mkdir(parents=True, exist_ok=True)
    for split, k in (("train", n_train), ("validation", n_val), ("test", n_test)):
        with open(DATA / "sst2" / f"{split}.csv", encoding="utf-8") as f:
            lines = f.readlines()[: k + 1]
        (out / f"{split}.csv").write_text("".join(lines), encoding="utf-8")
    return out


def autoft_run(args, data: Path, out: Path, threads: int, extra: list[str], env: dict) -> dict:
    """One `autoft run` as its own process: its --json summary, metrics.json, trials.jsonl,
    search.json and wall time."""
    cmd = [sys.executable, "-m", "autoft", "run", "--data", str(data), "--model", minilm(), "--technique", "full",
           "--batch-size", str(args.batch), "--seq-len", str(args.seq_len), "--search-trials", str(args.trials),
           "--eta", str(args.eta), "--min-steps", str(args.min_steps), "--max-steps", str(args.final_steps),
           "--seed", str(args.seed), "--output", str(out), "--yes", "--json", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True,
                       env={**env, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                            "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"autoft run failed ({p.returncode}):\n{p.stderr[-4000:]}")
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines() if x.strip()]
    metrics = json.loads((out / "metrics.json").read_text())
    search = json.loads((out / "search.json").read_text())
    return {"command": " ".join(cmd[1:]), "threads": threads, "wall_s": round(wall, 2),
            "summary": json.loads(p.stdout), "metrics": {k: metrics[k] for k in (
                "search_seconds", "train_seconds", "best_trial", "config", "continued_from_step")},
            "test_accuracy": metrics["test"]["accuracy"], "search": {k: search.get(k) for k in (
                "backend", "scheduler", "trials_at_once", "rungs")},
            "records": [{k: r.get(k) for k in ("trial", "rung", "steps", "metric", "status", "seconds",
                                                "started_at", "finished_at", "worker")} for r in records]}


def search_figures(run: dict, rungs: list[dict]) -> dict:
    """Trial-rungs per rung, optimizer steps the search trained, seconds inside trial-rungs and
    per optimizer step (model load, evaluation and checkpoint included)."""
    new = {i: r["budget_steps"] - (rungs[i - 1]["budget_steps"] if i else 0) for i, r in enumerate(rungs)}
    recs = run["records"]
    inside = sum(r["seconds"] for r in recs)
    steps = sum(new[r["rung"]] for r in recs)
    return {"trial_rungs_per_rung": [sum(1 for r in recs if r["rung"] == i) for i in range(len(rungs))],
            "search_steps": steps, "trials": len({r["trial"] for r in recs}), "inside_trial_rungs_s": round(inside, 2),
            "s_per_step": round(inside / steps, 4) if steps else None, "overlapped": _overlapped(recs)}


def overhead_per_trial(ray: dict, local_1_thread: dict) -> float:
    """Slot seconds per trial that Ray's search spent beyond the same steps at the local 1-thread
    search's seconds per step."""
    f, slots = ray["figures"], ray["search"]["trials_at_once"] or 1
    work = f["search_steps"] * (local_1_thread["figures"]["s_per_step"] or 0.0)
    return round((ray["metrics"]["search_seconds"] * slots - work) / max(1, f["trials"]), 2)


def _overlapped(recs: list[dict]) -> bool:
    spans = sorted((r["started_at"], r["finished_at"]) for r in recs if r.get("started_at"))
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def project(n: int, steps: int, gpus: float, step_s: float, overhead_s: float) -> dict:
    """One rung of n trials of `steps` steps each: one after another on one GPU vs `gpus` slots
    at once (a slot per GPU, or several with --gpus-per-trial below 1), each trial paying
    `overhead_s` on Ray. Assumes a trial runs as fast in its slot as alone (true for whole GPUs;
    for shared GPUs only while the model leaves the GPU's compute partly idle)."""
    local = n * steps * step_s
    waves = math.ceil(n / gpus)
    ray = waves * (steps * step_s + overhead_s)
    return {"n": n, "steps": steps, "slots": gpus, "local_s": round(local, 1), "ray_s": round(ray, 1),
            "speedup": round(local / ray, 2)}


def arithmetic(step_s: float, overhead_s: float) -> tuple[list[dict], str]:
    cases = [project(27, 100, 8, step_s, overhead_s), project(27, 100, 16, step_s, overhead_s),
             project(9, 300, 8, step_s, overhead_s), project(81, 100, 8, step_s, overhead_s)]
    c = cases[0]
    text = (f"A rung of N trials of s steps takes N x s x t on the local backend (t = {step_s:.3g} s per step "
            f"measured here) and ceil(N / G) x (s x t + o) on Ray with G slots (o = {overhead_s:.3g} s of "
            f"overhead per trial measured here). 27 trials of 100 steps on 8 GPUs: ceil(27/8) = 4 waves, "
            f"{c['local_s']:.0f} s -> {c['ray_s']:.0f} s, {c['speedup']}x (27/4 = 6.75x at most: the last wave "
            f"runs 3 trials on 8 GPUs). With --gpus-per-trial 0.5 the same 8 GPUs are 16 slots: 2 waves, "
            f"{cases[1]['speedup']}x, if a trial on half a GPU runs as fast as alone (a small model that "
            "leaves the GPU idle half the time) - a model that fills the GPU gains nothing from sharing it. "
            f"The next rung (9 trials of 300 steps) on 8 GPUs: 2 waves, {cases[2]['speedup']}x. ASHA has no "
            "barrier between rungs, so trials of the next rung fill the slots the last wave leaves idle: "
            "a search takes about (all its trial-steps x t) / G + one trial's overhead per wave, and more "
            "trials per GPU (N >> G) brings the speedup closer to G.")
    return cases, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny setting: checks the script, timings meaningless")
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-steps", type=int, default=30)
    ap.add_argument("--final-steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    if args.smoke:
        args.train, args.val, args.test, args.trials, args.eta = 64, 32, 32, 6, 3
        args.min_steps, args.final_steps, args.batch, args.seq_len = 2, 10, 8, 24
    results = args.out or (Path(tempfile.mkdtemp(prefix="bench-ray-")) if args.smoke else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    from ray_cluster import RayCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-runs-"))
    data = sst2_slice(tmp, args.train, args.val, args.test)
    load_before = os.getloadavg()
    runs = {"local_2_threads": autoft_run(args, data, tmp / "local2", 2, [], dict(os.environ)),
            "local_1_thread": autoft_run(args, data, tmp / "local1", 1, [], dict(os.environ))}
    t0 = time.perf_counter()
    with RayCluster(num_cpus=2) as cluster:
        ray_start_s = time.perf_counter() - t0
        runs["ray_2_at_once"] = autoft_run(args, data, tmp / "ray", 1, [
            "--search-backend", "ray", "--ray-address", cluster.address, "--trials-in-parallel", "2",
            "--cpus-per-trial", "1"], cluster.env)
    rungs = runs["local_2_threads"]["search"]["rungs"]
    for run in runs.values():
        run["figures"] = search_figures(run, rungs)
    summary = summarise(runs, ray_start_s)
    cases, text = arithmetic(runs["local_1_thread"]["figures"]["s_per_step"] or 0.0,
                             summary["ray_overhead_per_trial_s"])
    summary["larger_setups"], summary["larger_setups_text"] = cases, text
    out = {"benchmark": "ray_search", "settings": vars(args) | {"out": str(args.out) if args.out else None},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": load_before,
                       "load_after": os.getloadavg()},
           "ray_cluster_start_s": round(ray_start_s, 2), "runs": runs, "summary": summary}
    name = "ray_search"
    (results / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(runs, results / f"{name}.png")
    print(json.dumps(summary, indent=2))
    print(f"wrote {results / (name + '.json')} and {name}.png")


def summarise(runs: dict, ray_start_s: float) -> dict:
    local, local1, ray = runs["local_2_threads"], runs["local_1_thread"], runs["ray_2_at_once"]
    speedup = local["metrics"]["search_seconds"] / ray["metrics"]["search_seconds"]
    return {
        "search_seconds": {k: r["metrics"]["search_seconds"] for k, r in runs.items()},
        "run_wall_seconds": {k: r["wall_s"] for k, r in runs.items()},
        "speedup_vs_local_2_threads": round(speedup, 2),
        "speedup_vs_local_1_thread": round(local1["metrics"]["search_seconds"] / ray["metrics"]["search_seconds"], 2),
        "goal_speedup": GOAL_SPEEDUP, "speedup_met": speedup >= GOAL_SPEEDUP,
        "test_accuracy": {k: r["test_accuracy"] for k, r in runs.items()},
        "accuracy_met": ray["test_accuracy"] >= local["test_accuracy"],
        "best_trial": {k: r["metrics"]["best_trial"] for k, r in runs.items()},
        "same_winner_as_local": ray["metrics"]["best_trial"] == local["metrics"]["best_trial"],
        "trial_rungs_per_rung": {k: r["figures"]["trial_rungs_per_rung"] for k, r in runs.items()},
        "search_steps": {k: r["figures"]["search_steps"] for k, r in runs.items()},
        "ray_overhead_per_trial_s": overhead_per_trial(ray, local1),
        "seconds_per_step": {k: r["figures"]["s_per_step"] for k, r in runs.items()},
        "ray_trials_overlapped": ray["figures"]["overlapped"],
        "ray_cluster_start_s": round(ray_start_s, 2),
    }


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.bar(names, [runs[n]["metrics"]["search_seconds"] for n in names], color=["tab:blue", "tab:cyan", "tab:orange"])
    a.set_ylabel("search wall time (s)")
    a.set_title("Search wall time")
    b.bar(names, [runs[n]["test_accuracy"] for n in names], color=["tab:blue", "tab:cyan", "tab:orange"])
    b.set_ylabel("test accuracy of the final model")
    b.set_ylim(0, 1)
    b.set_title("Final model")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
