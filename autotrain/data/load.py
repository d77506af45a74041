"""`load_data`: any supported source -> a validated `DataBundle` with train/validation/test splits."""
from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field, fields

from autoft.autotrain.data.columns import (
    infer_mapping, label_map, normalise_classification, normalise_generation, sort_labels,
)
from autoft.autotrain.data.readers import read_source
from autoft.autotrain.data.seq2seq import Seq2SeqMapping, infer_seq2seq_mapping, normalise_seq2seq, pair_languages
from autoft.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass
class DataBundle:
    task: str                                   # classification | generation | summarization | translation
    splits: dict[str, list[dict]]               # train, validation, test -> normalised records
    label_names: list[str] | None               # classification: sorted class names (strings)
    source: str
    columns: dict[str, str]                     # role (text, label, prompt, ...) -> column used
    notes: list[str] = field(default_factory=list)      # what was done (splits cut, rows dropped)
    format: str = ""
    warnings: list[str] = field(default_factory=list)   # rows dropped etc.; the profile repeats them
    multi_label: bool = False                   # records carry "labels": [names] (data/multilabel.py)
    # translation: ISO 639-1 codes of the source and target language (records are {source, target})
    source_lang: str | None = None
    target_lang: str | None = None

    @property
    def num_labels(self) -> int | None:
        return len(self.label_names) if self.label_names is not None else None

    def summary(self) -> dict:
        """Everything but the records (asdict would deep-copy every record)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "splits"}
        d["rows"] = {k: len(v) for k, v in self.splits.items()}
        return d


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def load_data(source, *, task: str | None = None, text_column: str | None = None,
              label_column: str | None = None, prompt_column: str | None = None,
              response_column: str | None = None, split_seed: int = 42,
              source_column: str | None = None, target_column: str | None = None,
              source_lang: str | None = None, target_lang: str | None = None,
              validation_fraction: float = 0.1, test_fraction: float = 0.1,
              max_empty_fraction: float = 0.05, text_pair_column: str | None = None,
              label_columns: list[str] | str | None = None,
              allow_empty_labels: bool | None = None) -> DataBundle:
    """Read `source` (file, folder, save_to_disk folder or Hub id), infer the task, normalise the
    records, cut missing validation/test splits (stratified for classification, seed `split_seed`)
    and check it all. Raises `DataError` with a one-line what-and-fix on bad input.

    Sentence pairs: a pair of PAIR_NAMES columns (sentence1/sentence2, premise/hypothesis, ...)
    or `text_pair_column`. Multi-label: a label column holding lists, or several 0/1 columns
    (`label_columns`, or found when there is no label column); `allow_empty_labels` says whether
    a row may have no label (default: yes for 0/1 columns, no for lists). See data/multilabel.py."""
    for name, v in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 < v < 0.5:
            raise DataError(f"{name} must be between 0 and 0.5, got {v}", "use e.g. 0.1")
    raw = read_source(source)
    columns = raw.columns
    if not columns:
        raise DataError(f"{source} has no columns", "add a header line (e.g. text,label) and rows")
    if len(columns) == 1:
        sep = next((c for c in ";|\t" if c in columns[0]), None)
        if sep:
            raise DataError(f"{source} has a single column {columns[0]!r}: it looks separated by "
                            f"{sep!r}, not commas", "save it comma-separated (.csv) or tab-separated (.tsv)")
    from autoft.autotrain.data import multilabel

    mapping = _seq2seq_mapping(raw, columns, task, source_column, target_column, source_lang, target_lang,
                               other=bool(text_column or label_column or prompt_column or response_column
                                          or text_pair_column or label_columns))
    if mapping is None:
        mapping = multilabel.columns_mapping(
            columns, raw.splits["train"], task=task, text_column=text_column, text_pair_column=text_pair_column,
            label_column=label_column, label_columns=label_columns) or infer_mapping(
            columns, task=task, text_column=text_column, label_column=label_column, prompt_column=prompt_column,
            response_column=response_column, text_pair_column=text_pair_column)
    for split, table in raw.splits.items():
        for role in ("input", "system"):            # optional columns may be absent from a split
            col = mapping.columns.get(role)
            if col and col not in table:
                table[col] = [None] * len(next(iter(table.values()), []))
        missing = [c for c in (*mapping.columns.values(), *mapping.label_columns) if c not in table]
        if missing:
            raise DataError(f"the {split} split has no column {missing[0]!r}; its columns are: "
                            f"{', '.join(table)}", "give every split file the same header")
    if multilabel.is_multilabel(mapping, raw):
        return multilabel.load(raw, multilabel.as_multilabel(mapping), source=source, split_seed=split_seed,
                               validation_fraction=validation_fraction, test_fraction=test_fraction,
                               max_empty_fraction=max_empty_fraction, allow_empty_labels=allow_empty_labels)
    notes = list(raw.notes)
    warnings: list[str] = []
    label_names = None
    lmap = None
    if mapping.task == "classification":
        lcol = mapping.columns["label"]
        lmap = label_map([v for t in raw.splits.values() for v in t[lcol]]
                         if len(raw.splits) > 1 else raw.splits["train"][lcol])
    splits: dict[str, list[dict]] = {}
    for split in SPLITS:
        if split not in raw.splits:
            continue
        table = raw.splits[split]
        if isinstance(mapping, Seq2SeqMapping):
            norm = normalise_seq2seq(table, mapping, split)
        else:
            norm = (normalise_classification(table, mapping.columns, lmap) if lmap is not None
                    else normalise_generation(table, mapping.columns))
        if norm.total == 0:
            if split == "train":
                raise DataError(f"{source} has no rows", "add rows under the header")
            raise DataError(f"the {split} split of {source} has no rows",
                            f"add rows, or remove the {split} file to let autoft cut one from train")
        for reason, n in norm.dropped.items():
            frac = n / norm.total
            what = {"empty text": "an empty text", "no label": "no label",
                    "empty prompt": "an empty prompt", "empty response": "an empty output/response"}[reason]
            if frac > max_empty_fraction:
                raise DataError(f"{n} of {norm.total} rows in {split} ({_pct(frac)}) have {what}, more "
                                f"than the {_pct(max_empty_fraction)} allowed",
                                "fill them in or remove them (or raise max_empty_fraction), and check "
                                "that the right columns were used")
            msg = f"dropped {n} of {norm.total} {split} rows with {what}"
            notes.append(msg)
            warnings.append(msg)
        splits[split] = norm.records
    if not splits.get("train"):
        raise DataError(f"{source} has no usable rows in train", "check the columns and the file")

    if mapping.task == "classification":
        _check_classes(splits, source)
    _cut_missing(splits, mapping.task, split_seed, validation_fraction, test_fraction, notes)
    if mapping.task == "classification":
        train_labels = {r["label"] for r in splits["train"]}
        for split in ("validation", "test"):
            unseen = sorted({r["label"] for r in splits[split]} - train_labels)
            if unseen:
                shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
                raise DataError(f"{len(unseen)} label(s) in {split} never occur in train: {shown}",
                                f"add train examples for them or remove those {split} rows")
        label_names = sort_labels(train_labels)
    langs = (mapping.source_lang, mapping.target_lang) if isinstance(mapping, Seq2SeqMapping) else (None, None)
    if isinstance(mapping, Seq2SeqMapping) and mapping.note:
        notes.append(mapping.note)
    return DataBundle(task=mapping.task, splits=splits, label_names=label_names,
                      source=os.fspath(source), columns=mapping.columns, notes=notes,
                      format=raw.format, warnings=warnings, source_lang=langs[0], target_lang=langs[1])


def _seq2seq_mapping(raw, columns, task, source_column, target_column, source_lang, target_lang,
                     other: bool) -> Seq2SeqMapping | None:
    """Summarization/translation columns (None: another task). A translation pair column's
    languages come from the flags, else from the first train row's keys."""
    from autoft.autotrain.data.columns import (INPUT_NAMES, LABEL_NAMES, MESSAGES_NAMES, PROMPT_NAMES,
                                               RESPONSE_NAMES, TEXT_NAMES, _find)

    fits_other = bool((_find(columns, TEXT_NAMES) and _find(columns, LABEL_NAMES)) or _find(columns, MESSAGES_NAMES)
                      or (_find(columns, PROMPT_NAMES + INPUT_NAMES) and _find(columns, RESPONSE_NAMES)))
    mapping = infer_seq2seq_mapping(columns, task=task, source_column=source_column, target_column=target_column,
                                    source_lang=source_lang, target_lang=target_lang,
                                    other_columns_given=other, fits_other_task=fits_other)
    if mapping is not None and "pair" in mapping.columns and not (mapping.source_lang and mapping.target_lang):
        from autoft.autotrain.data.seq2seq import _pair  # noqa: PLC0415

        first = next((v for v in raw.splits["train"].get(mapping.columns["pair"], []) if v is not None), None)
        if first is None:
            raise DataError("the train split has no translation pairs", "add rows")
        s, t, note = pair_languages(mapping, _pair(first, "row 1 of train", mapping.columns["pair"]))
        if s == t:
            raise DataError(f"the source and target language are both {s!r}",
                            "translation needs two different languages: check --source-lang/--target-lang")
        mapping.source_lang, mapping.target_lang, mapping.note = s, t, note
    return mapping


