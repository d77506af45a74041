"""Regenerate the built-in demo data (train.csv, validation.csv, test.csv in this folder) from the
banking77 copy in ../shared/data/banking77 (CC BY 4.0; see README.md).

    python autotrain/demo_data/make_demo.py [/path/to/banking77]

Deterministic: fixed intents, rows sorted by text before a seeded shuffle, seed 42. train and
validation come from banking77's train split (60 + 15 rows per intent, disjoint), test from its
official test split (30 rows per intent).
"""
from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

INTENTS = [  # ten clearly different intents, each with >= 75 train and 40 test rows in banking77
    "activate_my_card", "apple_pay_or_google_pay", "cancel_transfer", "card_arrival",
    "country_support", "exchange_rate", "card_linking", "pending_top_up",
    "request_refund", "visa_or_mastercard",
]
PER_INTENT = {"train": 60, "validation": 15, "test": 30}
SEED = 42


def _read(path: Path) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_label.setdefault(row["label"], []).append(row["text"])
    return by_label


def main(src: Path, dst: Path) -> None:
    train_src, test_src = _read(src / "train.csv"), _read(src / "test.csv")
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in PER_INTENT}
    for intent in INTENTS:
        rng = random.Random(f"{SEED}-{intent}")
        pool = sorted(set(train_src[intent]))
        rng.shuffle(pool)
        n_tr, n_va = PER_INTENT["train"], PER_INTENT["validation"]
        assert len(pool) >= n_tr + n_va, (intent, len(pool))
        out["train"] += [(t, intent) for t in pool[:n_tr]]
        out["validation"] += [(t, intent) for t in pool[n_tr:n_tr + n_va]]
        seen = set(pool[:n_tr + n_va])
        test_pool = sorted(set(test_src[intent]) - seen)      # no train/test overlap in the demo
        rng.shuffle(test_pool)
        assert len(test_pool) >= PER_INTENT["test"], (intent, len(test_pool))
        out["test"] += [(t, intent) for t in test_pool[:PER_INTENT["test"]]]
    for split, rows in out.items():
        random.Random(f"{SEED}-{split}").shuffle(rows)       # mixed order, like the source files
        with (dst / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label"])
            w.writerows(rows)
        print(f"{split}: {len(rows)} rows -> {dst / f'{split}.csv'}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    default = here.parents[2] / "shared" / "data" / "banking77"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default, here)
