"""`autoft estimate`: predicted peak GPU memory of one fine-tuning setup, term by term."""
from __future__ import annotations

import argparse
import json

from autoft.advisor.spec import OPTIMIZERS, PRECISIONS, TASKS, TECHNIQUES

HELP = "predict the peak GPU memory (GiB) of a fine-tuning setup, term by term, before training"
DESCRIPTION = """Predict the peak GPU memory of one fine-tuning setup, term by term, in milliseconds (no torch).
--trace also runs autoft's own training step for the setup on fake tensors (shapes, no data: no GPU,
no weights downloaded) and prints its measured peak beside the prediction: any architecture
transformers can build from its config.json, including ones outside the catalog (MoE, new model
types). A trace takes a few seconds to a minute on 2 CPU cores (about 1 ms per operator)."""
EXAMPLES = """\
  autoft estimate --model meta-llama/Llama-3.1-8B --technique qlora --batch-size 4 --seq-len 2048
  autoft estimate --model Qwen/Qwen2.5-7B-Instruct --technique lora --batch-size 1 --seq-len 512 --gpu T4
  autoft estimate --model google-bert/bert-base-uncased --technique full --task classification \\
      --batch-size 32 --seq-len 128 --gpu-memory 16GiB --json
  autoft estimate --model mistralai/Mistral-7B-Instruct-v0.3 --technique lora --lora-rank 64 \\
      --gradient-checkpointing --optimizer paged-adamw-8bit --batch-size 8 --seq-len 1024
  autoft estimate --model ./my-model/config.json --technique freeze --freeze-layers 20 --batch-size 2 --seq-len 1024
  autoft estimate --model google/flan-t5-base --technique full --task summarization --batch-size 8 \\
      --seq-len 512 --target-len 128 --gpu T4
  autoft estimate --model meta-llama/Llama-3.1-8B --technique full --gradient-checkpointing --batch-size 1 \\
      --seq-len 2048 --gpus 8 --strategy fsdp --gpu-memory 24GiB      # per-GPU memory, sharded over 8 GPUs
  autoft estimate --model Qwen/Qwen2.5-0.5B-Instruct --technique lora --batch-size 4 --seq-len 1024 --trace
  autoft estimate --model ./mixtral-like/config.json --technique qlora --batch-size 1 --seq-len 2048 --trace --json
"""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to train")
    g.add_argument("--model", required=True, metavar="ID|PATH",
                   help="catalog or Hub id, a local folder, a config.json or a .gguf file")
    g.add_argument("--technique", required=True, choices=TECHNIQUES,
                   help="full, freeze (train the top layers), lora or qlora")
    g.add_argument("--task", choices=TASKS, default=None,
                   help="generation (LM loss over the vocabulary), classification, summarization or "
                        "translation; default: classification for encoders, generation for decoders, "
                        "summarization for encoder-decoders")
    g.add_argument("--num-labels", type=_int, default=2, metavar="N", help="classes (classification)")
    s = parser.add_argument_group("setup")
    s.add_argument("--batch-size", type=_int, required=True, metavar="N", help="micro-batch size per GPU")
    s.add_argument("--seq-len", type=_int, required=True, metavar="TOKENS",
                   help="sequence length in tokens (an encoder-decoder's source length)")
    s.add_argument("--target-len", type=_int, default=None, metavar="TOKENS",
                   help="encoder-decoders: target (decoder) length in tokens (default: --seq-len)")
    s.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward (default: on for qlora, as peft's k-bit "
                        "preparation does; off otherwise)")
    s.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="bf16, fp16 or fp32 (default: bf16, or fp16 on a --gpu without bf16)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="adamw (default), adamw-8bit "
                   "or paged-adamw-8bit")
    s.add_argument("--lora-rank", type=_int, default=16, metavar="R", help="LoRA rank (default 16)")
    s.add_argument("--lora-targets", choices=("all-linear", "attention", "qkvo"), default="all-linear",
                   help="LoRA on every linear layer (default), on the attention q and v projections "
                        "(attention), or on all four attention projections q, k, v, o (qkvo)")
    s.add_argument("--grad-accum", type=_int, default=None, metavar="N",
                   help="--trace: micro-batches per optimizer step (default: unknown, traced as accumulating: "
                        "gradients live through the forward; 1: they do not). The prediction always counts "
                        "gradients and activations together")
    s.add_argument("--freeze-layers", type=_int, default=None, metavar="K",
                   help="freeze: bottom layers kept frozen (default: all but the top quarter)")
    s.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                   help="attention kernel: sdpa/flash (default) or eager (stores a x s x s matrices)")
    s.add_argument("--chunked-loss", action="store_true",
                   help="the loss is computed in chunks (fused/chunked cross-entropy)")
    s.add_argument("--cpu", action="store_true", help="estimate a CPU run (fp32, RAM, no CUDA context)")
    d = parser.add_argument_group("several GPUs (memory per GPU)")
    d.add_argument("--gpus", type=_int, default=1, metavar="N",
                   help="data-parallel processes (GPUs) in all; the batch size is per GPU (default 1)")
    d.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp",
                   help="with --gpus N: ddp (a full replica per GPU, default) or fsdp (full shard: weights, "
                        "gradients and optimizer states divided by N)")
    h = parser.add_argument_group("hardware (optional: say whether it fits)")
    x = h.add_mutually_exclusive_group()
    x.add_argument("--gpu", metavar="NAME", help="a GPU from the table (T4, A100-40GB, H100-80GB, RTX-4090, ...)")
    x.add_argument("--gpu-memory", metavar="SIZE", help="GPU memory, e.g. 24GiB or 16GB")
    t = parser.add_argument_group("trace (measure instead of predict)")
    t.add_argument("--trace", action="store_true",
                   help="also trace autoft's training step on fake tensors and print the measured peak by kind "
                        "beside the prediction (seconds to a minute on 2 cores; needs torch and transformers)")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="--trace: let transformers run the model's own code (for model types it does not ship)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def _gpu_memory(args) -> tuple[int | None, str | None]:
    from autoft.advisor.units import parse_size

    if args.gpu_memory:
        return parse_size(args.gpu_memory), None
    if args.gpu:
        from autoft.advisor.hardware import find_gpu

        g = find_gpu(args.gpu)
        if args.precision is None and not g.bf16:
            args.precision = "fp16"  # what the advisor would pick on this GPU (no bf16 before Ampere)
        return g.memory_bytes, g.name
    return None, None


