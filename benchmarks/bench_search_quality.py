"""Search quality: successive halving vs random search at the same total budget vs an exhaustive
grid trained at full budget. MiniLM (real weights) fully fine-tuned on an sst2 subset, CPU.

- grid: G learning rates, log-spaced over the advisor's range for full fine-tuning of an encoder
  (1e-5..1e-4), each trained for the full budget F with linear decay; the grid's pick is the best
  validation accuracy; its compute is G x F optimizer steps. Trained once (seed 0): it is the
  reference.
- successive halving (autoft's `run_search`): n configurations (learning rate log-uniform +
  weight decay), eta 3, first rung r steps, survivors continue from checkpoints, no rung past 80%
  of F; then, as `autoft run` does, the winner continues from its last checkpoint to F steps with
  linear decay from there (warmup-stable-decay). Compute: search steps + F - the winner's steps.
- random search around the same total budget: ceil(SH compute / F) random configurations (same
  sampler, other seed stream), each trained for F steps, picked by validation; and the first
  floor(SH compute / F) of them (no more compute than SH). Equal budget lies between the two.
For seeds 0..S-1. Regret = the grid's best test accuracy (oracle, max over the grid) minus the
test accuracy of each method's pick; compute ratio = method steps / grid steps.
Goal (issue 4): SH within 1 accuracy point of the grid's best at <= 1/3 of its compute, and at
least as good as random search at equal budget.

    python benchmarks/bench_search_quality.py [--seeds 3] [--train 320] [--full-steps 40] [--workers 2 --threads 1]
    python benchmarks/bench_search_quality.py --resummarise results/search_quality.json   # summary only

Every training run (a grid point, a search, a random-search run) is independent; --workers runs
them in that many processes side by side (on 2 cores, 2 workers of 1 thread each finish in about
half the time of 1 worker of 2 threads: one small batch does not keep two threads busy).

Writes benchmarks/results/search_quality.json and search_quality.png (--name picks another stem).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import RESULTS, minilm, sst2_slice  # noqa: E402


def train_full(model, bundle, cfg, steps, seed, bs, seq_len) -> dict:
    """One configuration at the full budget with linear decay; validation and test accuracy."""
    from autoft.autotrain.trainer import Trial

    hp = {"learning_rate": cfg["learning_rate"], "weight_decay": cfg.get("weight_decay", 0.01),
          "warmup_steps": max(1, int(0.06 * steps))}
    tr = Trial(model, bundle, task="classification", technique="full", hparams=hp, batch_size=bs, seq_len=seq_len,
               seed=seed, lr_schedule="linear", total_steps=steps)
    try:
        tr.train(steps)
        val = tr.evaluate("validation")["accuracy"]
        test = tr.evaluate("test")["accuracy"]
    finally:
        tr.close()
    return {"config": cfg, "val": val, "test": test, "steps": steps}


def continue_winner(model_dir: Path, res, bundle, steps: int) -> dict:
    """The search's winner continued from its last checkpoint to `steps`, decaying linearly from
    the step it reached (what `autoft run` does); validation and test accuracy."""
    from autoft.autotrain.trainer import Trial

    tr = Trial.load_checkpoint(model_dir / res.best_checkpoint, bundle, lr_schedule="linear", total_steps=steps,
                               decay_start=res.best_steps, max_eval_examples=None)
    try:
        tr.train(steps - tr.steps_done)
        val = tr.evaluate("validation")["accuracy"]
        test = tr.evaluate("test")["accuracy"]
    finally:
        tr.close()
    return {"config": res.best_config, "val": val, "test": test, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--full-steps", type=int, default=40)
    ap.add_argument("--grid", type=int, default=9)
    ap.add_argument("--n-configs", type=int, default=9)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--min-steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    ap.add_argument("--workers", type=int, default=1, help="processes training runs side by side (grid points, "
                    "searches and random-search runs are independent); use workers x threads <= cores")
    ap.add_argument("--name", default="search_quality", help="results file stem under benchmarks/results/ "
                    "(runs at other budgets are kept side by side)")
    ap.add_argument("--reuse-grid", metavar="JSON", help="take the grid (full-budget runs) from an earlier "
                    "results file with the same settings instead of training it again")
    ap.add_argument("--resummarise", metavar="JSON", help="recompute the summary, goals and plot of a "
                    "finished results file (no training)")
    a = ap.parse_args()
    if a.resummarise:
        prev = json.loads(Path(a.resummarise).read_text(encoding="utf-8"))
        b = argparse.Namespace(**{**prev["settings"], "name": a.name})
        summary = _write(b, prev["space"], prev["grid_learning_rates"], _grid_runs(prev), prev["per_seed"],
                         time.time() - prev["wall_seconds"], partial=prev["partial"], machine=prev["machine"])
        print(json.dumps(summary, indent=2))
        return
    from autoft.autotrain.schedule import continued_cost_steps, sample_configs, search_step_cap
    from autoft.autotrain.search import SearchSettings, plan_rungs

    space = {"learning_rate": [1e-5, 1e-4], "weight_decay": [0.0, 0.1]}  # the advisor's full-FT space
    F = a.full_steps
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        src = sst2_slice(a.train, tmp)
        # bigger validation/test than the throughput slice
        data = Path(os.environ.get("AUTOFT_DATA", "/work/shared/data")) / "sst2"
        for split, k in (("validation", a.val), ("test", a.test)):
            lines = (data / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)[: k + 1]
            (src / f"{split}.csv").write_text("".join(lines), encoding="utf-8")

        # -- grid (reference) --
        lo, hi = math.log(1e-5), math.log(1e-4)
        grid_lrs = [float(f"{math.exp(lo + i * (hi - lo) / (a.grid - 1)):.3g}") for i in range(a.grid)]
        grid: dict[float, dict] = {}
        if a.reuse_grid:
            prev = json.loads(Path(a.reuse_grid).read_text(encoding="utf-8"))
            same = all(prev["settings"].get(k) == _settings(a).get(k) for k in GRID_SETTINGS)
            if not same or prev.get("grid_learning_rates") != grid_lrs or len(prev["grid"]) != len(grid_lrs):
                raise SystemExit("--reuse-grid: that file was made with other settings")
            grid = {r["config"]["learning_rate"]: r for r in _grid_runs(prev)}
            print(f"grid reused from {a.reuse_grid}", file=sys.stderr)

        # Every training run is an independent task: the searches first (the longest), then the
        # grid, then random search: ceil(SH compute / F) random configurations (same sampler,
        # other seed stream), each trained for F steps (_random_at_most takes its first floor(...)).
        settings = {seed: SearchSettings(n_trials=a.n_configs, eta=a.eta, min_steps=a.min_steps,
                                         max_steps=search_step_cap(F), seed=seed, metric="accuracy",
                                         warmup_steps=max(1, int(0.06 * F))) for seed in range(a.seeds)}
        sh_steps = {seed: continued_cost_steps(plan_rungs(s), F) for seed, s in settings.items()}
        rnd_cfgs = {seed: sample_configs(space, max(1, math.ceil(sh_steps[seed] / F)), seed=1000 + seed,
                                         technique="full") for seed in settings}
        tasks = [("sh", seed, (settings[seed], space, F)) for seed in settings]
        tasks += [("grid", lr, ({"learning_rate": lr, "weight_decay": 0.01}, F, 0)) for lr in grid_lrs
                  if lr not in grid]
        tasks += [("random", (seed, i), (cfg, F, seed)) for seed, cfgs in rnd_cfgs.items()
                  for i, cfg in enumerate(cfgs)]
        sh: dict[int, dict] = {}
        rnd: dict[tuple, dict] = {}

        def record(kind, key, r) -> None:
            if kind == "grid":
                grid[key] = r
                print(f"grid lr {key:.3g}: val {r['val']:.4f} test {r['test']:.4f}", file=sys.stderr)
            elif kind == "sh":
                sh[key] = r
                print(f"seed {key}: SH test {r['test']:.4f} ({sh_steps[key]} steps)", file=sys.stderr)
            else:
                rnd[key] = r
                print(f"seed {key[0]} random #{key[1]} lr {r['config']['learning_rate']:.3g}: val {r['val']:.4f} "
                      f"test {r['test']:.4f}", file=sys.stderr)
            if grid:  # keep what is done (the summary needs at least one grid point)
                _write(a, space, grid_lrs, [grid[lr] for lr in grid_lrs if lr in grid],
                       _rows(sh, rnd, rnd_cfgs, sh_steps, F), t0, partial=True)

        init = (str(src), a.threads, a.batch_size, a.seq_len)
        if a.workers <= 1:
            _init_worker(*init)
            for kind, key, args in tasks:
                record(kind, key, _run_task(kind, args))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                     initargs=init) as pool:
                futs = {pool.submit(_run_task, kind, args): (kind, key) for kind, key, args in tasks}
                for f in as_completed(futs):
                    record(*futs[f], f.result())
        rows = _rows(sh, rnd, rnd_cfgs, sh_steps, F)
    print(json.dumps(_write(a, space, grid_lrs, [grid[lr] for lr in grid_lrs], rows, t0, partial=False), indent=2))


# per-process state of a worker: the model's folder, the data, batch size and sequence length
_W: dict = {}


def _init_worker(src: str, threads: int, bs: int, seq_len: int) -> None:
    import torch
    from autoft.autotrain.data import load_data
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    _W.update(model=minilm(), bundle=load_data(src), bs=bs, seq_len=seq_len)


def _run_task(kind: str, args: tuple) -> dict:
    model, bundle, bs, seq_len = _W["model"], _W["bundle"], _W["bs"], _W["seq_len"]
    if kind != "sh":  # grid point or random-search run: one configuration at the full budget
        cfg, F, seed = args
        return train_full(model, bundle, cfg, F, seed, bs, seq_len)
    # successive halving (autoft's run_search), then the winner continued to F, as `autoft run` does
    from autoft.autotrain.schedule import total_cost_steps
    from autoft.autotrain.search import plan_rungs, run_search

    s, space, F = args
    with tempfile.TemporaryDirectory() as td:
        out = Path(td)
        from autoft.autotrain.plan import TrialSpec

        spec = TrialSpec(model=model, task="classification", technique="full", batch_size=bs, grad_accum=1,
                         seq_len=seq_len, precision="fp32", device="cpu", seed=s.seed)
        res = run_search(spec, bundle, space, s, out)
        final = continue_winner(out, res, bundle, F)
    return {"test": final["test"], "val_search": res.best_metric, "config": res.best_config,
            "search_steps": total_cost_steps(plan_rungs(s)), "continued_from_step": res.best_steps,
            "trials": [{"trial": r["trial"], "rung": r["rung"], "steps": r["steps"],
                        "lr": r["config"]["learning_rate"], "val_accuracy": r["metric"],
                        "val_loss": (r.get("eval") or {}).get("loss")} for r in res.records]}


def _rows(sh: dict, rnd: dict, rnd_cfgs: dict, sh_steps: dict, F: int) -> list:
    """One row per seed whose search and random-search runs are all done."""
    rows = []
    for seed in sorted(sh):
        runs = [rnd.get((seed, i)) for i in range(len(rnd_cfgs[seed]))]
        if None in runs:
            continue
        pick = max(runs, key=lambda r: r["val"])
        rows.append({"seed": seed, "sh": {**sh[seed], "steps": sh_steps[seed]},
                     "random": {"test": pick["test"], "config": pick["config"], "steps": len(runs) * F,
                                "trials": len(runs),
                                "all": [{"lr": r["config"]["learning_rate"], "val": r["val"], "test": r["test"]}
                                        for r in runs]}})
    return rows


# what the grid's runs depend on (the search's settings do not matter to it)
GRID_SETTINGS = ("train", "val", "test", "full_steps", "grid", "batch_size", "seq_len")


def _grid_runs(prev: dict) -> list[dict]:
    """The grid's runs as train_full returns them, from an earlier results file."""
    return [{"config": {"learning_rate": g["lr"]}, "val": g["val"], "test": g["test"]} for g in prev["grid"]]