def _check_classes(splits: dict[str, list[dict]], source) -> None:
    counts = Counter(r["label"] for r in splits["train"])
    if len(counts) < 2:
        (only,) = counts
        raise DataError(f"train has a single class ({only!r}); classification needs at least two",
                        "add examples of the other classes, or check --label-column")


def _cut_missing(splits, task, seed, val_frac, test_frac, notes) -> None:
    """Cut test and/or validation from train when not given, stratified by label for classification."""
    missing = [s for s in ("test", "validation") if s not in splits]
    if not missing:
        return
    fracs = {"test": test_frac, "validation": val_frac}
    total = len(splits["train"])
    for split in missing:
        train = splits["train"]
        # fractions are of the rows read for train, so 10% + 10% leaves 80% for training
        n_cut = max(1, round(fracs[split] * total))
        if task == "classification":
            kept, cut, bumped = _stratified_cut(train, n_cut, seed, split, len(missing))
            how = "stratified"
        else:
            if len(train) < 2 * n_cut or len(train) < 3:
                raise DataError(f"train has only {len(train)} rows, too few to cut a {split} split",
                                f"provide a {split} file or more rows")
            idx = list(range(len(train)))
            random.Random(seed).shuffle(idx)
            cut = [train[i] for i in sorted(idx[:n_cut])]
            kept = [train[i] for i in sorted(idx[n_cut:])]
            how, bumped = "random", False
        splits["train"], splits[split] = kept, cut
        extra = " (raised to one row per class)" if bumped else ""
        notes.append(f"no {split} split: cut a {how} {_pct(len(cut) / total)} of train "
                     f"({len(cut)} rows{extra}) with seed {seed}")
    splits.update({s: splits[s] for s in SPLITS})      # keep the canonical key order


