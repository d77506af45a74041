"""Which columns hold what, which task that means, and turning raw tables into normalised records.

Classification records are `{"text": str, "label": str}`, with `"text_pair": str` for sentence
pairs; multi-label records carry `"labels": [str, ...]` instead of `"label"` (autotrain/data/
multilabel.py). Generation records are
`{"messages": [{"role": "system"?}, {"role": "user"}, {"role": "assistant"}]}`.
Column names match case-insensitively; the first name in each list that exists wins.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from autoft.errors import DataError

TEXT_NAMES = ("text", "sentence", "review", "content", "document", "utterance", "tweet", "comment",
              "body", "sms", "passage")
LABEL_NAMES = ("label", "labels", "class", "category", "intent", "target", "sentiment", "topic",
               "label_text", "y")
MESSAGES_NAMES = ("messages", "conversations", "conversation", "chat")
PROMPT_NAMES = ("instruction", "prompt", "question", "query")
INPUT_NAMES = ("input", "context")                     # extra prompt text next to an instruction
RESPONSE_NAMES = ("output", "response", "completion", "answer", "chosen")
SYSTEM_NAMES = ("system", "system_prompt")
# Sentence-pair classification (GLUE/SNLI/QNLI conventions): (first, second) column names.
PAIR_NAMES = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
              ("question1", "question2"), ("text_a", "text_b"), ("text1", "text2"))

ROLE_MAP = {"system": "system", "user": "user", "human": "user", "prompter": "user",
            "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
            "chatgpt": "assistant"}

FLAGS = ("--text-column/--label-column for classification (--text-pair-column for sentence pairs), "
         "--prompt-column/--response-column for generation, or --task")


@dataclass
class Mapping:
    task: str
    # role (text, text_pair, label, labels, prompt, input, response, system, messages) -> column name
    columns: dict[str, str]
    # multi-label as several 0/1 columns: those columns, in order (autotrain/data/multilabel.py)
    label_columns: tuple[str, ...] = ()


def _find(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in reversed(columns)}
    for n in names:
        if n in lower:
            return lower[n]
    return None


def _need(columns: list[str], given: str | None, names: tuple[str, ...], role: str, flag: str) -> str:
    if given is not None:
        if given in columns:
            return given
        ci = _find(columns, (given.lower(),))
        if ci:
            return ci
        raise DataError(f"column {given!r} (from {flag}) is not in the data; its columns are: "
                        f"{', '.join(columns)}", f"pass {flag} with one of those names")
    found = _find(columns, names)
    if found is None:
        raise DataError(f"no {role} column found; the data's columns are: {', '.join(columns)}",
                        f"name the {role} column with {flag} NAME")
    return found


def infer_mapping(columns: list[str], *, task: str | None = None, text_column: str | None = None,
                  label_column: str | None = None, prompt_column: str | None = None,
                  response_column: str | None = None, text_pair_column: str | None = None) -> Mapping:
    """Decide the task and which column plays which role. Explicit arguments always win."""
    if task not in (None, "classification", "generation"):
        raise DataError(f"unknown task {task!r}", "use --task classification or --task generation")
    pair = None if text_column and not text_pair_column else find_pair(columns, text_pair_column)
    if task is None:
        if text_column or label_column or text_pair_column:
            task = "classification"
        elif prompt_column or response_column:
            task = "generation"
        else:
            cls = (_find(columns, TEXT_NAMES) or pair) and _find(columns, LABEL_NAMES)
            gen = _find(columns, MESSAGES_NAMES) or (_find(columns, PROMPT_NAMES + INPUT_NAMES)
                                                     and _find(columns, RESPONSE_NAMES))
            if cls and gen:
                raise DataError(f"the columns fit both classification and generation: {', '.join(columns)}",
                                f"choose with {FLAGS}")
            if not cls and not gen:
                raise DataError(f"cannot tell the task from the columns: {', '.join(columns)}",
                                f"name them with {FLAGS}")
            task = "classification" if cls else "generation"
    if task == "classification":
        if pair is not None:
            return pair_mapping(columns, pair, text_column, label_column)
        return Mapping(task, {
            "text": _need(columns, text_column, TEXT_NAMES, "text", "--text-column"),
            "label": _need(columns, label_column, LABEL_NAMES, "label", "--label-column"),
        })
    # generation
    if prompt_column is None and response_column is None:
        msgs = _find(columns, MESSAGES_NAMES)
        if msgs:
            return Mapping(task, {"messages": msgs})
    prompt = _need(columns, prompt_column, PROMPT_NAMES, "prompt", "--prompt-column") \
        if prompt_column or _find(columns, PROMPT_NAMES) or not _find(columns, INPUT_NAMES) \
        else _find(columns, INPUT_NAMES)          # plain input/output data: input is the prompt
    cols = {"prompt": prompt,
            "response": _need(columns, response_column, RESPONSE_NAMES, "response", "--response-column")}
    extra = _find([c for c in columns if c not in cols.values()], INPUT_NAMES)
    if extra:
        cols["input"] = extra
    system = _find(columns, SYSTEM_NAMES)
    if system:
        cols["system"] = system
    return Mapping(task, cols)


# -- sentence pairs ------------------------------------------------------------------------------
def find_pair(columns: list[str], text_pair_column: str | None = None) -> tuple[str | None, str] | None:
    """(first, second) columns of a sentence pair, or None. With `text_pair_column` the second is
    that column and the first is left to --text-column (None here); without it, the first pair of
    PAIR_NAMES whose two columns both exist."""
    if text_pair_column is not None:
        return None, _need(columns, text_pair_column, (), "text pair", "--text-pair-column")
    for a, b in PAIR_NAMES:
        fa, fb = _find(columns, (a,)), _find(columns, (b,))
        if fa and fb:
            return fa, fb
    return None


def pair_mapping(columns: list[str], pair: tuple[str | None, str], text_column: str | None,
                 label_column: str | None) -> Mapping:
    """Classification of (text, text_pair): the first column from the pair found or --text-column."""
    first, second = pair
    text = _need(columns, text_column, TEXT_NAMES, "text", "--text-column") if first is None or text_column \
        else first
    if text == second:
        raise DataError(f"the text and the text-pair column are both {text!r}",
                        "name two different columns with --text-column and --text-pair-column")
    return Mapping("classification", {
        "text": text, "text_pair": second,
        "label": _need(columns, label_column, LABEL_NAMES, "label", "--label-column"),
    })


# -- labels --------------------------------------------------------------------------------------
def _label_str(v) -> tuple[str | None, str]:
    """One raw label -> (normalised string or None if missing, kind: number|name|missing)."""
    if v is None:
        return None, "missing"
    if isinstance(v, bool):
        return str(v).lower(), "number"
    if isinstance(v, int):
        return str(v), "number"
    if isinstance(v, float):
        if math.isnan(v):
            return None, "missing"
        if v.is_integer():
            return str(int(v)), "number"
        raise DataError(f"the label column holds non-whole numbers (e.g. {v})",
                        "autoft does single-label classification; regression targets are not "
                        "supported, so map them to class names")
    if isinstance(v, (list, tuple, dict, set)):
        raise DataError(f"the label column holds {type(v).__name__}s (e.g. {v!r:.40}), i.e. several "
                        "labels per row", "autoft does single-label classification: keep one label per row")
    s = str(v).strip()
    if not s or s.lower() in ("nan", "null", "none"):
        return None, "missing"
    t = s[1:] if s[0] in "+-" else s
    if t.isdigit():
        return str(int(s)), "number"
    return s, "name"


def label_map(values) -> dict:
    """Distinct raw labels -> normalised strings (None for missing). Raises on mixed kinds."""
    try:
        distinct = set(values)
    except TypeError:       # unhashable: lists (multi-label) or dicts; _label_str says so
        for v in values:
            _label_str(v)
        raise
    out, kinds = {}, {}
    for v in distinct:
        s, kind = _label_str(v)
        out[v] = s
        kinds.setdefault(kind, repr(v))
    if "number" in kinds and "name" in kinds:
        raise DataError(f"the label column mixes numbers (e.g. {kinds['number']}) and names "
                        f"(e.g. {kinds['name']})", "use one kind of label for every row, e.g. all "
                        "class names")
    return out


def sort_labels(labels) -> list[str]:
    """Numeric labels in numeric order (2 before 10), names alphabetically."""
    labels = list(labels)
    if labels and all(l.lstrip("+-").isdigit() for l in labels):
        return sorted(labels, key=int)
    return sorted(labels)


# -- normalisation -------------------------------------------------------------------------------
@dataclass
class Normalised:
    records: list[dict]
    total: int                                   # rows before dropping
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> count


def normalise_classification(table: dict[str, list], cols: dict[str, str], lmap: dict) -> Normalised:
    if "text_pair" in cols:
        return normalise_pairs(table, cols, lmap)
    texts, labels = table[cols["text"]], table[cols["label"]]
    records = []
    append = records.append
    empty = missing = 0
    for t, l in zip(texts, labels):
        if t.__class__ is not str:
            t = _cell_text(t, cols["text"], "--text-column")
        t = t.strip()
        if not t:
            empty += 1
            continue
        lab = lmap[l]
        if lab is None:
            missing += 1
            continue
        append({"text": t, "label": lab})
    dropped = {k: v for k, v in (("empty text", empty), ("no label", missing)) if v}
    return Normalised(records, len(texts), dropped)


def _cell_text(t, column: str, flag: str) -> str:
    """A non-str text cell as text ("" when missing); lists and dicts are an error."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return ""
    if isinstance(t, (list, tuple, dict)):
        raise DataError(f"the text column {column!r} holds {type(t).__name__}s, not text",
                        f"name the column that holds the text with {flag}")
    return str(t)


