"""Multi-label classification data: several labels per row, each one yes or no.

Two layouts are read:
  * a label column holding lists: `{"text": ..., "labels": ["joy", "love"]}` (JSON/JSONL/Parquet
    lists, or a CSV cell holding a JSON list such as `["joy", "love"]`);
  * several 0/1 columns, one per label: `text,toxic,obscene,insult` with values 0/1
    (`--label-columns toxic,obscene,insult`, or found on their own when the data has no label
    column and at least two columns hold only 0/1).

Records are `{"text": str, "labels": [str, ...]}` (plus `"text_pair"` for sentence pairs), label
names in `bundle.label_names` order. A row with no label at all (an empty list, all zeros) is
"none of these": allowed by default for 0/1 columns (toxicity data is mostly all-zero rows) and an
error for label lists unless `allow_empty_labels=True` (a set like GoEmotions has none, so an empty
list there is a mistake). A missing value (empty cell, null) is a row without labels and is dropped
like a missing single label.

No torch here: the data layer imports no torch.
"""
from __future__ import annotations

import json
import math
import os
import random
from collections import Counter

from autoft.autotrain.data.columns import (
    LABEL_NAMES, TEXT_NAMES, Mapping, Normalised, _cell_text, _find, _need, find_pair, label_map,
    sort_labels,
)
from autoft.errors import DataError

BINARY = {0: "0", 1: "1", "0": "0", "1": "1", "true": "1", "false": "0", "yes": "1", "no": "0"}
FIX_LISTS = 'write every row\'s labels as a list, e.g. ["joy", "love"] (an empty list for none)'


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _as_list(v):
    """A cell as a Python list if it holds one (a list, a tuple or a JSON-list string), else None."""
    if isinstance(v, (list, tuple)):
        return list(v)
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):      # numpy arrays from Parquet
        out = v.tolist()
        return out if isinstance(out, list) else None
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            out = json.loads(v)
        except json.JSONDecodeError:
            return None
        return out if isinstance(out, list) else None
    return None


def holds_lists(values) -> bool:
    """True when any cell of a label column holds a list of labels (normalise then names a
    row that does not)."""
    return any(_as_list(v) is not None for v in values if v.__class__ is not str or v[:1] in "[ ")


