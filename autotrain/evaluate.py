"""Metrics: classification (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix),
the majority-class baseline, perplexity, and scores of generated text against references:
ROUGE-1/2/L (rouge-score), BLEU and chrF (sacrebleu), exact match. Pure functions on plain lists
(scikit-learn, rouge-score, sacrebleu; no torch)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def validation_loss(ev: dict | None) -> float | None:
    """The loss in a `Trial.evaluate()` result: `loss` (classification) or `eval_loss` (generation)."""
    ev = ev or {}
    return ev.get("loss", ev.get("eval_loss"))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """y_true/y_pred are class ids into `labels`. Returns {accuracy, macro_f1, per_class
    {label: {precision, recall, f1, support}}, confusion_matrix (rows true, cols predicted),
    labels, examples}. Classes absent from both count as 0 in macro-F1 only if present in y_true."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    y_true, y_pred = list(map(int, y_true)), list(map(int, y_pred))
    if not y_true:
        return {"accuracy": None, "macro_f1": None, "per_class": {}, "confusion_matrix": [],
                "labels": list(labels), "examples": 0}
    # Macro-F1 over the classes that occur in the truth or the predictions (sklearn's default),
    # so a 77-class model evaluated on a 20-example slice is not scored on 57 absent classes.
    present = sorted(set(y_true) | set(y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                  "support": int(s[i])} for i in ids},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(labels),
        "examples": len(y_true),
    }


def majority_class(train_labels: Sequence[int]) -> int:
    """The most frequent class id (ties: the smallest id, so the choice is deterministic)."""
    if not train_labels:
        raise ValueError("no training labels")
    counts = Counter(int(x) for x in train_labels)
    return min(counts, key=lambda k: (-counts[k], k))


def majority_baseline(train_labels: Sequence[int], y_true: Sequence[int], labels: Sequence[str]) -> dict:
    """Predict the train split's majority class for every example: the floor a model must beat."""
    m = majority_class(train_labels)
    out = classification_metrics(y_true, [m] * len(y_true), labels)
    out["loss"] = None
    out["majority_label"] = labels[m]
    return out


def perplexity(mean_token_loss: float) -> float:
    """exp(mean cross-entropy per token, in nats); inf when it overflows."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return float("inf")


# -- multi-label -------------------------------------------------------------------------------
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))   # 0.05 .. 0.95


def multilabel_metrics(y_true: Sequence[Sequence[int]], y_pred: Sequence[Sequence[int]],
                       labels: Sequence[str]) -> dict:
    """0/1 indicator rows (one column per label). Returns {micro_f1, macro_f1, micro_precision,
    micro_recall, subset_accuracy (every label of the row right), per_label {label: {precision,
    recall, f1, support}}, labels, examples}. Macro-F1 averages the labels that occur in the truth
    or the predictions (as single-label macro_f1 does)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    y_true = [list(map(int, r)) for r in y_true]
    y_pred = [list(map(int, r)) for r in y_pred]
    if not y_true:
        return {"micro_f1": None, "macro_f1": None, "per_label": {}, "labels": list(labels), "examples": 0}
    k = len(labels)
    present = [j for j in range(k) if any(r[j] for r in y_true) or any(r[j] for r in y_pred)]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, labels=list(range(k)),
                                                 zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    return {
        "micro_f1": float(mf), "micro_precision": float(mp), "micro_recall": float(mr),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
        if present else 0.0,
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "per_label": {labels[j]: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                                  "support": int(s[j])} for j in range(k)},
        "labels": list(labels),
        "examples": len(y_true),
    }


def apply_threshold(probs: Sequence[Sequence[float]], threshold: float) -> list[list[int]]:
    return [[int(x >= threshold) for x in row] for row in probs]


