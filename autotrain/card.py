"""The model card: README.md with Hub metadata (YAML front matter) next to the saved model.

Metadata through huggingface_hub's `ModelCardData` (the Hub's own schema): base_model,
library_name (peft for an adapter, transformers for full weights), tags, datasets, metrics,
pipeline_tag and a model-index with the test results. `base_model` and `datasets` must be Hub
ids: a local path is left out of the metadata (and named in the text instead), so that the Hub
does not reject the card.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub id (owner/name) and is not a local path, else None."""
    if not name or os.path.exists(name) or not _HUB_ID.match(name):
        return None
    return name


def base_model_id(model: str) -> str | None:
    """The Hub id of the base model: the id itself, or for a local folder the `_name_or_path`
    its config.json records when that is a Hub id."""
    hid = hub_id(model)
    if hid:
        return hid
    try:  # the packaged demo model knows its own Hub id
        from autoft.autotrain.demo import DEMO_MODEL, demo_model_path  # noqa: PLC0415

        if Path(model).resolve() == Path(demo_model_path()).resolve():
            return DEMO_MODEL
    except Exception:  # noqa: BLE001  (demo package absent: not the demo model)
        pass
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        try:
            return hub_id(json.loads(cfg.read_text(encoding="utf-8")).get("_name_or_path"))
        except (OSError, ValueError):
            return None
    return None


def _is_adapter(technique: str) -> bool:
    """The technique trains an adapter (peft) on a frozen base."""
    from autoft.autotrain.techniques import TECHNIQUES  # noqa: PLC0415

    info = TECHNIQUES.get(technique)
    return bool(info and info.peft)
# metrics.json key -> the Hub's metric type (https://huggingface.co/docs/hub/model-cards#evaluation-results)
HUB_METRIC = {"accuracy": "accuracy", "macro_f1": "f1", "micro_f1": "f1", "eval_loss": "loss", "perplexity": "perplexity",
              "rouge1": "rouge", "rouge2": "rouge", "rougeL": "rouge", "bleu": "bleu", "chrf": "chrf",
              "exact_match": "exact_match"}


def card_metric_keys(task: str, test: dict | None = None) -> list[tuple[str, str]]:
    """(metrics.json key, Hub metric type) of the figures a card reports for `task`: the
    generated-text scores (evaluate.TEXT_METRICS) before the loss for the generative tasks;
    instruction tuning's text scores only when the run measured them."""
    from autoft.autotrain.evaluate import TEXT_METRICS  # noqa: PLC0415

    if task == "classification":  # multi-label runs report micro-F1 instead of accuracy
        keys = ["micro_f1", "macro_f1"] if "micro_f1" in (test or {}) else ["accuracy", "macro_f1"]
    elif task == "generation":
        keys = [k for k in TEXT_METRICS["generation"] if (test or {}).get(k) is not None] + ["eval_loss", "perplexity"]
    else:
        keys = list(TEXT_METRICS.get(task, ())) + ["eval_loss"]
    return [(k, HUB_METRIC[k]) for k in keys]


def pipeline_tag_for(task: str, family: str | None) -> str:
    """The Hub pipeline a fine-tuned model runs in: an encoder-decoder summarizes or translates
    (pipeline("summarization")); a decoder fine-tuned for either still generates text."""
    if task == "classification":
        return "text-classification"
    if task in ("summarization", "translation") and family == "encoder-decoder":
        return task
    return "text-generation"


