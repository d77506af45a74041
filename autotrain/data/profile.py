"""The data profile the advisor reads: sizes, labels, lengths, duplicates, overlap, language.

Token lengths come from the tokenizer when one is passed (the fast Rust tokenizer in batches,
truncation and padding off; past 20k train rows a stratified sample, which on sst2 gives the same
percentiles as tokenising all 67k rows in a third of the time), else from a tokenizer-free
estimate, marked as such: max(characters / 4, words x 1.3), times 1.5 for text detected as not
English. Estimate / MiniLM WordPiece at p95, measured on the shared sets: sst2 1.12, banking77
1.08, ag_news 1.11, alpaca 1.21 (English: a little high, the safe side for memory planning);
German tweets 0.66 before the 1.5 factor (an English vocabulary splits German words into many
pieces), about 1.0 after it.
"""
from __future__ import annotations

import heapq
import math
import os
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoft.autotrain.data.load import DataBundle
from autoft.autotrain.data.seq2seq import SEQ2SEQ_TASKS

ESTIMATE_METHOD = "estimate: max(characters / 4, words x 1.3)"
IMBALANCE_WARN = 10.0
MAX_TOKENIZED = 20_000      # rows tokenised exactly; past this a stratified sample (see _tokenized_lengths)
MIN_CLASS_ROWS = 5          # fewer train rows than this in a class earns a warning
LANG_SAMPLE = 2000

# Short, frequent and (mostly) language-specific function words. Words shared between the
# languages (de, a, en, la, e, o, ...) are left out on purpose: they would only blur the vote.
STOPWORDS: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    "en": "the and is are was were this that with have has not you for it's of to what how my "
          "can i it be at by from they his her will would there their which",
    "de": "und der die das ist nicht ich ein eine zu mit auf den dem sich auch es wir sie wie "
          "aber noch nur mal kein schon sind hat bei oder wenn doch mich dir",
    "fr": "le les et est une des du pas que qui je vous nous il elle au sur pour avec dans ce "
          "cette mais sont très plus été c'est",
    "es": "el los las y es una del que por con para como pero está son muy más lo se su yo "
          "esto esta también hay",
    "it": "il di che è non per una sono gli della con del anche come ma più ho nel questo "
          "molto mi ci alla",
    "pt": "o os e é não um uma do da que com para por mas são muito mais isso eu você também "
          "está foi ao na no",
    "nl": "de het een en is niet van dat op te met voor zijn ik je maar ook wat er aan dit "
          "nog wel bij naar",
}.items()}
# Drop words that appear in more than one list, so every hit votes for one language only.
_ALL = Counter(w for ws in STOPWORDS.values() for w in ws)
STOPWORDS = {k: frozenset(w for w in ws if _ALL[w] == 1) for k, ws in STOPWORDS.items()}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


