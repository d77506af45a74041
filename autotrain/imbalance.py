"""Class weights for an imbalanced classification loss: pure functions, no torch.

Single-label, "balanced" (scikit-learn's `compute_class_weight("balanced")`, King & Zeng 2001):
    w_c = n_rows / (n_classes * rows_c)
so every class carries the same total weight; `Trial(class_weights=w)` passes it to
`cross_entropy(weight=w)`, whose mean divides by the summed weights of the batch's targets.

Multi-label, "balanced": each label is its own yes/no problem, weighted the same way, which for
`binary_cross_entropy_with_logits(pos_weight=...)` is one number per label:
    pos_weight_l = negatives_l / positives_l
capped at POS_WEIGHT_CAP: a label seen 11 times in 5,000 rows (GoEmotions' `grief`) would get 454,
and one such batch would swamp the gradient.

Which mode a run uses is the advisor's decision (rules WEIGHT-*, `--class-weights auto|balanced|none`);
this module only does the arithmetic.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

MODES = ("balanced", "none")
POS_WEIGHT_CAP = 100.0


def label_counts(bundle: Any, label_names: Sequence[str] | None = None) -> list[int]:
    """Train rows per class (multi-label: rows carrying each label), in `label_names` order."""
    names = list(label_names or bundle.label_names)
    train = bundle.splits["train"]
    if getattr(bundle, "multi_label", False):
        c = Counter(l for r in train for l in r["labels"])
    else:
        c = Counter(str(r["label"]) for r in train)
    return [c.get(n, 0) for n in names]


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """n / (k * count_c) per class; a class with no rows gets 0 (it is never a target)."""
    n, k = sum(counts), len(counts)
    if n <= 0 or k == 0:
        raise ValueError("no training rows to weigh")
    return [round(n / (k * c), 6) if c > 0 else 0.0 for c in counts]


def pos_weights(positives: Sequence[int], n_rows: int, cap: float = POS_WEIGHT_CAP) -> list[float]:
    """negatives / positives per label, at most `cap` (a label that never occurs gets `cap`)."""
    if n_rows <= 0:
        raise ValueError("no training rows to weigh")
    return [round(min(cap, (n_rows - p) / p), 6) if p > 0 else float(cap) for p in positives]


def class_weights(bundle: Any, mode: str, label_names: Sequence[str] | None = None) -> list[float] | None:
    """The weights `Trial(class_weights=...)` takes for `mode` ("balanced" or "none" -> None)."""
    if mode not in MODES:
        raise ValueError(f"unknown class-weight mode {mode!r}; use one of {MODES}")
    if mode == "none":
        return None
    counts = label_counts(bundle, label_names)
    if getattr(bundle, "multi_label", False):
        return pos_weights(counts, len(bundle.splits["train"]))
    return balanced_weights(counts)


def imbalance_ratio(counts: Sequence[int]) -> float | None:
    """Largest over smallest non-zero count (the profile's `imbalance_ratio`), None if none."""
    nz = [c for c in counts if c > 0]
    return round(max(nz) / min(nz), 2) if nz else None