def run(args) -> int:
    from autoft.advisor.catalog import resolve_model
    from autoft.advisor.sharding import fsdp_refusal, max_batch_size, per_gpu_estimate
    from autoft.advisor.spec import TrainSetup
    from autoft.advisor.units import GIB
    from autoft.errors import AutoftError

    memory, gpu_name = _gpu_memory(args)
    args.precision = args.precision or "bf16"
    spec = resolve_model(args.model)
    task = args.task or {"encoder": "classification", "encoder-decoder": "summarization"}.get(spec.family, "generation")
    if task != "classification" and spec.family == "encoder":
        raise AutoftError(f"{spec.id} is an encoder and cannot be trained for generation",
                          "pass --task classification, or pick a decoder model")
    ckpt = args.gradient_checkpointing
    if ckpt is None:
        ckpt = args.technique == "qlora"
    if args.num_labels < 1:
        raise AutoftError(f"--num-labels must be 1 or more, got {args.num_labels}", "pass the number of classes")
    if args.freeze_layers is not None and args.freeze_layers > spec.num_layers:
        raise AutoftError(f"--freeze-layers {args.freeze_layers} is more than the model's {spec.num_layers} layers",
                          f"pass a number from 0 to {spec.num_layers - 1}")
    setup = TrainSetup(technique=args.technique, task=task, batch_size=args.batch_size, seq_len=args.seq_len,
                       precision="fp32" if args.cpu else args.precision, gradient_checkpointing=ckpt,
                       optimizer=args.optimizer, lora_rank=args.lora_rank, lora_targets=args.lora_targets,
                       freeze_layers=args.freeze_layers, num_labels=args.num_labels, attention=args.attention,
                       chunked_loss=args.chunked_loss, device="cpu" if args.cpu else "cuda",
                       target_len=args.target_len, grad_accum=args.grad_accum)
    if args.gpus < 1:
        raise AutoftError(f"--gpus must be 1 or more, got {args.gpus}", "pass the number of GPUs")
    world, strategy = args.gpus, args.strategy
    if world > 1 and strategy == "fsdp" and fsdp_refusal(setup):
        raise AutoftError(fsdp_refusal(setup), "pass --strategy ddp or another --technique")
    if args.trace and world > 1:
        raise AutoftError("--trace traces one process's training step, not a sharded one",
                          "drop --gpus (or pass --gpus 1) with --trace")
    est = per_gpu_estimate(spec, setup, world, strategy)
    traced = _trace(args, setup, est) if args.trace else None
    notes = list(est.notes)
    if args.seq_len > spec.max_positions:
        notes.append(f"sequence length {args.seq_len} exceeds the model's {spec.max_positions} positions")
    fits = None
    best_bs = None
    if memory is not None:
        fits = est.peak_bytes <= memory
        best_bs = max_batch_size(spec, setup, world, strategy, memory, safety=0.9)
    d = est.to_dict()
    if args.json:
        out = {"model": spec.id, "params": spec.params, "setup": setup.to_dict(), "peak_gib": d["peak_gib"],
               "breakdown_gib": d["breakdown_gib"], "notes": notes, "fits": fits,
               "gpu": gpu_name, "gpu_memory_gib": round(memory / GIB, 3) if memory else None,
               "headroom_gib": round((memory - est.peak_bytes) / GIB, 3) if memory else None,
               "max_batch_size": best_bs, "gpus": world, "strategy": strategy if world > 1 else None}
        if traced is not None:
            out["trace"] = traced
        print(json.dumps(out, indent=2))
        return 0
    ck = "on" if ckpt else "off"
    per = f", per GPU of {world} ({strategy})" if world > 1 else ""
    print(f"{spec.id} ({spec.params / 1e9:.2f}B params), {args.technique}, {task}, batch {args.batch_size} x "
          f"{args.seq_len} tokens, {setup.precision}, checkpointing {ck}, {args.optimizer}{per}")
    width = max(len(t) for t in est.breakdown_bytes)
    for term, b in est.breakdown_bytes.items():
        print(f"  {term.replace('_', ' '):<{width}}  {b / GIB:8.2f} GiB")
    print(f"  {'peak':<{width}}  {est.peak_gib:8.2f} GiB")
    if memory is not None:
        where = gpu_name or "the GPU"
        head = (memory - est.peak_bytes) / GIB
        verdict = "fits" if fits else "does NOT fit"
        print(f"{verdict} on {where} ({memory / GIB:.2f} GiB): headroom {head:+.2f} GiB; "
              f"largest batch within 90%: {best_bs}")
    for n in notes:
        print(f"note: {n}")
    if traced is not None:
        print_trace(traced)
    return 0