def _settings(a) -> dict:
    return {k: v for k, v in vars(a).items() if k not in ("reuse_grid", "name", "resummarise")}


def _random_at_most(row: dict, F: int) -> dict:
    """Random search that spends no more than SH did: the first floor(SH steps / F) of the same
    random configurations (the sampler's order), picked by validation. With `random` (ceil, at
    least SH's compute) it brackets random search at exactly SH's budget."""
    k = max(1, row["sh"]["steps"] // F)
    pick = max(row["random"]["all"][:k], key=lambda r: r["val"])
    return {"test": pick["test"], "lr": pick["lr"], "steps": k * F, "trials": k}


def _write(a, space, grid_lrs, grid, per_seed, t0, partial: bool, machine: dict | None = None) -> dict:
    F = a.full_steps
    grid_steps = a.grid * F  # the full grid's compute (also while it is being trained)
    grid_best_test = max(r["test"] for r in grid)
    grid_pick = max(grid, key=lambda r: r["val"])
    for row in per_seed:
        row["random_at_most"] = _random_at_most(row, F)

    def summ(key):
        if not per_seed:
            return None
        tests = [r[key]["test"] for r in per_seed]
        return {"test_mean": round(statistics.mean(tests), 4), "test_per_seed": tests,
                "regret_vs_grid_best_mean": round(grid_best_test - statistics.mean(tests), 4),
                "regret_vs_grid_pick_mean": round(grid_pick["test"] - statistics.mean(tests), 4),
                "compute_ratio": round(statistics.mean(r[key]["steps"] for r in per_seed) / grid_steps, 3)}

    summary = {"successive_halving": summ("sh"), "random_search": summ("random"),
               "random_search_at_most_sh_compute": summ("random_at_most"),
               "grid": {"best_test": grid_best_test, "pick_by_val_test": grid_pick["test"], "steps": grid_steps}}
    sh = summary["successive_halving"]
    if sh:
        summary["goals"] = {"sh_within_1pt_of_grid_best": sh["regret_vs_grid_best_mean"] <= 0.01,
                            "sh_compute_at_most_one_third": sh["compute_ratio"] <= 1 / 3 + 1e-9,
                            # equal budget lies between the two random searches (whole F-step runs)
                            "sh_at_least_random_with_more_compute":
                                sh["test_mean"] >= summary["random_search"]["test_mean"],
                            "sh_at_least_random_with_less_compute":
                                sh["test_mean"] >= summary["random_search_at_most_sh_compute"]["test_mean"]}
    out = {"benchmark": "search quality: successive halving vs random search (equal budget) vs grid (full budget)",
           "partial": partial, "seeds_done": len(per_seed),
           "model": "sentence-transformers/all-MiniLM-L6-v2, full fine-tune", "device": "cpu",
           "data": f"sst2: first {a.train} train rows, {a.val} validation, {a.test} test",
           "settings": _settings(a), "space": space, "grid_learning_rates": grid_lrs,
           "grid": [{"lr": r["config"]["learning_rate"], "val": r["val"], "test": r["test"]} for r in grid],
           "per_seed": per_seed, "summary": summary, "wall_seconds": round(time.time() - t0, 1),
           "machine": machine or {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                  "load_average": os.getloadavg()},
           "note": "compute in optimizer steps at the same batch size; the grid is trained once (seed 0); "
                   "written after every finished training run (partial=true until all are done)"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    _plot(out, RESULTS / f"{a.name}.png")
    return summary


def _plot(out, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    g = out["summary"]["grid"]
    ax.scatter([g["steps"]] * len(out["grid"]), [r["test"] for r in out["grid"]], color="grey", alpha=0.5,
               label="grid (each LR, full budget)")
    ax.scatter([g["steps"]], [g["best_test"]], color="black", marker="*", s=150, label="grid best")
    for key, label, color in (("sh", "successive halving + final", "tab:blue"),
                              ("random", "random search (>= SH compute)", "tab:orange"),
                              ("random_at_most", "random search (<= SH compute)", "tab:red")):
        xs = [r[key]["steps"] for r in out["per_seed"]]
        ys = [r[key]["test"] for r in out["per_seed"]]
        ax.scatter(xs, ys, color=color, label=label)
    ax.axhline(g["best_test"] - 0.01, color="black", ls=":", lw=1, label="grid best - 1 point")
    ax.set_xlabel("compute (optimizer steps, batch 16)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MiniLM on sst2 subset (CPU): search quality vs compute")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