def _binary(v) -> str | None:
    """'0'/'1' for a 0/1-like cell, None when it is not one."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v in (0.0, 1.0):
        return str(int(v))
    key = v.strip().lower() if isinstance(v, str) else v
    try:
        return BINARY.get(key)
    except TypeError:          # unhashable (a list)
        return None


def binary_columns(table: dict[str, list], candidates: list[str]) -> list[str]:
    """The candidate columns whose every non-missing value is 0/1 (at least one value present)."""
    out = []
    for c in candidates:
        vals = [v for v in table.get(c, []) if not _missing(v)]
        if vals and all(_binary(v) is not None for v in vals):
            out.append(c)
    return out


def columns_mapping(columns: list[str], train: dict[str, list], *, task: str | None,
                    text_column: str | None, text_pair_column: str | None,
                    label_column: str | None, label_columns: list[str] | str | None) -> Mapping | None:
    """The Mapping of the several-0/1-columns layout, or None when the data is not in it.

    Explicit `label_columns` always select it; without them it is chosen only when the task may be
    classification, no label column is named or found, and at least two columns hold only 0/1."""
    if isinstance(label_columns, str):
        label_columns = [c.strip() for c in label_columns.split(",") if c.strip()]
    if not label_columns:
        if task not in (None, "classification") or label_column or _find(columns, LABEL_NAMES):
            return None
    pair = None if text_column and not text_pair_column else find_pair(columns, text_pair_column)
    first = pair[0] if pair else None
    if not first and not text_column and not _find(columns, TEXT_NAMES):
        if not label_columns:
            return None
    text = first if first and not text_column else _need(columns, text_column, TEXT_NAMES, "text", "--text-column")
    roles = {"text": text, **({"text_pair": pair[1]} if pair else {})}
    if label_columns:
        chosen = [_need(columns, c, (), "label", "--label-columns") for c in label_columns]
        if len(chosen) < 2:
            raise DataError(f"--label-columns names one column ({chosen[0]!r}); multi-label needs at least two",
                            "list every label column, or use --label-column for one single-label column")
        bad = [c for c in chosen if c not in binary_columns(train, [c])]
        if bad:
            v = next(x for x in train.get(bad[0], []) if not _missing(x) and _binary(x) is None)
            raise DataError(f"label column {bad[0]!r} holds {v!r}, not 0/1", "each label column must hold "
                            "0 or 1 per row (1: the row has that label)")
    else:
        others = [c for c in columns if c not in roles.values()]
        chosen = binary_columns(train, others)
        if len(chosen) < 2:
            return None
    return Mapping("classification", roles, label_columns=tuple(chosen))


# -- normalisation -------------------------------------------------------------------------------
def _list_labels(table, col: str) -> tuple[list, dict]:
    """Parsed cells (list or None when missing) and the normalised name of each distinct label."""
    parsed, elements = [], []
    for i, v in enumerate(table[col]):
        if _missing(v):
            parsed.append(None)
            continue
        lst = _as_list(v)
        if lst is None:
            raise DataError(f"row {i + 1}: the label column {col!r} holds {v!r}, not a list, while other "
                            "rows hold lists of labels", FIX_LISTS)
        for x in lst:
            if isinstance(x, (list, tuple, dict)):
                raise DataError(f"row {i + 1}: the label list in {col!r} holds a {type(x).__name__}",
                                FIX_LISTS)
        parsed.append(lst)
        elements.extend(lst)
    return parsed, label_map(elements)


def normalise(table: dict[str, list], mapping: Mapping) -> Normalised:
    """Records {"text", ("text_pair"), "labels"}; rows with an empty text, or a missing label
    cell, are dropped (counted in `dropped`). Labels not yet checked against train."""
    cols = mapping.columns
    n = len(table[cols["text"]])
    pairs = table[cols["text_pair"]] if "text_pair" in cols else None
    if mapping.label_columns:
        lab_cols = [table[c] for c in mapping.label_columns]
        names = list(mapping.label_columns)
        rows = []
        for i in range(n):
            cells = [col[i] for col in lab_cols]
            if all(_missing(c) for c in cells):
                rows.append(None)
                continue
            bits = [_binary(c) for c in cells]
            for name, c, b in zip(names, cells, bits):
                if b is None and not _missing(c):
                    raise DataError(f"row {i + 1}: label column {name!r} holds {c!r}, not 0/1",
                                    "each label column must hold 0 or 1 per row")
            rows.append([name for name, b in zip(names, bits) if b == "1"])
    else:
        parsed, lmap = _list_labels(table, cols["labels"])
        rows = [None if p is None else sorted({lmap[x] for x in p if lmap[x] is not None}) for p in parsed]
    records, empty, missing = [], 0, 0
    for i in range(n):
        t = table[cols["text"]][i]
        t = (t if t.__class__ is str else _cell_text(t, cols["text"], "--text-column")).strip()
        u = None
        if pairs is not None:
            u = pairs[i]
            u = (u if u.__class__ is str else _cell_text(u, cols["text_pair"], "--text-pair-column")).strip()
        if not t or (pairs is not None and not u):
            empty += 1
            continue
        if rows[i] is None:
            missing += 1
            continue
        rec = {"text": t, "labels": rows[i]}
        if u is not None:
            rec["text_pair"] = u
        records.append(rec)
    dropped = {k: v for k, v in (("empty text", empty), ("no label", missing)) if v}
    return Normalised(records, n, dropped)


# -- checks and splits ---------------------------------------------------------------------------
def label_names_of(splits: dict[str, list[dict]], mapping: Mapping) -> list[str]:
    """0/1 columns: their order; lists: sorted (numbers in numeric order)."""
    if mapping.label_columns:
        return list(mapping.label_columns)
    return sort_labels({l for r in splits["train"] for l in r["labels"]})


def check(splits: dict[str, list[dict]], names: list[str], allow_empty: bool) -> list[str]:
    """One-line errors for labels that never occur in train and for rows without any label where
    that is not allowed; returns warnings (a label on every train row teaches nothing)."""
    train = splits["train"]
    counts = Counter(l for r in train for l in r["labels"])
    never = [l for l in names if not counts[l]]
    if never:
        shown = ", ".join(repr(x) for x in never[:5]) + (" ..." if len(never) > 5 else "")
        raise DataError(f"{len(never)} label(s) never occur in train: {shown}",
                        "add train rows with them, or leave their columns out (--label-columns)")
    if len(names) < 2:
        raise DataError(f"the data has a single label ({names[0]!r}); multi-label needs at least two",
                        "check the label column, or use single-label classification")
    for split, recs in splits.items():
        unseen = sorted({l for r in recs for l in r["labels"]} - set(counts))
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
            raise DataError(f"{len(unseen)} label(s) in {split} never occur in train: {shown}",
                            f"add train examples for them or remove those labels from {split}")
        if not allow_empty:
            empty = sum(1 for r in recs if not r["labels"])
            if empty:
                raise DataError(f"{empty} of {len(recs)} rows in {split} have an empty label list",
                                "give every row at least one label, or pass --allow-empty-labels if "
                                "'none of the labels' is a valid answer")
    return [f"label {l!r} is on every train row: the model learns nothing from it"
            for l in names if counts[l] == len(train)]


def cut_missing(splits: dict[str, list[dict]], seed: int, val_frac: float, test_frac: float,
                notes: list[str]) -> None:
    """Cut test and/or validation from train, stratified by each row's rarest label (the recipe
    of the GoEmotions sample in shared/data): strata under 2 rows go to one 'rare' stratum, and
    the cut is random when even that is too small."""
    missing = [s for s in ("test", "validation") if s not in splits]
    if not missing:
        return
    fracs = {"test": test_frac, "validation": val_frac}
    total = len(splits["train"])
    for split in missing:
        train = splits["train"]
        n_cut = max(1, round(fracs[split] * total))
        if len(train) < 2 * n_cut or len(train) < 3:
            raise DataError(f"train has only {len(train)} rows, too few to cut a {split} split",
                            f"provide a {split} file or more rows")
        freq = Counter(l for r in train for l in r["labels"])
        keys = [min(r["labels"], key=lambda l: (freq[l], l)) if r["labels"] else "" for r in train]
        size = Counter(keys)
        keys = [k if size[k] >= 2 else "\0rare" for k in keys]
        size = Counter(keys)
        idx = list(range(len(train)))
        how = "stratified by each row's rarest label"
        if min(size.values()) < 2 or n_cut < len(size) or len(train) - n_cut < len(size):
            random.Random(seed).shuffle(idx)
            keep_idx, cut_idx = idx[n_cut:], idx[:n_cut]
            how = "random"
        else:
            from sklearn.model_selection import train_test_split   # lazy: ~1-2 s import

            keep_idx, cut_idx = train_test_split(idx, test_size=n_cut, random_state=seed, shuffle=True,
                                                 stratify=keys)
        splits["train"] = [train[i] for i in sorted(keep_idx)]
        splits[split] = [train[i] for i in sorted(cut_idx)]
        notes.append(f"no {split} split: cut {len(cut_idx)} rows ({100 * len(cut_idx) / total:.3g}%) of train, "
                     f"{how}, with seed {seed}")
    splits.update({s: splits[s] for s in ("train", "validation", "test")})


def load(raw, mapping: Mapping, *, source, split_seed: int, validation_fraction: float,
         test_fraction: float, max_empty_fraction: float, allow_empty_labels: bool | None):
    """The multi-label branch of `load_data`: normalise, check, cut the missing splits."""
    from autoft.autotrain.data.load import SPLITS, DataBundle

    allow = bool(mapping.label_columns) if allow_empty_labels is None else allow_empty_labels
    notes, warnings, splits = list(raw.notes), [], {}
    for split in SPLITS:
        if split not in raw.splits:
            continue
        norm = normalise(raw.splits[split], mapping)
        if norm.total == 0:
            raise DataError(f"the {split} split of {source} has no rows", "add rows under the header")
        for reason, n in norm.dropped.items():
            frac = n / norm.total
            what = {"empty text": "an empty text", "no label": "no label value (an empty cell)"}[reason]
            if frac > max_empty_fraction:
                raise DataError(f"{n} of {norm.total} rows in {split} ({100 * frac:.3g}%) have {what}, more "
                                f"than the {100 * max_empty_fraction:.3g}% allowed",
                                "fill them in or remove them, and check that the right columns were used")
            notes.append(f"dropped {n} of {norm.total} {split} rows with {what}")
            warnings.append(notes[-1])
        splits[split] = norm.records
    if not splits.get("train"):
        raise DataError(f"{source} has no usable rows in train", "check the columns and the file")
    names = label_names_of(splits, mapping)
    warnings += check(splits, names, allow)
    cut_missing(splits, split_seed, validation_fraction, test_fraction, notes)
    columns = dict(mapping.columns)
    if mapping.label_columns:
        columns["labels"] = ", ".join(mapping.label_columns)
    return DataBundle(task="classification", splits=splits, label_names=names, source=os.fspath(source),
                      columns=columns, notes=notes, format=raw.format, warnings=warnings, multi_label=True)


def is_multilabel(mapping: Mapping, raw) -> bool:
    """The mapping is the 0/1-columns layout, or its label column holds lists."""
    if mapping.task != "classification":
        return False
    if mapping.label_columns:
        return True
    col = mapping.columns.get("label")
    return bool(col) and holds_lists(v for t in raw.splits.values() for v in t.get(col, []))


def as_multilabel(mapping: Mapping) -> Mapping:
    """A single-label mapping whose label column holds lists -> role `labels`."""
    cols = dict(mapping.columns)
    if "label" in cols:
        cols["labels"] = cols.pop("label")
    return Mapping(mapping.task, cols, mapping.label_columns)