def _trace(args, setup, est) -> dict:
    from autoft.autotrain.trace import side_by_side, trace_memory

    return side_by_side(est, trace_memory(args.model, setup, trust_remote_code=args.trust_remote_code))


def print_trace(t: dict) -> None:
    """The traced peak beside the analytic one (tensor-level, GiB). Shared with `advise --verify`."""
    from autoft.advisor.units import GIB

    print(f"traced on fake tensors in {t['seconds']:.1f} s (autoft's own step, CUDA behaviour emulated; "
          f"peak in the {t['peak_phase']}):")
    print(f"  {'':<22}{'predicted':>10}{'traced':>10}")
    for r in t["rows"]:
        print(f"  {r['term']:<22}{r['analytic_bytes'] / GIB:10.2f}{r['traced_bytes'] / GIB:10.2f} GiB")
    print(f"  {'tensors at the peak':<22}{t['analytic_tensor_bytes'] / GIB:10.2f}"
          f"{t['traced_tensor_bytes'] / GIB:10.2f} GiB  (prediction {100 * t['difference']:+.1f}%)")
    print(f"  + CUDA context and allocator margin (not traced): {t['gpu_only_bytes'] / GIB:.2f} GiB -> "
          f"traced peak {t['traced_peak_with_gpu_terms_bytes'] / GIB:.2f} GiB")
    for n in t["notes"]:
        print(f"  trace note: {n}")
