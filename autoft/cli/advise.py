"""`autoft advise`: which model, technique, batch size and sequence length, whether it fits, and why."""
from __future__ import annotations

HELP = "recommend a model, technique and batch size for your data and GPU, with the reasons"
EXAMPLES = """\
  autoft advise --data train.csv --gpu T4             # what to fine-tune on a 16 GB T4, and why
  autoft advise --task generation --data-size 5000 --gpu A100-40GB
  autoft advise --task classification --language de --data-size 2000 --gpu cpu
  autoft advise --task classification --domain biomedical --data-size 8000 --gpu L4
  autoft advise --task translation --source-lang en --target-lang de --data-size 3000 --gpu T4
  autoft advise --data ./dialogsum/ --gpu T4            # document/summary columns: summarization
  autoft advise --model mistralai/Mistral-7B-v0.3 --technique lora --gpu T4
                                                      # refused: does not fit; suggests QLoRA
  autoft advise --model Qwen/Qwen2.5-7B-Instruct --batch-size 16 --gpu-memory 24GiB --force
  autoft advise --data ./mydata --json > recommendation.json   # the JSON `autoft run` reads
  autoft advise --data train.csv --gpu cpu --measure  # time a few real steps here: time per epoch
  autoft advise --task generation --data-size 5000 --gpu T4 --verify   # trace the plan's memory first
"""

_BAR = 28


def add_arguments(parser) -> None:
    from autoft.cli._flags import add_data_flags, add_question_flags

    g = parser.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="training data (CSV, JSONL, Parquet, a folder or a "
                   "saved dataset): fills in the task, size, labels, language and token lengths")
    add_data_flags(g)
    add_question_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the recommendation as JSON "
                        "(documented in docs/advise-json.md)")
    parser.add_argument("--measure", action="store_true", help="time a few optimizer steps of the "
                        "recommended setting on this machine with the model and --data (the model must "
                        "be on disk or in the Hugging Face cache): the time per epoch is then measured, "
                        "not predicted; on 2 CPU cores about 20 s for MiniLM (22M), about 4 min for SmolLM2-135M "
                        "at 4 x 4 (4 steps and 32 evaluation examples)")
    parser.add_argument("--verify", action="store_true", help="before answering, trace the recommended "
                        "setting's training step on fake tensors (autoft's own code, no GPU, no weights) and "
                        "print its measured peak beside the prediction, with how long the trace took: a few "
                        "seconds to a minute on 2 CPU cores (needs torch and transformers)")


def _load(args):
    from autoft.autotrain.data import load_data

    from autoft.cli._flags import data_column_kwargs, data_language_kwargs

    return load_data(args.data, task=args.task, **data_column_kwargs(args), **data_language_kwargs(args))


def _profile_fields(args) -> tuple[dict, list[str]]:
    """Question fields and warnings from --data (the data layer imports no torch)."""
    from autoft.autotrain.data import build_profile

    profile = build_profile(_load(args))
    return profile.to_question_fields(), list(profile.warnings)


def _measure(args, rec) -> dict:
    """--measure: the recommended setting's speed, timed on this machine (torch from here on)."""
    from autoft.errors import AutoftError

    if not getattr(args, "data", None):
        raise AutoftError("--measure times real steps on your data", "pass --data PATH")
    gpu = rec.gpu
    if gpu["kind"] == "gpu" and gpu["source"] != "probe":
        raise AutoftError(f"--measure times this machine, but the plan is for {gpu['name']}",
                          "leave out --gpu/--gpu-memory (or pass --gpu cpu) to measure here")
    from autoft.autotrain.probe import measure_recommendation

    return measure_recommendation(rec.to_dict(), _load(args), device="cpu" if gpu["kind"] == "cpu" else "cuda")


def _verify(rec) -> dict:
    """--verify: the recommended setting traced on fake tensors, beside its prediction (one process)."""
    from autoft.errors import AutoftError

    if rec.strategy and (rec.gpu.get("count") or 1) > 1:
        raise AutoftError("--verify traces one process's training step, not a sharded one",
                          "drop --gpus (plan for one GPU) with --verify")
    from autoft.advisor.memory import estimate
    from autoft.autotrain.trace import side_by_side, trace_memory

    spec, setup = rec.spec, rec.train_setup()
    return side_by_side(estimate(spec, setup), trace_memory(spec, setup))


