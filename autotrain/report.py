"""`report.md` with PNG plots (matplotlib, Agg backend: no display needed).

plots/search.png: each trial's validation metric at the end of each rung it reached (x: its
cumulative optimizer steps), one line per trial, the winner highlighted, failed trials marked.
plots/final.png: the final run's training loss and validation loss by step (validation metric
on a second axis).
"""
from __future__ import annotations

from pathlib import Path

from autoft.autotrain.evaluate import validation_loss


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_search(records: list[dict], path: Path, best_trial: int | None = None, metric: str = "metric") -> Path | None:
    if not records:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_trial: dict[int, list[dict]] = {}
    for r in records:
        by_trial.setdefault(r["trial"], []).append(r)
    for t, rs in sorted(by_trial.items()):
        rs = sorted(rs, key=lambda r: r["rung"])
        ok = [r for r in rs if r.get("metric") is not None]
        lr = (rs[0].get("config") or {}).get("learning_rate")
        label = f"trial {t}" + (f" (lr {lr:.2g})" if isinstance(lr, float) else "")
        if ok:
            style = dict(lw=2.5, color="black", zorder=3) if t == best_trial else dict(lw=1, alpha=0.8)
            ax.plot([r["steps"] for r in ok], [r["metric"] for r in ok], "o-", label=label, **style)
        for r in rs:
            if r.get("metric") is None:
                ax.plot([r["steps"]], [0], "x", color="red")
                ax.annotate(f"{t}: {r.get('status')}", (r["steps"], 0), fontsize=7, color="red")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer steps trained (cumulative, log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Successive-halving search: validation metric by rung")
    ax.grid(alpha=0.3)
    if len(by_trial) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_final(history: dict, path: Path, metric: str = "metric") -> Path | None:
    train = [h for h in history.get("train", []) if isinstance(h.get("loss"), (int, float))]
    val = history.get("validation", [])
    if not train and not val:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot([h["step"] for h in train], [h["loss"] for h in train], label="training loss", lw=1)
    vl = [h for h in val if isinstance(h.get("loss"), (int, float))]
    if vl:
        ax.plot([h["step"] for h in vl], [h["loss"] for h in vl], "o-", label="validation loss")
    if history.get("start_step"):
        ax.axvline(history["start_step"], color="grey", ls=":", lw=1, label="search winner continued (decay starts)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    vm = [h for h in val if isinstance(h.get(metric), (int, float)) and metric not in ("loss", "eval_loss")]
    if vm:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in vm], [h[metric] for h in vm], "s--", color="tab:green",
                 label=f"validation {metric}")
        ax2.set_ylabel(f"validation {metric}")
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Final fine-tune")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def write_report(out_dir, rec: dict, metrics: dict, records: list[dict], history: dict,
                 search: dict | None, command: str, warnings: list[str] | None = None) -> Path:
    out = Path(out_dir)
    metric = metrics.get("metric", "metric")
    best_trial = metrics.get("best_trial")
    p_search = plot_search(records, out / "plots" / "search.png", best_trial, metric)
    p_final = plot_final(history, out / "plots" / "final.png", metric)
    model = rec["model"]["id"] if isinstance(rec.get("model"), dict) else rec.get("model")
    lines = ["# autoft run report", "", f"- model: `{model}`", f"- technique: {rec.get('technique')}",
             f"- task: {metrics.get('task')}; selection metric: validation {metric}",
             f"- search: {_fmt(metrics.get('search_seconds'))} s; final fine-tune: "
             f"{_fmt(metrics.get('train_seconds'))} s ({metrics.get('final_steps')} steps, "
             f"{_fmt(metrics.get('train_samples_per_second'))} samples/s)"]
    if metrics.get("continued_from_step"):
        lines.append(f"- the final run continued the search's trial {best_trial} from its checkpoint at step "
                     f"{metrics['continued_from_step']} (constant learning rate so far), with linear decay to 0 "
                     f"at step {metrics.get('planned_steps')}: those {metrics['continued_from_step']} steps were "
                     "not trained again")
    lines.append("")
    lines += ["## Test results", "", "| metric | fine-tuned | baseline |", "|---|---:|---:|"]
    test, base = metrics.get("test") or {}, metrics.get("baseline") or {}
    for k in ("accuracy", "micro_f1", "macro_f1", "subset_accuracy", "rouge1", "rouge2", "rougeL", "bleu", "chrf",
              "exact_match", "loss", "eval_loss", "perplexity"):
        if isinstance(test.get(k), (int, float)):
            lines.append(f"| {k} | {_fmt(test.get(k))} | {_fmt(base.get(k))} |")
    lines.append("")
    lines += text_metrics_note(metrics)
    lines += time_lines(metrics.get("budget"))
    reasons = rec.get("reasons") or []
    if reasons:
        lines += ["## Why this setup", ""]
        lines += [f"- {r.get('rule', '')}: {r.get('because', '')}" if isinstance(r, dict) else f"- {r}" for r in reasons]
        lines.append("")
    if search:
        lines += ["## Search", "",
                  f"{len(search.get('configs', []))} configurations, rungs "
                  + ", ".join(f"{_reached(records, i, r)} x {r['budget_steps']} steps"
                              for i, r in enumerate(search.get("rungs", [])))
                  + f". Best: trial {search.get('best_trial')} (validation {metric} {_fmt(search.get('best_metric'))})"
                  + (" - stopped by the time budget." if search.get("stopped_by_time") else "."),
                  "",
                  _promotion_sentence(search, metric), "", _where_sentence(search), ""]
        if p_search:
            lines += [f"![search](plots/{p_search.name})", ""]
        lines += [f"| trial | rung | steps | learning rate | other knobs | {metric} | validation loss | status | s |",
                  "|---:|---:|---:|---:|---|---:|---:|---|---:|"]
        for r in sorted(records, key=lambda r: (r["rung"], r["trial"])):
            cfg = r.get("config") or {}
            other = ", ".join(f"{k} {v}" for k, v in cfg.items()
                              if k in ("lora_r", "lora_dropout", "weight_decay", "layer_decay", "warmup_ratio"))
            lines.append(f"| {r['trial']} | {r['rung'] + 1} | {r['steps']} | {_fmt(cfg.get('learning_rate'))} | "
                         f"{other} | {_fmt(r.get('metric'))} | {_fmt(validation_loss(r.get('eval')))} | "
                         f"{r.get('status')} | {_fmt(r.get('seconds'))} |")
        lines.append("")
    lines += ["## Final fine-tune", "", "Configuration: `" + ", ".join(f"{k}={v}" for k, v in
                                                                        (metrics.get("config") or {}).items()) + "`", ""]
    if metrics.get("stopped_early"):
        lines += [f"Stopped early; best validation at step {metrics.get('best_step')} (those weights were kept).", ""]
    if p_final:
        lines += [f"![final](plots/{p_final.name})", ""]
    per_class = test.get("per_class") or test.get("per_label")   # per_label: multi-label
    if isinstance(per_class, dict) and per_class:
        what = "label" if "per_label" in test else "class"
        if isinstance(test.get("threshold"), (int, float)):
            lines += [f"Multi-label: a label is predicted where its sigmoid output is at least "
                      f"{_fmt(test['threshold'])} (tuned on validation).", ""]
        lines += [f"### Per {what} (test)", "", f"| {what} | precision | recall | f1 | support |",
                  "|---|---:|---:|---:|---:|"]
        for name, m in per_class.items():
            lines.append(f"| {name} | {_fmt(m.get('precision'))} | {_fmt(m.get('recall'))} | {_fmt(m.get('f1'))} | "
                         f"{m.get('support', '-')} |")
        lines.append("")
    lines += sample_lines(metrics.get("samples") or [])
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += ["## Reproduce", "", "```", command, "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


PHASE_NAMES = {"spent": "before the plan (probe, loading)", "search": "search", "final": "final fine-tune",
               "evaluation": "evaluation", "save": "saving"}


def time_lines(budget: dict | None) -> list[str]:
    """The time plan (--time-budget) as predicted before training and as it ran, per phase."""
    if not budget or not budget.get("phases"):
        return []
    limit = budget.get("budget_s")
    replanned = bool(budget.get("replans"))
    head = f"## Time ({'budget ' + _fmt(limit) + ' s' if limit else 'no budget'})"
    lines = [head, "", f"Plan: {budget.get('text', '')}."]
    if budget.get("replanned_text"):
        # a re-plan describes only what was left at that point
        lines.append(f"Last re-plan ({budget['replans']} in all): {budget['replanned_text']}.")
    lines += ["", "| phase | predicted (s) |" + (" re-planned (s) |" if replanned else "") + " actual (s) |",
              "|---|---:|" + ("---:|" if replanned else "") + "---:|"]
    for k, v in budget["phases"].items():
        actual = v.get("actual_s")
        lines.append(f"| {PHASE_NAMES.get(k, k)} | {_fmt(v.get('predicted_s'))} |"
                     + (f" {_fmt(v.get('replanned_s'))} |" if replanned else "")
                     + (f" {_fmt(actual)} |" if actual is not None else " (after this report) |"))
    lines.append(f"| total | {_fmt(budget.get('predicted_total_s'))} |"
                 + (f" {_fmt(budget.get('replanned_total_s'))} |" if replanned else "")
                 + f" {_fmt(budget.get('actual_total_s'))} so far |")
    return lines + [""]


def text_metrics_note(metrics: dict) -> list[str]:
    """Report lines saying how the generated-text scores were measured (none when there are none)."""
    test = metrics.get("test") or {}
    if not any(isinstance(test.get(k), (int, float)) for k in ("rouge1", "rougeL", "bleu", "chrf")):
        return []
    how = (f"Greedy generation on {test.get('examples', '?')} test examples, at most "
           f"{test.get('max_new_tokens', '?')} new tokens each ({_fmt(test.get('seconds'))} s); the baseline "
           "is the base model, generating the same way before fine-tuning. ROUGE and exact match are fractions "
           "(0-1, rouge-score with stemming), BLEU and chrF sacreBLEU's 0-100 scores. The search ranked trials "
           f"by validation {metrics.get('metric', 'loss')}, which is cheap; these scores are the test's.")
    return [how, ""]


def sample_lines(samples: list[dict]) -> list[str]:
    """Sample outputs: instruction tuning's prompt and output; summarization's and translation's
    source, reference, output and (when measured) the base model's output."""
    lines: list[str] = []
    for s in samples:
        if "source" in s:
            lines += [f"**Source:** {s['source']}", "", f"**Reference:** {s.get('reference', '')}", "",
                      f"**Fine-tuned:** {s.get('output', '')}", ""]
            if s.get("base_output") is not None:
                lines += [f"**Base model:** {s['base_output']}", ""]
        else:
            lines += [f"**Prompt:** {s['prompt']}", "", f"**Output:** {s['output']}", ""]
    if lines:
        lines = ["### Sample outputs (test)", ""] + lines
    return lines


def _promotion_sentence(search: dict, metric: str) -> str:
    by = search.get("promote_by") or "loss"
    if by == "loss" and metric not in ("loss", "eval_loss"):
        return (f"Trials moved up a rung by validation loss (it already separates trials while {metric} "
                f"is still at chance); the last rung's winner was chosen by validation {metric}.")
    return f"Trials moved up a rung and the winner was chosen by validation {metric}."


def _reached(records: list[dict], index: int, rung: dict) -> int:
    """Trials that trained in a rung: the plan's count on the local backend; on Ray's asynchronous
    scheduler it depends on the order trials finished in, so count the records."""
    n = len({r["trial"] for r in records if r.get("rung") == index})
    return n or rung["n_trials"]


def _where_sentence(search: dict) -> str:
    n = search.get("trials_at_once") or 1
    return (f"Trials ran on the {search.get('backend') or 'local'} backend ({search.get('scheduler')}), "
            + ("one at a time." if n == 1 else f"up to {n} trials at once."))
