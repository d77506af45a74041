"""Bad input to the data layer: every case gets a one-line DataError saying what is wrong and how
to fix it. Each case writes its own bad files into tmp_path and asserts the message."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoft.autotrain.data import load_data
from autoft.errors import AutoftError, DataError


def _w(base: Path, name: str, content: str | bytes) -> Path:
    p = base / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def _csv(rows: list[tuple], header=("text", "label")) -> str:
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _jsonl(recs: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def _balanced(n: int = 20, labels=("pos", "neg")) -> list[tuple]:
    return [(f"example number {i} is here", labels[i % len(labels)]) for i in range(n)]


def _save_dict(path: Path, split_names: list[str]) -> Path:
    import datasets
    datasets.DatasetDict({n: datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]})
                          for n in split_names}).save_to_disk(str(path))
    return path


def _err(tmp_path: Path, make, **kw) -> str:
    """Run load_data on what `make(tmp_path)` returns; return the DataError's one-line message."""
    src = make(tmp_path)
    with pytest.raises(DataError) as ei:
        load_data(src, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, "errors must be one line"
    assert ei.value.fix, "every data error says how to fix it"
    assert isinstance(ei.value, AutoftError)
    return msg


# (id, builder(tmp_path) -> source, load_data kwargs, regexes the message must match)
CASES = [
    ("missing-file", lambda d: d / "nope.csv", {}, [r"no file or folder at .*nope\.csv", r"check the path"]),
    ("unknown-format", lambda d: _w(d, "data.xlsx", "x"), {},
     [r"unknown data format '\.xlsx'", r"CSV \(\.csv\).*JSONL \(\.jsonl\).*Parquet"]),
    ("no-suffix", lambda d: _w(d, "data", "text,label\n"), {}, [r"unknown data format '\(no suffix\)'"]),
    ("non-utf8", lambda d: _w(d, "bad.csv", b"text,label\ngood,pos\ncaf\xe9 au lait,neg\n"), {},
     [r"not UTF-8: byte 0xe9 at byte offset 23 \(line 3\)", r"iconv -f latin1 -t utf-8 bad\.csv"]),
    ("broken-jsonl-line", lambda d: _w(d, "d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n'),
     {}, [r"line 3 of .*d\.jsonl is not valid JSON", r"fix or remove that line"]),
    ("jsonl-not-object", lambda d: _w(d, "d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n'), {},
     [r"line 2 of .*d\.jsonl is a JSON list, not an object"]),
    ("empty-file", lambda d: _w(d, "e.csv", ""), {}, [r"e\.csv is empty", r"add a header line"]),
    ("header-only", lambda d: _w(d, "h.csv", "text,label\n"), {}, [r"h\.csv has no rows", r"add rows"]),
    ("unknown-columns", lambda d: _w(d, "c.csv", _csv([("a", "b")], header=("sentence_a", "y_true"))), {},
     [r"cannot tell the task from the columns: sentence_a, y_true", r"--text-column/--label-column",
      r"--prompt-column/--response-column"]),
    ("text-column-override-missing", lambda d: _w(d, "c.csv", _csv(_balanced())), {"text_column": "body"},
     [r"column 'body' \(from --text-column\) is not in the data; its columns are: text, label",
      r"pass --text-column with one of those names"]),
    ("no-label-column", lambda d: _w(d, "c.csv", _csv([("a", "b")], header=("text", "foo"))),
     {"task": "classification"}, [r"no label column found; the data's columns are: text, foo",
                                  r"--label-column NAME"]),
    ("no-response-column", lambda d: _w(d, "g.jsonl", _jsonl([{"instruction": "hi", "reply": "yo"}])),
     {"task": "generation"}, [r"no response column found.*instruction, reply", r"--response-column NAME"]),
    ("too-many-empty-texts", lambda d: _w(d, "c.csv", _csv(_balanced(8) + [("", "pos"), ("   ", "neg")])), {},
     [r"2 of 10 rows in train \(20%\) have an empty text, more than the 5% allowed", r"fill them in"]),
    ("too-many-missing-labels", lambda d: _w(d, "c.csv", _csv(_balanced(8) + [("x y", ""), ("z w", "")])), {},
     [r"2 of 10 rows in train \(20%\) have no label"]),
    ("single-class", lambda d: _w(d, "c.csv", _csv(_balanced(10, labels=("pos",)))), {},
     [r"train has a single class \('pos'\); classification needs at least two", r"--label-column"]),
    ("class-too-small-to-split", lambda d: _w(d, "c.csv", _csv(_balanced(30) + [("lonely one", "rare")])), {},
     [r"class 'rare' \(1 row\) has too few rows to cut a stratified test split",
      r"provide a test file, add examples, or remove that class"]),
    ("unseen-test-labels", lambda d: (_w(d, "f/train.csv", _csv(_balanced(20))),
                                      _w(d, "f/test.csv", _csv([("x", "pos"), ("y", "neutral")])))[0].parent, {},
     [r"1 label\(s\) in test never occur in train: 'neutral'", r"add train examples for them or remove those test rows"]),
    ("unseen-validation-labels", lambda d: (_w(d, "f/train.csv", _csv(_balanced(20))),
                                            _w(d, "f/dev.csv", _csv([("x", "meh"), ("y", "ugh")])))[0].parent, {},
     [r"2 label\(s\) in validation never occur in train: 'meh', 'ugh'"]),
    ("mixed-label-types", lambda d: _w(d, "m.jsonl", _jsonl([{"text": f"t{i}", "label": 1 if i % 2 else "pos"}
                                                             for i in range(10)])), {},
     [r"the label column mixes numbers \(e\.g\. 1\) and names \(e\.g\. 'pos'\)", r"use one kind of label"]),
    ("mixed-label-types-csv", lambda d: _w(d, "m.csv", _csv([("a b", "0"), ("c d", "1"), ("e f", "positive")] * 4)),
     {}, [r"mixes numbers \(e\.g\. '[01]'\) and names \(e\.g\. 'positive'\)"]),
    ("text-column-holds-lists", lambda d: _w(d, "l.jsonl", _jsonl([{"text": ["a", "b"], "label": "x"}] * 4)), {},
     [r"the text column 'text' holds lists, not text", r"--text-column"]),
    ("float-labels", lambda d: _w(d, "f.jsonl", _jsonl([{"text": f"t{i}", "label": i / 3} for i in range(10)])), {},
     [r"non-whole numbers", r"regression targets are not supported"]),
    ("multi-label-empty-list", lambda d: _w(d, "f.jsonl", _jsonl([{"text": f"t{i}", "labels": ["a", "b"][:i % 3]}
                                                                   for i in range(30)])),
     {}, [r"\d+ of \d+ rows in train have an empty label list", r"pass --allow-empty-labels"]),
    ("multi-label-mixed-cells", lambda d: _w(d, "f.jsonl", _jsonl([{"text": f"t{i}", "labels": ["a", "b"] if i else "a"}
                                                                    for i in range(8)])),
     {}, [r"row 1: the label column 'labels' holds 'a', not a list", r"write every row's labels as a list"]),
    ("multi-label-unseen-test-label", lambda d: (_w(d, "f/train.jsonl", _jsonl([{"text": f"t{i}", "labels": ["a", "b"][i % 2:]}
                                                                                 for i in range(20)])),
                                                 _w(d, "f/test.jsonl", _jsonl([{"text": "x", "labels": ["c"]}])))[0].parent,
     {}, [r"1 label\(s\) in test never occur in train: 'c'", r"add train examples for them"]),
    ("label-columns-not-binary", lambda d: _w(d, "m.csv", _csv([(f"t{i}", i % 2, i % 3) for i in range(12)],
                                                               header=("text", "toxic", "insult"))),
     {"label_columns": "toxic,insult"}, [r"label column 'insult' holds '2', not 0/1", r"0 or 1 per row"]),
    ("label-column-never-set", lambda d: _w(d, "m.csv", _csv([(f"t{i}", i % 2, 0) for i in range(30)],
                                                             header=("comment", "toxic", "threat"))),
     {}, [r"1 label\(s\) never occur in train: 'threat'", r"leave their columns out \(--label-columns\)"]),
    ("label-columns-one", lambda d: _w(d, "m.csv", _csv([(f"t{i}", i % 2) for i in range(12)], header=("text", "toxic"))),
     {"label_columns": "toxic"}, [r"--label-columns names one column \('toxic'\)", r"--label-column for one"]),
    ("pair-same-column", lambda d: _w(d, "p.csv", _csv([(f"a{i}", f"b{i}", "x" if i % 2 else "y") for i in range(12)],
                                                       header=("text", "other", "label"))),
     {"text_pair_column": "text"}, [r"the text and the text-pair column are both 'text'"]),
    ("pair-missing-column", lambda d: _w(d, "p.csv", _csv([(f"a{i}", "x") for i in range(12)])),
     {"text_pair_column": "hypothesis"}, [r"column 'hypothesis' \(from --text-pair-column\) is not in the data",
                                          r"pass --text-pair-column with one of those names"]),
    ("empty-responses", lambda d: _w(d, "g.jsonl", _jsonl([{"instruction": f"do {i}", "input": "",
                                                            "output": "done" if i < 6 else ""} for i in range(10)])),
     {}, [r"4 of 10 rows in train \(40%\) have an empty output/response"]),
    ("empty-prompts", lambda d: _w(d, "g.jsonl", _jsonl([{"prompt": "" if i < 5 else "q", "response": "a"}
                                                         for i in range(10)])), {},
     [r"5 of 10 rows in train \(50%\) have an empty prompt"]),
    ("ambiguous-columns", lambda d: _w(d, "a.csv", _csv([("t", "l", "p", "r")], header=("text", "label", "prompt", "response"))),
     {}, [r"the columns fit both classification and generation: text, label, prompt, response", r"--task"]),
    ("ragged-csv", lambda d: _w(d, "r.csv", "text,label\nfine,pos\nnot, quoted,neg\n"), {},
     [r"line 3 of .*r\.csv has 3 fields but the header has 2", r"quote fields that contain the separator"]),
    ("json-not-list", lambda d: _w(d, "j.json", "42"), {}, [r"holds a JSON int, not a list of records"]),
    ("json-invalid", lambda d: _w(d, "j.json", '[{"text": "a", "label": "b"},\n {"text": }]'), {},
     [r"j\.json is not valid JSON: Expecting value at line 2, column 11"]),
    ("json-record-not-object", lambda d: _w(d, "j.json", '[{"text": "a", "label": "b"}, "oops"]'), {},
     [r"record 2 of .*j\.json is a JSON str, not an object"]),
    ("folder-without-train", lambda d: (_w(d, "f/dev.csv", _csv(_balanced())), _w(d, "f/test.csv", _csv(_balanced())))[0].parent,
     {}, [r"folder .*f has no train file \(found: dev\.csv, test\.csv\)", r"name the files train\.csv"]),
    ("empty-folder", lambda d: (d / "empty").mkdir() or d / "empty", {},
     [r"has no train file \(found: no data files\)"]),
    ("hub-id-offline", lambda d: "someone/some-dataset", {},
     [r"cannot be reached offline", r"pass a local path"]),
    ("duplicate-columns", lambda d: _w(d, "d.csv", "text,text,label\na,b,c\n"), {},
     [r"duplicate column names: text", r"rename them"]),
    ("empty-validation-file", lambda d: (_w(d, "f/train.csv", _csv(_balanced())),
                                         _w(d, "f/validation.csv", "text,label\n"))[0].parent, {},
     [r"the validation split of .* has no rows", r"remove the validation file to let autoft cut one"]),
    ("split-missing-column", lambda d: (_w(d, "f/train.csv", _csv(_balanced())),
                                        _w(d, "f/test.csv", _csv([("x",)], header=("text",))))[0].parent, {},
     [r"the test split has no column 'label'; its columns are: text", r"same header"]),
    ("unknown-role", lambda d: _w(d, "c.jsonl", _jsonl([{"messages": [{"role": "narrator", "content": "x"}]}])), {},
     [r"row 1: unknown message role 'narrator'", r"system, user and assistant"]),
    ("corrupt-parquet", lambda d: _w(d, "p.parquet", "this is not parquet"), {},
     [r"cannot read .*p\.parquet as Parquet", r"check that it is a Parquet file"]),
    ("corrupt-save-to-disk", lambda d: (_w(d, "ds/state.json", "{not json"), d / "ds")[1], {},
     [r"cannot load the datasets folder .*ds: ", r"re-save it with Dataset\.save_to_disk"]),
    ("save-to-disk-without-train", lambda d: _save_dict(d / "dd", ["test", "unsupervised"]), {},
     [r"dd has no train split \(splits: test, unsupervised\)", r"save a DatasetDict with a 'train' split"]),
    ("unknown-task", lambda d: _w(d, "c.csv", _csv(_balanced())), {"task": "regression"},
     [r"unknown task 'regression'", r"--task classification or --task generation"]),
    ("bad-fraction", lambda d: _w(d, "c.csv", _csv(_balanced())), {"validation_fraction": 0.7},
     [r"validation_fraction must be between 0 and 0\.5, got 0\.7"]),
    ("generation-too-small-to-split", lambda d: _w(d, "g.jsonl", _jsonl([{"prompt": "q", "response": "a"}] * 2)),
     {}, [r"train has only 2 rows, too few to cut a test split", r"provide a test file"]),
    ("too-few-rows-for-classes", lambda d: _w(d, "c.csv", _csv(_balanced(6, labels=("a", "b", "c")))), {},
     [r"train has 6 rows over 3 classes, too few to cut a stratified validation split|"
      r"too few rows to cut a stratified"]),
]


@pytest.mark.parametrize("make,kwargs,patterns", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_message(tmp_path, monkeypatch, make, kwargs, patterns):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _err(tmp_path, make, **kwargs)
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not in {msg!r}"


def test_at_least_25_cases():
    assert len(CASES) >= 25


def test_semicolon_in_delimited_file_is_named(tmp_path):
    # a ;-separated file saved as .csv shows one column; the message lists it so the user sees why
    msg = _err(tmp_path, lambda d: _w(d, "s.csv", "text;label\nhello;pos\n"))
    assert "single column 'text;label'" in msg and "looks separated by ';'" in msg
    assert "save it comma-separated" in msg


def test_unreadable_file(tmp_path):
    import os
    p = _w(tmp_path, "locked.csv", _csv(_balanced()))
    p.chmod(0)
    if os.access(p, os.R_OK):       # running as root: permissions do not apply
        pytest.skip("root can read any file")
    msg = _err(tmp_path, lambda d: p)
    assert "permission denied" in msg and "chmod" in msg