@dataclass
class DataProfile:
    task: str
    rows: dict[str, int]                               # split -> rows
    label_names: list[str] | None = None
    label_counts: dict[str, dict[str, int]] | None = None   # split -> label -> rows
    imbalance_ratio: float | None = None               # max / min class count in train
    length_percentiles: dict[str, int] = field(default_factory=dict)  # p50, p95, p99, max (tokens, train)
    lengths_estimated: bool = True
    length_method: str = ESTIMATE_METHOD
    duplicates_train: int = 0                          # train rows whose normalised text occurs earlier
    train_test_overlap: int = 0                        # test rows whose normalised text is in train
    language: str = "unknown"                          # ISO 639-1 or "unknown"
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    length_sampled: bool = False                       # tokenizer lengths from a sample (see length_method)
    multi_label: bool = False                          # label_counts count rows carrying each label
    majority_share: float | None = None                # single-label: share of train rows in the largest class
    labels_per_row: float | None = None                # multi-label: mean labels per train row
    # sentence pairs: token lengths of each side (p50, p95, p99, max; same method as the pair's);
    # length_percentiles are those of the pair as the model reads it (both sides and special tokens)
    pair_lengths: dict[str, dict[str, int]] | None = None
    # train length distribution: sorted lengths (tokens) and their cumulative weights (a row of a
    # sample stands for `step` rows; without sampling every weight is 1 and _cumw[-1] is the row count)
    _lengths: list[int] = field(default_factory=list, repr=False)
    _cumw: list[float] = field(default_factory=list, repr=False)
    # summarization/translation: length_percentiles are the sources' (what the encoder reads) and
    # these the targets' (what the decoder writes), tokens, train split, same method
    target_length_percentiles: dict[str, int] = field(default_factory=dict)
    source_lang: str | None = None
    target_lang: str | None = None

    @property
    def num_labels(self) -> int | None:
        return len(self.label_names) if self.label_names is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "source": self.source, "rows": dict(self.rows),
            "label_names": self.label_names, "num_labels": self.num_labels,
            "label_counts": self.label_counts, "imbalance_ratio": self.imbalance_ratio,
            "token_lengths": dict(self.length_percentiles),      # p50, p95, p99, max (tokens)
            "lengths_estimated": self.lengths_estimated, "length_sampled": self.length_sampled,
            "length_method": self.length_method,
            "duplicates_train": self.duplicates_train, "train_test_overlap": self.train_test_overlap,
            "language": self.language, "warnings": list(self.warnings), "notes": list(self.notes),
            "multi_label": self.multi_label, "majority_share": self.majority_share,
            "labels_per_row": self.labels_per_row, "pair_lengths": self.pair_lengths,
            **({"target_token_lengths": dict(self.target_length_percentiles)} if self.target_length_percentiles else {}),
            **({"source_lang": self.source_lang, "target_lang": self.target_lang} if self.source_lang else {}),
        }

    def to_question_fields(self) -> dict[str, Any]:
        """The `Question` fields this profile knows (advisor input)."""
        out: dict[str, Any] = {"task": self.task, "data_size": self.rows.get("train", 0)}
        if self.num_labels is not None:
            out["num_labels"] = self.num_labels
        if self.length_percentiles:
            out["seq_len_p95"] = self.length_percentiles["p95"]
            out["seq_len_p99"] = self.length_percentiles["p99"]
            mean = self.mean_length()
            if mean:
                out["seq_len_mean"] = mean
        if self.language != "unknown":
            out["language"] = self.language
        if self.imbalance_ratio is not None:          # the advisor's class-weight and metric rules
            out["imbalance_ratio"] = self.imbalance_ratio
            out["majority_share"] = self.majority_share
            out["multi_label"] = self.multi_label
        if self.target_length_percentiles:
            out["target_len_p95"] = self.target_length_percentiles["p95"]
            out["target_len_p99"] = self.target_length_percentiles["p99"]
        if self.source_lang:
            out["source_lang"], out["target_lang"] = self.source_lang, self.target_lang
        return out

    def mean_length(self) -> int | None:
        """Mean train example length in tokens (weighted like the percentiles), None when unknown."""
        if not self._lengths or not self._cumw[-1]:
            return None
        weights = [w - p for w, p in zip(self._cumw, [0.0] + self._cumw[:-1])]
        return round(sum(n * w for n, w in zip(self._lengths, weights)) / self._cumw[-1])

    def truncated_fraction(self, max_len: int) -> float:
        """Fraction of train examples longer than `max_len` tokens (0.0 - 1.0)."""
        if not self._lengths:
            return 0.0
        i = bisect_right(self._lengths, max_len)
        total = self._cumw[-1]
        return (total - (self._cumw[i - 1] if i else 0.0)) / total

    def truncation_warning(self, max_len: int, why: str = "") -> str | None:
        """A warning line if any train example is longer than `max_len` tokens, else None.
        `why` names the limit, e.g. "the tokenizer's limit"."""
        frac = self.truncated_fraction(max_len)
        if frac <= 0:
            return None
        rows = round(self._cumw[-1])
        n = round(frac * rows)
        est = " (estimated lengths)" if self.lengths_estimated else \
            " (from a sample of rows)" if self.length_sampled else ""
        why = f" ({why})" if why else ""
        return (f"{100 * frac:.1f}% of train examples ({n} of {rows}) are longer than "
                f"{max_len} tokens{why}{est} and will be truncated; longest is "
                f"{self.length_percentiles.get('max')} tokens")


def _percentile(sorted_vals: list[int], p: float, cumw: list[float] | None = None) -> int:
    """Nearest-rank percentile of an ascending list; with `cumw` (cumulative weights) weighted."""
    if not sorted_vals:
        return 0
    if cumw is None:
        k = max(1, math.ceil(round(p * len(sorted_vals) / 100, 9)))
        return sorted_vals[k - 1]
    target = round(p * cumw[-1] / 100, 9)
    return sorted_vals[min(bisect_left(cumw, target), len(sorted_vals) - 1)]


def _distribution(parts: list[tuple[list[int], float]]) -> tuple[list[int], list[float]]:
    """(lengths, weight) groups -> sorted lengths and cumulative weights."""
    pairs = sorted((n, w) for lengths, w in parts for n in lengths)
    cum, acc = [], 0.0
    for _, w in pairs:
        acc += w
        cum.append(acc)
    return [n for n, _ in pairs], cum


