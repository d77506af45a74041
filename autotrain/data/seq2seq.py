"""Summarization and translation data: which columns hold the source and the target, and turning
raw tables into `{"source": str, "target": str}` records.

Layouts (column names match case-insensitively):
- summarization: `document`/`summary`, `article`/`highlights`, `dialogue`/`summary`, `text`/`summary`;
- translation: a `translation` column holding `{"en": ..., "de": ...}` (the Hugging Face WMT
  layout), two columns named by ISO 639-1 language codes (`en`, `de`), or `source`/`target`
  (`src`/`tgt`) with --source-lang/--target-lang;
- either task: --source-column/--target-column name the columns.
Bad rows are errors that name the row (a missing side, an empty source or target, a pair that
is not a dict); summarization and translation have no "drop a few" tolerance, because a pair
with an empty side teaches the model to write nothing.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from autoft.autotrain.data.columns import Normalised, _find, _need
from autoft.errors import DataError

SEQ2SEQ_TASKS = ("summarization", "translation")
SUMMARY_PAIRS = (("document", "summary"), ("article", "highlights"), ("dialogue", "summary"),
                 ("text", "summary"))
PAIR_NAMES = ("translation", "translations")
SOURCE_NAMES = ("source", "src", "source_text")
TARGET_NAMES = ("target", "tgt", "target_text")
# ISO 639-1: two-letter language codes (a column named by one is a side of a translation pair).
ISO_639_1 = frozenset((
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy "
    "da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu "
    "hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb "
    "lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om "
    "or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw "
    "ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu").split())
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                  "pt": "Portuguese", "nl": "Dutch", "ro": "Romanian", "ru": "Russian", "zh": "Chinese",
                  "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "pl": "Polish", "cs": "Czech",
                  "tr": "Turkish", "sv": "Swedish", "da": "Danish", "fi": "Finnish", "uk": "Ukrainian",
                  "hi": "Hindi", "el": "Greek", "hu": "Hungarian", "no": "Norwegian"}
FLAGS = "--task summarization|translation, --source-column/--target-column, --source-lang/--target-lang"


def language_name(code: str | None) -> str:
    """English name of an ISO 639-1 code (for prompts and T5's task prefixes); the code if unknown."""
    return LANGUAGE_NAMES.get((code or "").lower(), code or "?")


@dataclass
class Seq2SeqMapping:
    task: str
    # role -> column: {"source", "target"} for plain columns, {"pair"} for a translation dict column
    columns: dict[str, str]
    source_lang: str | None = None
    target_lang: str | None = None
    note: str | None = None                    # how the direction was decided, when it was guessed
    label_columns: tuple[str, ...] = ()        # (Mapping's multi-label 0/1 columns: none here)


def _lang_columns(columns: list[str]) -> dict[str, str]:
    """Language code -> column for the columns named by an ISO 639-1 code (first spelling wins)."""
    out: dict[str, str] = {}
    for c in columns:
        k = c.strip().lower()
        if k in ISO_639_1 and k not in out:
            out[k] = c
    return out


def _summary_pair(columns: list[str]) -> tuple[str, str] | None:
    for src, tgt in SUMMARY_PAIRS:
        s, t = _find(columns, (src,)), _find(columns, (tgt,))
        if s and t:
            return s, t
    return None


def looks_seq2seq(columns: list[str]) -> str | None:
    """The seq2seq task the columns alone point to (no flags), or None."""
    if _find(columns, PAIR_NAMES):
        return "translation"
    if len(_lang_columns(columns)) >= 2:
        return "translation"
    if _summary_pair(columns):
        return "summarization"
    return None


def infer_seq2seq_mapping(columns: list[str], *, task: str | None = None, source_column: str | None = None,
                          target_column: str | None = None, source_lang: str | None = None,
                          target_lang: str | None = None, other_columns_given: bool = False,
                          fits_other_task: bool = False) -> Seq2SeqMapping | None:
    """The source/target columns of a summarization or translation set, or None when the data is
    for another task (then the caller's own inference runs). Explicit arguments win.

    `other_columns_given`: the caller got column flags of another task (--text-column, ...);
    `fits_other_task`: the columns also fit classification or generation (ambiguous without --task)."""
    source_lang = source_lang.strip().lower() if source_lang else None
    target_lang = target_lang.strip().lower() if target_lang else None
    if source_lang and source_lang == target_lang:
        raise DataError(f"the source and target language are both {source_lang!r}",
                        "translation needs two different languages: check --source-lang/--target-lang")
    if task is not None and task not in SEQ2SEQ_TASKS:
        if source_column or target_column:
            raise DataError(f"--source-column/--target-column are for summarization and translation, "
                            f"not {task}", "drop them, or pass --task summarization or translation")
        return None
    if task is None:
        if other_columns_given:
            return None
        if source_column or target_column:
            if not (source_lang and target_lang):
                raise DataError("--source-column/--target-column given without a task",
                                "pass --task summarization, or --task translation with "
                                "--source-lang and --target-lang")
            task = "translation"
        else:
            task = looks_seq2seq(columns)
            if task is None and source_lang and target_lang and _find(columns, SOURCE_NAMES) \
                    and _find(columns, TARGET_NAMES):
                task = "translation"
            if task is None:
                return None
            if fits_other_task:
                raise DataError(f"the columns fit {task} and another task: {', '.join(columns)}",
                                f"choose with {FLAGS}, or --task")
    if task == "summarization":
        return _summarization_mapping(columns, source_column, target_column)
    return _translation_mapping(columns, source_column, target_column, source_lang, target_lang)


def _summarization_mapping(columns, source_column, target_column) -> Seq2SeqMapping:
    pair = _summary_pair(columns) or (None, None)
    src_names = tuple(n for n in (pair[0], "document", "article", "dialogue", "text", *SOURCE_NAMES) if n)
    tgt_names = tuple(n for n in (pair[1], "summary", "highlights", *TARGET_NAMES) if n)
    src = _need(columns, source_column, tuple(n.lower() for n in src_names), "document (source)", "--source-column")
    tgt = _need(columns, target_column, tuple(n.lower() for n in tgt_names), "summary (target)", "--target-column")
    if src == tgt:
        raise DataError(f"the source and target column are both {src!r}",
                        "name two different columns with --source-column/--target-column")
    return Seq2SeqMapping("summarization", {"source": src, "target": tgt})


def _translation_mapping(columns, source_column, target_column, source_lang, target_lang) -> Seq2SeqMapping:
    pair = _find(columns, PAIR_NAMES)
    if pair and not (source_column or target_column):
        # languages come from the flags, or from the first row's keys (read in normalise_seq2seq)
        return Seq2SeqMapping("translation", {"pair": pair}, source_lang, target_lang)
    langs = _lang_columns(columns)
    if not (source_column or target_column) and len(langs) >= 2:
        if source_lang and target_lang:
            for code in (source_lang, target_lang):
                if code not in langs:
                    raise DataError(f"no column named {code!r} for --{'source' if code == source_lang else 'target'}"
                                    f"-lang; the language columns are: {', '.join(langs.values())}",
                                    "pass the code of one of those columns")
            return Seq2SeqMapping("translation", {"source": langs[source_lang], "target": langs[target_lang]},
                                  source_lang, target_lang)
        if len(langs) > 2 or (source_lang or target_lang):
            codes = list(langs)
            if len(langs) == 2 and (source_lang or target_lang):
                s = source_lang or next(c for c in codes if c != target_lang)
                t = target_lang or next(c for c in codes if c != source_lang)
                if s in langs and t in langs and s != t:
                    return Seq2SeqMapping("translation", {"source": langs[s], "target": langs[t]}, s, t)
            raise DataError(f"several language columns ({', '.join(langs.values())}): which direction?",
                            "pass --source-lang and --target-lang")
        s, t = list(langs)[:2]
        return Seq2SeqMapping("translation", {"source": langs[s], "target": langs[t]}, s, t,
                              note=f"translating {s} -> {t} (the order of the language columns); "
                                   "pass --source-lang/--target-lang to change it")
    src = _need(columns, source_column, SOURCE_NAMES, "source", "--source-column")
    tgt = _need(columns, target_column, TARGET_NAMES, "target", "--target-column")
    if src == tgt:
        raise DataError(f"the source and target column are both {src!r}",
                        "name two different columns with --source-column/--target-column")
    s = source_lang or (src.lower() if src.lower() in ISO_639_1 else None)
    t = target_lang or (tgt.lower() if tgt.lower() in ISO_639_1 else None)
    if not (s and t):
        raise DataError(f"translation from column {src!r} to {tgt!r}: the languages are unknown",
                        "pass --source-lang and --target-lang (ISO 639-1 codes, e.g. en and de)")
    if s == t:
        raise DataError(f"the source and target language are both {s!r}",
                        "translation needs two different languages: check --source-lang/--target-lang")
    return Seq2SeqMapping("translation", {"source": src, "target": tgt}, s, t)


# -- normalisation -------------------------------------------------------------------------------
def _cell(v) -> str | None:
    """A text cell as stripped text; None when missing (None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (list, tuple, dict)):
        return None
    return (v if isinstance(v, str) else str(v)).strip()


def _pair(v, row: str, col: str) -> dict:
    if isinstance(v, str):           # a CSV cell holding JSON
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DataError(f"{row}: the {col!r} column holds text that is not a JSON object",
                            'store each pair as {"en": "...", "de": "..."}') from None
    if not isinstance(v, dict):
        raise DataError(f"{row}: the {col!r} column holds a {type(v).__name__}, not a "
                        "{language: text} pair", 'store each pair as {"en": "...", "de": "..."}')
    return v


def pair_languages(mapping: Seq2SeqMapping, first_pair: dict) -> tuple[str, str, str | None]:
    """(source, target, note) for a translation pair column: the flags, else the first row's two keys
    in their order."""
    keys = [str(k).lower() for k in first_pair]
    s, t = mapping.source_lang, mapping.target_lang
    if s and t:
        return s, t, None
    if len(keys) != 2 and not (s or t):
        raise DataError(f"the pairs hold {len(keys)} languages ({', '.join(keys)}): which direction?",
                        "pass --source-lang and --target-lang")
    if s or t:
        rest = [k for k in keys if k != (s or t)]
        if not rest:
            raise DataError(f"the pairs hold only {', '.join(keys)}", "pass both --source-lang and --target-lang")
        return (s, rest[0], None) if s else (rest[0], t, None)
    return keys[0], keys[1], (f"translating {keys[0]} -> {keys[1]} (the order of the pair's keys); pass "
                              "--source-lang/--target-lang to change it")


def normalise_seq2seq(table: dict[str, list], mapping: Seq2SeqMapping, split: str) -> Normalised:
    """Rows -> {"source", "target"} records. Any row with a missing or empty side is an error that
    names the row (1-based, as in the file) and how many more there are."""
    cols = mapping.columns
    if "pair" in cols:
        col = cols["pair"]
        values = table[col]
        srcs, tgts = [], []
        s, t = mapping.source_lang, mapping.target_lang
        for i, v in enumerate(values):
            p = {str(k).lower(): x for k, x in _pair(v, f"row {i + 1} of {split}", col).items()}
            for side, code in (("source", s), ("target", t)):
                if code not in p:
                    raise DataError(f"row {i + 1} of {split}: the {col!r} pair has no {code!r} text "
                                    f"(its languages: {', '.join(p) or 'none'})",
                                    f"give every pair both languages, or check --{side}-lang")
            srcs.append(p[s])
            tgts.append(p[t])
        names = (f"{col}[{s}]", f"{col}[{t}]")
    else:
        srcs, tgts = table[cols["source"]], table[cols["target"]]
        names = (cols["source"], cols["target"])
    records = []
    empty: dict[str, list[int]] = {"source": [], "target": []}
    for i, (a, b) in enumerate(zip(srcs, tgts)):
        a, b = _cell(a), _cell(b)
        if not a:
            empty["source"].append(i)
        if not b:
            empty["target"].append(i)
        if a and b:
            records.append({"source": a, "target": b})
    for side, name in zip(("source", "target"), names):
        rows = empty[side]
        if rows:
            more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
            raise DataError(f"row {rows[0] + 1} of {split}{more} has an empty {side} ({name!r})",
                            f"fill in or remove those rows: a pair with an empty {side} cannot be learned")
    return Normalised(records, len(srcs))