def normalise_pairs(table: dict[str, list], cols: dict[str, str], lmap: dict) -> Normalised:
    """Sentence pairs: {"text", "text_pair", "label"}; a row with either side empty is dropped."""
    records = []
    empty = missing = 0
    for t, u, l in zip(table[cols["text"]], table[cols["text_pair"]], table[cols["label"]]):
        t = (t if t.__class__ is str else _cell_text(t, cols["text"], "--text-column")).strip()
        u = (u if u.__class__ is str else _cell_text(u, cols["text_pair"], "--text-pair-column")).strip()
        if not t or not u:
            empty += 1
            continue
        lab = lmap[l]
        if lab is None:
            missing += 1
            continue
        records.append({"text": t, "text_pair": u, "label": lab})
    dropped = {k: v for k, v in (("empty text", empty), ("no label", missing)) if v}
    return Normalised(records, len(table[cols["text"]]), dropped)


def _text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return (v if isinstance(v, str) else str(v)).strip()


def normalise_generation(table: dict[str, list], cols: dict[str, str]) -> Normalised:
    records: list[dict] = []
    dropped = {"empty prompt": 0, "empty response": 0}
    if "messages" in cols:
        col = table[cols["messages"]]
        for i, conv in enumerate(col):
            msgs = _messages(conv, i)
            users = [m for m in msgs if m["role"] == "user"]
            if not users or not any(m["content"] for m in users):
                dropped["empty prompt"] += 1
            elif not msgs or msgs[-1]["role"] != "assistant" or not msgs[-1]["content"]:
                dropped["empty response"] += 1
            else:
                records.append({"messages": msgs})
        n = len(col)
    else:
        prompts, responses = table[cols["prompt"]], table[cols["response"]]
        n = len(prompts)
        inputs = table[cols["input"]] if "input" in cols else [None] * n
        systems = table[cols["system"]] if "system" in cols else [None] * n
        for p, x, r, s in zip(prompts, inputs, responses, systems):
            p, x, r = _text(p), _text(x), _text(r)
            user = p + "\n\n" + x if p and x else (p or x)
            if not user:
                dropped["empty prompt"] += 1
                continue
            if not r:
                dropped["empty response"] += 1
                continue
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r}]
            s = _text(s)
            if s:
                msgs.insert(0, {"role": "system", "content": s})
            records.append({"messages": msgs})
    return Normalised(records, n, {k: v for k, v in dropped.items() if v})


def _messages(conv, i: int) -> list[dict]:
    if isinstance(conv, str):           # a CSV cell holding JSON
        try:
            conv = json.loads(conv)
        except json.JSONDecodeError:
            raise DataError(f"row {i + 1}: the messages column holds text that is not a JSON list",
                            'store messages as a list of {"role": ..., "content": ...} objects') from None
    if conv is None:
        return []
    if not isinstance(conv, (list, tuple)):
        raise DataError(f"row {i + 1}: messages must be a list, got {type(conv).__name__}",
                        'store messages as a list of {"role": ..., "content": ...} objects')
    out = []
    for m in conv:
        if not isinstance(m, dict):
            raise DataError(f"row {i + 1}: a message is a {type(m).__name__}, not an object",
                            'store messages as {"role": ..., "content": ...} objects')
        role = m.get("role", m.get("from"))
        mapped = ROLE_MAP.get(str(role).lower()) if role is not None else None
        if mapped is None:
            raise DataError(f"row {i + 1}: unknown message role {role!r}",
                            "use the roles system, user and assistant")
        out.append({"role": mapped, "content": _text(m.get("content", m.get("value")))})
    return out