def build_question(args):
    """The Question from the flags, with unset fields filled in from --data."""
    from autoft.cli._flags import question_from_args

    data_warnings: list[str] = []
    facts: dict = {}
    if getattr(args, "data", None):
        facts, data_warnings = _profile_fields(args)
    else:
        from autoft.cli._flags import data_column_kwargs

        if data_column_kwargs(args):
            from autoft.errors import AutoftError

            raise AutoftError("the column flags (--text-column, ...) need --data", "pass --data PATH")
    return question_from_args(args, facts), data_warnings


def run(args) -> int:
    import json
    import os
    import sys

    from autoft.advisor.recommend import advise

    question, data_warnings = build_question(args)
    rec = advise(question)
    rec.warnings = list(dict.fromkeys(data_warnings + rec.warnings))
    if getattr(args, "measure", False):
        rec.speed = _measure(args, rec)
    verified = _verify(rec) if getattr(args, "verify", False) else None
    if args.json:
        text = json.dumps({**rec.to_dict(), **({"verify": verified} if verified else {})}, indent=2)
    else:
        text = render(rec) + ("\n" + _trace_text(verified) if verified else "")
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `autoft advise | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ---------------------------------------------------------------------------------------------
# Human output
# ---------------------------------------------------------------------------------------------

def _trace_text(verified: dict) -> str:
    import contextlib
    import io

    from autoft.cli.estimate import print_trace

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_trace(verified)
    return buf.getvalue().rstrip()


def _params(n: int) -> str:
    from autoft.advisor.units import fmt_params

    return fmt_params(n)


def _bar(gib: float, scale: float) -> str:
    n = 0 if scale <= 0 else min(_BAR, round(gib / scale * _BAR))
    if gib > 0 and n == 0:
        return "▏"
    return "█" * n


def _most(n: int) -> str:
    from autoft.advisor.recommend import MAX_BATCH_SEARCH

    return f"{n}+" if n >= MAX_BATCH_SEARCH else str(n)


def _setting_line(d: dict) -> str:
    ck = ", checkpointing" if d["gradient_checkpointing"] else ""
    st = f", {d['strategy']}" if d.get("strategy") else ""
    return (f"{d['technique']:<6} {d['batch_size']} x {d['gradient_accumulation_steps']} "
            f"(= {d['effective_batch_size']}), {d['seq_len']} tokens, {d['precision']}{ck}{st}")


def _speed_lines(sp: dict | None, data_size: int | None) -> list[str]:
    """The predicted (or measured) speed: examples/s, seconds per step, time per epoch, and what
    it assumes."""
    from autoft.advisor.speed import fmt_duration

    if not sp:
        return ["  speed          not predicted: no throughput figures for this GPU (rules/gpus.toml)"]
    how = "measured" if sp.get("method") == "probe" else "predicted"
    line = f"  speed          about {sp['examples_per_s']:.3g} examples/s {how}, {sp['step_s']:.3g} s per optimizer step"
    if sp.get("epoch_s") is not None:
        line += f", {fmt_duration(sp['epoch_s'])} per epoch of {data_size:,} examples" if data_size else ""
    out = [line, f"                 {sp['tokens_assumed']}; {sp['assumption']}"]
    if sp.get("method") != "probe" and str(sp.get("device", "")).startswith("CPU"):
        out.append("                 (rough on a CPU: --measure times real steps here)")
    return out


def render(rec) -> str:
    d = rec.to_dict()
    m, gpu, est = d["model"], d["gpu"], d["estimate"]
    q = d.get("question") or {}
    out: list[str] = []
    situation = [d["task"]]
    if q.get("data_size") is not None:
        situation.append(f"{q['data_size']:,} examples")
    if d.get("num_labels"):
        situation.append(f"{d['num_labels']} labels")
    if q.get("source_lang") and d["task"] == "translation":
        situation.append(f"{q['source_lang']} -> {q.get('target_lang')}")
    else:
        situation.append(f"language {q.get('language', 'en')}")
    if q.get("domain", "general") != "general":
        situation.append(f"domain {q['domain']}")
    where = (f"{gpu['name']} ({gpu['memory_gib']:.1f} GiB{', bf16' if gpu['bf16'] else ''}"
             + (f", x{gpu['count']}" if gpu.get("count", 1) > 1 else "") + ")"
             if gpu["kind"] == "gpu" else f"CPU ({gpu['cpu_cores']} cores, {gpu['memory_gib']:.1f} GiB RAM)")
    out.append(f"autoft advise: {', '.join(situation)}; planned for {where}")
    out.append("")
    langs = ",".join(m.get("languages", []))
    doms = ",".join(m.get("domains", []))
    gated = ", gated" if m.get("gated") else ""
    out.append(f"  model          {m['id']}  ({_params(m['params'])} params, {m['family']}, {langs}, "
               f"{doms}, licence {m.get('licence', 'unknown')}{gated})")
    names = {"full": "full fine-tuning", "freeze": "freeze", "lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base)"}
    tech = names.get(d["technique"], d["technique"])
    if d["technique"] == "freeze" and d.get("freeze_layers") is not None:
        tech += f" (bottom {d['freeze_layers']} of {m['num_layers']} layers frozen)"
    out.append(f"  technique      {tech}")
    world = d.get("world_size") or 1
    procs = f" x {world} {'GPUs' if gpu['kind'] == 'gpu' else 'processes'}" if world > 1 else ""
    out.append(f"  batch          {d['batch_size']} per step x {d['gradient_accumulation_steps']} accumulation{procs}"
               f" = {d['effective_batch_size']} examples per optimizer step"
               + f"  (largest micro-batch that fits: {_most(d['max_batch_size'])})")
    if d.get("strategy"):
        how = {"ddp": "DDP, a full replica per GPU", "fsdp": "FSDP, full shard"}[d["strategy"]]
        out.append(f"  processes      {world} ({how}); memory below is per GPU")
    if d.get("target_len") and d["model"].get("family") == "encoder-decoder":
        out.append(f"  sequence       {d['seq_len']} source tokens (encoder), {d['target_len']} target tokens (decoder)")
    elif d.get("target_len"):
        out.append(f"  sequence       {d['seq_len']} tokens: instruction, source and target "
                   f"(targets up to {d['target_len']} tokens)")
    else:
        out.append(f"  sequence       {d['seq_len']} tokens")
    out.append(f"  precision      {d['precision']}    gradient checkpointing "
               f"{'on' if d['gradient_checkpointing'] else 'off'}    optimizer {d['optimizer']}")
    out += _speed_lines(d.get("speed"), q.get("data_size"))
    if d.get("lora"):
        lo = d["lora"]
        tm = lo["target_modules"] if isinstance(lo["target_modules"], str) else ",".join(lo["target_modules"])
        out.append(f"  LoRA           r {lo['r']}, alpha {lo['alpha']}, dropout {lo['dropout']}, targets {tm}")
    if d.get("metric"):
        weights = "class-weighted loss (balanced)" if d.get("class_weights") == "balanced" else "unweighted loss"
        out.append(f"  objective      {weights}; the search ranks by validation {d['metric']}")
    ss = d.get("search_space") or {}
    if ss:
        parts = []
        for k, v in ss.items():
            if k == "learning_rate":
                parts.append(f"lr {v[0]:.0e}..{v[1]:.0e}")
            elif len(v) == 2 and k not in ("lora_rank", "lora_dropout", "model_dropout"):
                parts.append(f"{k.replace('_', ' ')} {v[0]:g}..{v[1]:g}")
            else:
                parts.append(f"{k.replace('_', ' ')} {{{', '.join(f'{x:g}' for x in v)}}}")
        out.append(f"  search space   {'; '.join(parts)}")
    out.append("")
    budget = d["memory_gib"] * d["safety"]
    verdict = "fits" if d["fits"] else "DOES NOT FIT"
    out.append(f"  memory         {est['peak_gib']:.2f} GiB predicted peak, budget {budget:.1f} GiB "
               f"({int(d['safety'] * 100)}% of {d['memory_gib']:.1f} GiB): {verdict}")
    scale = max(d["memory_gib"], est["peak_gib"])
    w = max(18, *(len(t) for t in est["breakdown_gib"]))
    for term, gib in est["breakdown_gib"].items():
        if gib <= 0:
            continue
        out.append(f"    {term.replace('_', ' '):<{w}} {gib:7.2f} GiB  {_bar(gib, scale)}")
    out.append(f"    {'total':<{w}} {est['peak_gib']:7.2f} GiB  {_bar(est['peak_gib'], scale):<{_BAR}}|"
               f" {d['memory_gib']:.1f} GiB")
    out.append("")
    out.append("  why")
    for r in d["reasons"]:
        out.append(f"    {r['rule']:<11} {r['because']}")
    if d["alternatives"]:
        out.append("")
        out.append("  alternatives")
        for i, a in enumerate(d["alternatives"], 1):
            fit = "fits" if a["fits"] else "does not fit"
            out.append(f"    {i}. {a['model']['id']} ({_params(a['model']['params'])}): {_setting_line(a)}; "
                       f"{a['estimate']['peak_gib']:.2f} GiB, {fit}  [{a['note']}]")
    if d["warnings"]:
        out.append("")
        out.append("  warnings")
        for w in d["warnings"]:
            out.append(f"    ! {w}")
    return "\n".join(out)