def example_text(rec: dict) -> str:
    """The text of one record that counts for length: the text, or all message contents."""
    if "text" in rec:
        return rec["text"]
    if "source" in rec:          # summarization/translation: the source (the target is profiled apart)
        return rec["source"]
    return "\n".join(m["content"] for m in rec["messages"])


NON_ENGLISH_FACTOR = 1.5    # estimate multiplier for text detected as another language (see top)


def estimate_tokens(texts: list[str]) -> list[int]:
    """max(ceil(characters / 4), ceil(words x 1.3)) per text, in integer arithmetic (no float or
    function call per text: this runs on every train row). count(" ") is 2x faster than split()
    and the same on whitespace-normalised text."""
    return [max(-(-len(t) // 4), -(-(t.count(" ") + 1) * 13 // 10)) for t in texts]


def tokenize_lengths(tokenizer, texts: list, batch_size: int = 100_000) -> list[int]:
    """Token counts (with special tokens) under `tokenizer`, truncation and padding off. An item
    may be a (text, text_pair) tuple: the pair as the model reads it.

    Uses the fast (Rust) backend's `encode_batch_fast` directly when there is one: for sst2 it is
    2.4x faster than `tokenizer(texts)` because it builds no offsets or Python dicts. The backend's
    own truncation/padding settings are switched off for the call and restored after it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    out: list[int] = []
    if backend is not None and hasattr(backend, "encode_batch"):
        trunc, pad = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        try:
            for i in range(0, len(texts), batch_size):
                out.extend(len(e.ids) for e in encode(texts[i:i + batch_size], add_special_tokens=True))
        finally:
            if trunc:
                backend.enable_truncation(**trunc)
            if pad:
                backend.enable_padding(**pad)
        return out
    for i in range(0, len(texts), 1000):       # slow (Python) tokenizers
        chunk = texts[i:i + 1000]
        if chunk and isinstance(chunk[0], tuple):
            enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk], add_special_tokens=True, truncation=False)
        else:
            enc = tokenizer(chunk, add_special_tokens=True, truncation=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out


def _chat_texts(tokenizer, records: list[dict]) -> list[str] | None:
    """Generation: the texts as the model will see them, through the chat template if it has one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    except Exception:       # a template that rejects these roles: fall back to plain text
        return None


def detect_language(texts: list[str], sample: int = LANG_SAMPLE) -> str:
    """Cheap stopword vote over an even sample; "unknown" when no language clearly leads."""
    if not texts:
        return "unknown"
    step = max(1, len(texts) // sample)
    hits = Counter()
    words = 0
    for t in texts[::step][:sample]:
        for w in _WORD.findall(t.lower()):
            words += 1
            for lang, sw in STOPWORDS.items():
                if w in sw:
                    hits[lang] += 1
    if not hits or words == 0:
        return "unknown"
    (best, n1), *rest = hits.most_common(2) + [("", 0)]
    n2 = rest[0][1]
    # need stopwords to be a visible share of the words and a clear lead over the runner-up
    if n1 / words < 0.05 or n1 < 2 * n2:
        return "unknown"
    return best


def _norm(t: str) -> str:
    """Lower-case with whitespace runs folded; the fold (split + join) only where needed."""
    t = t.lower()
    if "  " in t or "\t" in t or "\n" in t or "\r" in t or "\xa0" in t:
        return " ".join(t.split())
    return t


def _tokenized_lengths(prof: DataProfile, tokenizer, task: str, train: list[dict], texts: list[str],
                       max_tokenized: int | None, inputs: list | None = None) -> None:
    """Token lengths of the train split under `tokenizer`, into prof._lengths/_cumw.

    Up to `max_tokenized` rows every row is tokenised (exact). Past it, a stratified sample:
    the 1% longest rows by characters are tokenised exactly (they decide max and the truncation
    tail), and an even 1-in-`step` sample of the others stands for the rest, each sampled row
    weighing `step` rows. On sst2 (67k rows, 20k budget) the percentiles agree with the exact ones
    to within a token (see benchmarks/results/data_profile.json) at a third of the time.
    """
    n = len(train)
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    if os.sep in name:                       # a local folder: its last two parts say enough
        name = os.path.join(*Path(name).parts[-2:])
    chat = task == "generation" and bool(getattr(tokenizer, "chat_template", None))

    def lengths_of(idx: list[int]) -> list[int]:
        nonlocal chat
        model_texts = _chat_texts(tokenizer, [train[i] for i in idx]) if chat else None
        chat = model_texts is not None            # a template that failed: plain text from now on
        return tokenize_lengths(tokenizer, model_texts or [(inputs or texts)[i] for i in idx])

    if not max_tokenized or n <= max_tokenized:
        prof._lengths, prof._cumw = _distribution([(lengths_of(list(range(n))), 1.0)])
        sampled = ""
    else:
        k = max(1, min(n // 100, max_tokenized // 10))
        tail = sorted(heapq.nlargest(k, range(n), key=lambda i: len(texts[i])))
        tail_set = set(tail)
        rest = [i for i in range(n) if i not in tail_set]
        step = math.ceil(len(rest) / (max_tokenized - k))
        sample = rest[::step]
        weight = len(rest) / len(sample)
        prof._lengths, prof._cumw = _distribution([(lengths_of(tail), 1.0), (lengths_of(sample), weight)])
        prof.length_sampled = True
        sampled = (f" on a sample: the {k} longest rows by characters and 1 in {step} of the rest "
                   f"({len(sample)} rows)")
    prof.lengths_estimated = False
    prof.length_method = f"tokenizer {name}" + (" (chat template)" if chat else "") + sampled


def _pair_side_lengths(train: list[dict], tokenizer, language: str) -> dict[str, dict[str, int]]:
    """Percentiles (p50, p95, p99, max tokens) of each side of a sentence pair: the tokenizer's
    counts without special tokens when one is given, else the estimate (x1.5 for non-English)."""
    out = {}
    for side in ("text", "text_pair"):
        texts = [r[side] for r in train]
        if tokenizer is not None:
            base = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]]
        else:
            base = estimate_tokens(texts)
            if language not in ("en", "unknown"):
                base = [math.ceil(n * NON_ENGLISH_FACTOR) for n in base]
        v = sorted(base)
        out[side] = {"p50": _percentile(v, 50), "p95": _percentile(v, 95), "p99": _percentile(v, 99),
                     "max": v[-1] if v else 0}
    return out


def build_profile(bundle: DataBundle, tokenizer=None, *, seq_len: int | None = None,
                  max_tokenized: int | None = MAX_TOKENIZED) -> DataProfile:
    """Profile a loaded bundle. With `tokenizer` (a transformers tokenizer) lengths are exact token
    counts of the train split (of a stratified sample past `max_tokenized` rows; None: all
    rows); without, they are estimated. `seq_len` adds a truncation warning for that planned sequence length."""
    train = bundle.splits["train"]
    pairs = bundle.task == "classification" and bool(train) and "text_pair" in train[0]
    if bundle.task == "classification":
        # a pair counts as one text for language and duplicates (the model reads both sides)
        texts = [r["text"] + "\n" + r["text_pair"] for r in train] if pairs else [r["text"] for r in train]
    else:
        texts = [example_text(r) for r in train]
    prof = DataProfile(task=bundle.task, rows={k: len(v) for k, v in bundle.splits.items()},
                       label_names=list(bundle.label_names) if bundle.label_names is not None else None,
                       source=bundle.source, notes=list(bundle.notes), warnings=list(bundle.warnings),
                       multi_label=bool(getattr(bundle, "multi_label", False)))
    # -- labels
    if bundle.task == "classification":
        prof.label_counts = {}
        for split, recs in bundle.splits.items():
            c = Counter(l for r in recs for l in r["labels"]) if prof.multi_label else Counter(r["label"] for r in recs)
            prof.label_counts[split] = {l: c.get(l, 0) for l in bundle.label_names or sorted(c)}
        tc = [n for n in prof.label_counts["train"].values() if n]
        prof.imbalance_ratio = round(max(tc) / min(tc), 2) if tc else None
        if prof.multi_label:
            prof.labels_per_row = round(sum(tc) / max(1, len(train)), 3)
        elif tc:
            prof.majority_share = round(max(tc) / sum(tc), 4)
        if prof.imbalance_ratio and prof.imbalance_ratio > IMBALANCE_WARN:
            big = max(prof.label_counts["train"], key=prof.label_counts["train"].get)
            small = min((l for l in prof.label_counts["train"] if prof.label_counts["train"][l]),
                        key=prof.label_counts["train"].get)
            prof.warnings.append(
                f"heavy {'label' if prof.multi_label else 'class'} imbalance: {big!r} has "
                f"{prof.imbalance_ratio:g}x the train rows of "
                f"{small!r} ({prof.label_counts['train'][big]} vs {prof.label_counts['train'][small]}); "
                "consider more examples of the small classes or class weights")
        tiny = [l for l, n in prof.label_counts["train"].items() if n < MIN_CLASS_ROWS]
        if tiny:
            shown = ", ".join(f"{l!r} ({prof.label_counts['train'][l]})" for l in tiny[:5])
            prof.warnings.append(f"{len(tiny)} class(es) have fewer than {MIN_CLASS_ROWS} train rows: "
                                 f"{shown}{' ...' if len(tiny) > 5 else ''}; the model will rarely "
                                 "predict them")
    prof.language = bundle.source_lang or detect_language(texts)
    # -- lengths
    if pairs:
        prof.pair_lengths = _pair_side_lengths(train, tokenizer, prof.language)
    if tokenizer is not None:
        _tokenized_lengths(prof, tokenizer, bundle.task, train, texts, max_tokenized,
                           inputs=[(r["text"], r["text_pair"]) for r in train] if pairs else None)
    else:
        lengths = sorted(estimate_tokens(texts))
        if prof.language not in ("en", "unknown"):
            lengths = [math.ceil(n * NON_ENGLISH_FACTOR) for n in lengths]
            prof.length_method = (f"{ESTIMATE_METHOD}, x{NON_ENGLISH_FACTOR:g} for non-English "
                                  f"text ({prof.language})")
        prof._lengths, prof._cumw = lengths, list(map(float, range(1, len(lengths) + 1)))
    lengths, cumw = prof._lengths, prof._cumw
    prof.length_percentiles = {"p50": _percentile(lengths, 50, cumw), "p95": _percentile(lengths, 95, cumw),
                               "p99": _percentile(lengths, 99, cumw), "max": lengths[-1] if lengths else 0}
    limits = [(seq_len, "the planned seq len")] if seq_len else []
    mml = getattr(tokenizer, "model_max_length", None)
    if isinstance(mml, int) and 0 < mml < 1_000_000 and mml != seq_len:
        limits.append((mml, "the tokenizer's limit"))
    for limit, why in limits:
        w = prof.truncation_warning(limit, why)
        if w:
            prof.warnings.append(w)
    if bundle.task in SEQ2SEQ_TASKS:
        _target_lengths(prof, bundle, tokenizer, max_tokenized)
    # -- duplicates and overlap (exact match after lower-casing and whitespace folding)
    keys = [_norm(t) for t in texts]
    uniq = set(keys)
    prof.duplicates_train = len(keys) - len(uniq)
    if prof.duplicates_train and prof.duplicates_train > 0.01 * len(keys):
        share = 100 * prof.duplicates_train / len(keys)
        prof.warnings.append(f"{prof.duplicates_train} train rows ({share:.1f}%) repeat an earlier "
                             "text; consider de-duplicating")
    test = bundle.splits.get("test", [])
    if test:
        tk = [_norm(r["text"] + "\n" + r["text_pair"] if pairs else r["text"] if "text" in r else example_text(r))
              for r in test]
        prof.train_test_overlap = sum(1 for k in tk if k in uniq)
        if prof.train_test_overlap:
            share = 100 * prof.train_test_overlap / len(tk)
            prof.warnings.append(f"{prof.train_test_overlap} test rows ({share:.1f}%) "
                                 "also occur in train, which inflates test scores; remove them from "
                                 "one side")
    return prof


def _target_lengths(prof: DataProfile, bundle: DataBundle, tokenizer, max_tokenized: int | None) -> None:
    """Summarization/translation: the train targets' token-length percentiles (tokenizer counts, of
    an even sample past `max_tokenized` rows; else the estimate, x1.5 for a non-English target) and a
    warning when summaries are about as long as their documents (swapped columns?)."""
    targets = [r["target"] for r in bundle.splits["train"]]
    prof.source_lang, prof.target_lang = bundle.source_lang, bundle.target_lang
    if tokenizer is not None:
        step = max(1, math.ceil(len(targets) / max_tokenized)) if max_tokenized else 1
        lengths = sorted(tokenize_lengths(tokenizer, targets[::step]))
    else:
        lengths = sorted(estimate_tokens(targets))
        lang = bundle.target_lang or prof.language
        if lang not in ("en", "unknown"):
            lengths = [math.ceil(n * NON_ENGLISH_FACTOR) for n in lengths]
    prof.target_length_percentiles = {"p50": _percentile(lengths, 50), "p95": _percentile(lengths, 95),
                                      "p99": _percentile(lengths, 99), "max": lengths[-1] if lengths else 0}
    src_p50 = prof.length_percentiles.get("p50") or 0
    if bundle.task == "summarization" and src_p50 and prof.target_length_percentiles["p50"] >= 0.8 * src_p50:
        prof.warnings.append(f"the summaries are about as long as the documents (median "
                             f"{prof.target_length_percentiles['p50']} vs {src_p50} tokens): check that "
                             "--source-column and --target-column are not swapped")