def card_text(rec: dict, metrics: dict, data_name: str, command: str, label_names=None) -> str:
    from huggingface_hub import EvalResult, ModelCardData  # noqa: PLC0415

    model = rec["model"]["id"] if isinstance(rec.get("model"), dict) else str(rec.get("model"))
    technique = rec.get("technique", "?")
    merged = bool(metrics.get("merged"))
    adapter = _is_adapter(technique) and not merged
    task = metrics.get("task", "classification")
    family = (rec.get("model") or {}).get("family") if isinstance(rec.get("model"), dict) else None
    pipeline_tag = pipeline_tag_for(task, family)
    base = base_model_id(model)
    dataset = hub_id(data_name)
    test = metrics.get("test") or {}
    multi = "micro_f1" in test          # multi-label classification
    metric_keys = card_metric_keys(task, test)
    evals = [EvalResult(task_type=pipeline_tag, dataset_type=dataset or "custom", dataset_name=data_name,
                        dataset_split="test", metric_type=hub_name, metric_value=round(float(test[k]), 4),
                        metric_name=k)
             for k, hub_name in metric_keys if isinstance(test.get(k), (int, float))]
    name = f"{(base or Path(model).name).split('/')[-1]}-autoft-{technique}"
    data = ModelCardData(base_model=base, library_name="peft" if adapter else "transformers",
                         tags=["autoft", technique, pipeline_tag] + (["peft"] if adapter else []),
                         datasets=[dataset] if dataset else None,
                         metrics=list(dict.fromkeys(h for _, h in metric_keys)), pipeline_tag=pipeline_tag,
                         model_name=name, eval_results=evals or None)
    cfg = metrics.get("config") or {}
    base_line = f"[{base}](https://huggingface.co/{base})" if base else f"`{model}` (local)"
    lines = ["---", data.to_yaml(), "---", "", f"# {name}", "",
             f"{technique} fine-tune of {base_line} for {task} on {data_name}, trained with autoft "
             "(successive-halving hyperparameter search, then a final fine-tune with early stopping).", ""]
    lines += ["## Results (test split)", "", "| metric | fine-tuned | baseline |", "|---|---:|---:|"]
    baseline = metrics.get("baseline") or {}
    for k, _ in metric_keys:
        if k in test:
            lines.append(f"| {k} | {_fmt(test.get(k))} | {_fmt(baseline.get(k))} |")
    lines += ["", "Baseline: " + ("each label's majority value in the train split, predicted for every example."
                                   if multi else "the majority class of the train split, predicted for every example."
                                   if task == "classification" else "the base model before fine-tuning."), ""]
    if multi:
        lines += [f"Multi-label: apply a sigmoid to each logit; a label is on where it is at least "
                  f"{_fmt(test.get('threshold'))} (tuned on validation; also in `labels.json`).", ""]
    if any(k in ("rouge1", "rougeL", "bleu") for k, _ in metric_keys):
        lines += ["ROUGE and exact match are fractions (0-1, rouge-score with stemming); BLEU and chrF are "
                  "sacreBLEU's 0-100 scores; all from greedy generation on the test split"
                  + (f" ({test.get('examples')} examples)." if test.get("examples") else "."), ""]
    lines += ["## Training", "",
              f"- technique: {technique}; learning rate {_fmt(cfg.get('learning_rate'))}, "
              f"weight decay {_fmt(cfg.get('weight_decay'))}"
              + (f", LoRA r {cfg.get('lora_r')}, alpha {cfg.get('lora_alpha')}, dropout {cfg.get('lora_dropout')}"
                 if _is_adapter(technique) else ""),
              f"- batch: {rec.get('batch_size')} x {rec.get('gradient_accumulation_steps', 1)} accumulation; "
              f"sequence length {rec.get('seq_len')} tokens; precision {metrics.get('precision', rec.get('precision'))}",
              f"- steps: {metrics.get('final_steps')} of {metrics.get('planned_steps')} planned (linear decay, "
              f"best validation at step {metrics.get('best_step')}); {_fmt(metrics.get('train_seconds'))} s "
              f"training, {_fmt(metrics.get('search_seconds'))} s search",
              f"- seed {metrics.get('seed')}; reproduce with:", "", "```", command, "```", ""]
    lines += ["## Use", "", "```python"]
    if adapter:
        auto = ("AutoModelForSequenceClassification" if task == "classification" else
                "AutoModelForSeq2SeqLM" if family == "encoder-decoder" else "AutoModelForCausalLM")
        lines += ["from peft import PeftModel", f"from transformers import {auto}, AutoTokenizer", "",
                  f"base = {auto}.from_pretrained({(base or model)!r}"
                  + (f", num_labels={len(label_names)})" if task == "classification" and label_names else ")"),
                  "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")"]
    else:
        lines += ["from transformers import pipeline", "",
                  f"pipe = pipeline({pipeline_tag!r}, model=\"path/to/this/folder\")"]
    lines += ["```", "", "Files: `metrics.json` (all figures), `trials.jsonl` (every search trial), "
              "`report.md` (plots), `recommendation.json` (why this model and setup).", ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def write_card(out_dir, rec: dict, metrics: dict, bundle=None, data_name: str = "custom", command: str = "") -> Path:
    labels = getattr(bundle, "label_names", None) if bundle is not None else None
    path = Path(out_dir) / "README.md"
    path.write_text(card_text(rec, metrics, data_name, command, labels), encoding="utf-8")
    return path