def tune_threshold(y_true: Sequence[Sequence[int]], probs: Sequence[Sequence[float]], metric: str = "micro_f1",
                   grid: Sequence[float] = THRESHOLDS) -> tuple[float, float]:
    """The one decision threshold on the sigmoid outputs that maximises `metric` on these rows
    (validation), and that score. Ties go to the threshold nearest 0.5. One threshold for all
    labels: per-label thresholds on a few hundred validation rows fit the noise of rare labels."""
    best = None
    for t in grid:
        score = multilabel_metrics(y_true, apply_threshold(probs, t), [str(j) for j in range(len(y_true[0]))])[metric]
        key = (score, -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, t, score)
    return best[1], best[2]


def majority_labels(train_rows: Sequence[Sequence[int]]) -> list[int]:
    """Each label's majority value over the train rows (1 only where more than half carry it)."""
    n = len(train_rows)
    if not n:
        raise ValueError("no training rows")
    return [int(2 * sum(col) > n) for col in zip(*train_rows)]


def multilabel_baseline(train_rows: Sequence[Sequence[int]], y_true: Sequence[Sequence[int]],
                        labels: Sequence[str]) -> dict:
    """Predict each label's majority value in train for every row: the floor a model must beat."""
    m = majority_labels(train_rows)
    out = multilabel_metrics(y_true, [m] * len(y_true), labels)
    out["loss"] = None
    out["majority_labels"] = [labels[j] for j, v in enumerate(m) if v]
    return out
# -- generated text --------------------------------------------------------------------------------
# What each task is judged by, and the metric its reports lead with. Units: rouge* and exact_match
# are fractions in 0-1 (rouge-score's F-measure); bleu and chrf are sacrebleu's 0-100 scores.
TEXT_METRICS = {"summarization": ("rouge1", "rouge2", "rougeL"), "translation": ("bleu", "chrf"),
                "generation": ("rougeL", "exact_match")}
HEADLINE = {"summarization": "rougeL", "translation": "bleu", "generation": "rougeL"}


def rouge(predictions: Sequence[str], references: Sequence[str], stem: bool = True) -> dict:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1) with Porter stemming, as rouge-score
    computes them (Lin 2004; Google's reimplementation of the original Perl script). Its tokenizer
    keeps only a-z and 0-9, so the scores mean little for text in other scripts."""
    from rouge_score import rouge_scorer  # noqa: PLC0415

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(predictions, references):
        for k, v in scorer.score(r, p).items():
            sums[k] += v.fmeasure
    n = max(1, len(predictions))
    return {k: v / n for k, v in sums.items()}


def bleu_chrf(predictions: Sequence[str], references: Sequence[str], target_lang: str | None = None) -> dict:
    """Corpus BLEU (sacrebleu's 13a tokenizer; "zh"/"ja"/"ko" get their own) and chrF (character
    6-grams, beta 2), both 0-100, one reference per example (Post 2018, sacreBLEU)."""
    from sacrebleu.metrics import BLEU, CHRF  # noqa: PLC0415

    _check(predictions, references)
    tok = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}.get(target_lang or "", "13a")
    try:
        bleu = BLEU(tokenize=tok)
    except Exception:  # noqa: BLE001  (mecab tokenizers need extra packages: fall back)
        bleu = BLEU()
    refs = [list(references)]
    return {"bleu": float(bleu.corpus_score(list(predictions), refs).score),
            "chrf": float(CHRF().corpus_score(list(predictions), refs).score)}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, fold whitespace (SQuAD's answer normalisation)."""
    import re  # noqa: PLC0415
    import string  # noqa: PLC0415

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after SQuAD normalisation (0-1)."""
    _check(predictions, references)
    if not predictions:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)) / len(predictions)


def text_metrics(task: str, predictions: Sequence[str], references: Sequence[str],
                 target_lang: str | None = None) -> dict:
    """The scores `task` is judged by (TEXT_METRICS): summarization ROUGE-1/2/L, translation BLEU
    and chrF, generation (instruction tuning) ROUGE-L and exact match."""
    if task == "summarization":
        return rouge(predictions, references)
    if task == "translation":
        return bleu_chrf(predictions, references, target_lang)
    if task == "generation":
        return {"rougeL": rouge(predictions, references)["rougeL"],
                "exact_match": exact_match(predictions, references)}
    raise ValueError(f"no text metrics for task {task!r}")


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