def _stratified_cut(train, n_cut, seed, split, n_cuts):
    counts = Counter(r["label"] for r in train)
    # each class needs a row on both sides of every cut (scikit-learn's stratify requires >= 2)
    need = 2 if n_cuts == 1 or split == "validation" else 3
    small = sorted((c for c, n in counts.items() if n < need), key=lambda c: (counts[c], c))
    if small:
        shown = ", ".join(f"{c!r} ({counts[c]} row{'s' if counts[c] != 1 else ''})" for c in small[:5])
        raise DataError(f"class {shown} has too few rows to cut a stratified {split} split "
                        f"(needs at least {need})",
                        f"provide a {split} file, add examples, or remove that class")
    bumped = False
    if n_cut < len(counts):
        n_cut, bumped = len(counts), True
    if len(train) - n_cut < len(counts):
        raise DataError(f"train has {len(train)} rows over {len(counts)} classes, too few to cut a "
                        f"stratified {split} split", f"provide a {split} file or more rows")
    from sklearn.model_selection import train_test_split   # lazy: ~1-2 s import

    idx = list(range(len(train)))
    keep_idx, cut_idx = train_test_split(idx, test_size=n_cut, random_state=seed, shuffle=True,
                                         stratify=[r["label"] for r in train])
    return ([train[i] for i in sorted(keep_idx)], [train[i] for i in sorted(cut_idx)], bumped)
