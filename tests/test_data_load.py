"""Loading: every format, folders, save_to_disk, task inference, normalisation, splits, and the
real shared data sets."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from autoft.autotrain.data import load_data

SHARED = Path("/work/shared/data")
ROWS = [("I love it", "pos"), ("I hate it", "neg"), ("great stuff", "pos"), ("awful stuff", "neg")] * 10


def _csv_text(rows, header=("text", "label"), delimiter=","):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _shared(name: str) -> Path:
    p = SHARED / name
    if not p.is_dir():
        pytest.skip(f"{p} not present")
    return p


# -- formats -------------------------------------------------------------------------------------
def _write_format(d: Path, fmt: str, rows=ROWS, header=("text", "label"), stem="data") -> Path:
    recs = [dict(zip(header, r)) for r in rows]
    p = d / f"{stem}.{fmt}"
    if fmt == "csv":
        p.write_text(_csv_text(rows, header), encoding="utf-8")
    elif fmt == "tsv":
        p.write_text(_csv_text(rows, header, "\t"), encoding="utf-8")
    elif fmt == "json":
        p.write_text(json.dumps(recs), encoding="utf-8")
    elif fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(recs), p)
    return p


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_each_format_reads_the_same_records(tmp_path, fmt):
    b = load_data(_write_format(tmp_path, fmt))
    assert b.task == "classification"
    assert b.format == fmt
    assert b.label_names == ["neg", "pos"]
    allrecs = sorted((r["text"], r["label"]) for s in b.splits.values() for r in s)
    assert allrecs == sorted(ROWS)
    assert set(b.splits) == {"train", "validation", "test"}


def test_csv_with_bom_and_quoted_commas_and_newlines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"\xef\xbb\xbf" + _csv_text([("a, b\nc", "x"), ("d", "y")] * 10).encode())
    b = load_data(p)
    assert b.columns == {"text": "text", "label": "label"}
    assert "a, b\nc" in {r["text"] for s in b.splits.values() for r in s}


def test_tsv_with_bare_quotes_falls_back_to_no_quoting(tmp_path):
    p = tmp_path / "glue.tsv"
    p.write_text("sentence\tlabel\n" + "".join(f'it \'s a "great {i} film\t{i % 2}\n' for i in range(20)))
    b = load_data(p)
    assert b.label_names == ["0", "1"]
    assert any('"great' in r["text"] for r in b.splits["train"])


def test_json_shapes(tmp_path):
    recs = [{"text": t, "label": l} for t, l in ROWS]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": recs}))
    (tmp_path / "columns.json").write_text(json.dumps({"text": [t for t, _ in ROWS], "label": [l for _, l in ROWS]}))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for name in ("wrapped.json", "columns.json", "lines.json"):
        b = load_data(tmp_path / name)
        assert sum(len(s) for s in b.splits.values()) == len(ROWS), name


def test_integer_labels_become_strings_sorted_numerically(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 12}) + "\n" for i in range(240)))
    b = load_data(p)
    assert b.label_names == [str(i) for i in range(12)]
    assert all(isinstance(r["label"], str) for s in b.splits.values() for r in s)


def test_float_whole_labels_from_parquet_become_ints(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"sentence": [f"t {i}" for i in range(40)], "label": [float(i % 2) for i in range(40)]}), p)
    b = load_data(p)
    assert b.label_names == ["0", "1"] and b.columns["text"] == "sentence"


# -- folders, save_to_disk -----------------------------------------------------------------------
@pytest.mark.parametrize("names", [("train.csv", "validation.csv", "test.csv"),
                                   ("train.jsonl", "dev.jsonl", "test.jsonl"),
                                   ("training.parquet", "valid.csv", "testing.json")])
def test_folder_with_split_files(tmp_path, names):
    fmts = [n.split(".")[1] for n in names]
    stems = [n.split(".")[0] for n in names]
    parts = [ROWS[:24], ROWS[24:32], ROWS[32:]]
    for fmt, stem, rows in zip(fmts, stems, parts):
        _write_format(tmp_path, fmt, rows=rows, stem=stem)
    b = load_data(tmp_path)
    assert [len(b.splits[s]) for s in ("train", "validation", "test")] == [24, 8, 8]
    assert b.format.startswith("folder(")
    assert not any("cut" in n for n in b.notes)       # all splits given: nothing cut


def test_folder_with_sharded_hub_layout(tmp_path):
    (tmp_path / "data").mkdir()
    _write_format(tmp_path / "data", "parquet", rows=ROWS[:20], stem="train-00000-of-00002")
    _write_format(tmp_path / "data", "parquet", rows=ROWS[20:30], stem="train-00001-of-00002")
    _write_format(tmp_path / "data", "parquet", rows=ROWS[30:], stem="test-00000-of-00001")
    b = load_data(tmp_path)
    assert len(b.splits["test"]) == 10
    assert len(b.splits["train"]) + len(b.splits["validation"]) == 30
    assert any("no validation split" in n for n in b.notes)


def test_folder_with_one_unnamed_file(tmp_path):
    _write_format(tmp_path, "csv", stem="my_data")
    b = load_data(tmp_path)
    assert any("only data file, my_data.csv" in n for n in b.notes)


def test_save_to_disk_dataset_dict(tmp_path):
    import datasets
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [t for t, _ in ROWS], "label": [l for _, l in ROWS]}),
        "test": datasets.Dataset.from_dict({"text": ["fine", "bad"], "label": ["pos", "neg"]}),
        "unsupervised": datasets.Dataset.from_dict({"text": ["?"], "label": [""]}),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    b = load_data(tmp_path / "dd")
    assert b.format == "save_to_disk"
    assert [r["text"] for r in b.splits["test"]] == ["fine", "bad"]
    assert len(b.splits["train"]) + len(b.splits["validation"]) == len(ROWS)


def test_save_to_disk_single_dataset_with_class_label(tmp_path):
    import datasets
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in ROWS],
                                     "label": [1 if l == "pos" else 0 for _, l in ROWS]}, features=feats)
    ds.save_to_disk(str(tmp_path / "ds"))
    b = load_data(tmp_path / "ds")
    # ClassLabel ids become the class names (-1, "no label", would be dropped)
    assert b.label_names == ["neg", "pos"]
    assert sum(len(s) for s in b.splits.values()) == len(ROWS)


# -- task inference ------------------------------------------------------------------------------
@pytest.mark.parametrize("header,task,mapping", [
    (("text", "label"), "classification", {"text": "text", "label": "label"}),
    (("Review", "Sentiment"), "classification", {"text": "Review", "label": "Sentiment"}),
    (("content", "category", "id"), "classification", {"text": "content", "label": "category"}),
    (("utterance", "intent"), "classification", {"text": "utterance", "label": "intent"}),
    (("instruction", "input", "output"), "generation", {"prompt": "instruction", "input": "input", "response": "output"}),
    (("prompt", "completion"), "generation", {"prompt": "prompt", "response": "completion"}),
    (("question", "answer"), "generation", {"prompt": "question", "response": "answer"}),
    (("instruction", "context", "response"), "generation", {"prompt": "instruction", "input": "context", "response": "response"}),
    (("system", "prompt", "response"), "generation", {"prompt": "prompt", "response": "response", "system": "system"}),
])
def test_task_inference(tmp_path, header, task, mapping):
    rows = [tuple(f"{h} {i}" if h not in ("label", "Sentiment", "category", "intent") else f"c{i % 2}"
                  for h in header) for i in range(40)]
    p = tmp_path / "d.csv"
    p.write_text(_csv_text(rows, header))
    b = load_data(p)
    assert b.task == task
    assert b.columns == mapping


def test_overrides_win(tmp_path):
    p = tmp_path / "d.csv"
    rows = [(f"title {i}", f"body {i}", f"t{i % 2}", f"c{i % 3}") for i in range(60)]
    p.write_text(_csv_text(rows, ("title", "body", "topic", "class")))
    b = load_data(p, text_column="title", label_column="topic")
    assert b.columns == {"text": "title", "label": "topic"}
    assert b.label_names == ["t0", "t1"]
    # a classification-looking file trained as generation when asked
    g = load_data(p, prompt_column="body", response_column="class")
    assert g.task == "generation"
    assert g.splits["train"][0]["messages"][1]["role"] == "assistant"


def test_generation_records(tmp_path):
    p = tmp_path / "d.jsonl"
    recs = [{"instruction": "Translate", "input": "Hallo", "output": "Hello", "system": "Be brief."},
            {"instruction": "Say hi", "input": "", "output": "Hi"}] * 10
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    b = load_data(p)
    msgs = [r["messages"] for s in b.splits.values() for r in s]
    assert [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate\n\nHallo"},
            {"role": "assistant", "content": "Hello"}] in msgs
    assert [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}] in msgs


def test_chat_messages_and_sharegpt(tmp_path):
    p = tmp_path / "chat.jsonl"
    recs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(10)] + \
           [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(10)]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs[:10]))
    assert load_data(p).columns == {"messages": "messages"}
    p2 = tmp_path / "share.jsonl"
    p2.write_text("".join(json.dumps(r) + "\n" for r in recs[10:]))
    b = load_data(p2)
    roles = {m["role"] for s in b.splits.values() for r in s for m in r["messages"]}
    assert roles == {"user", "assistant"}


def test_few_empty_texts_are_dropped_and_counted(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(_csv_text(ROWS * 3 + [("", "pos"), ("  ", "neg")]))   # 2 of 122 = 1.6%
    b = load_data(p)
    assert sum(len(s) for s in b.splits.values()) == 120
    assert "dropped 2 of 122 train rows with an empty text" in b.notes
    assert "dropped 2 of 122 train rows with an empty text" in b.warnings
    with pytest.raises(Exception, match="more than the 1% allowed"):
        load_data(p, max_empty_fraction=0.01)


# -- splits --------------------------------------------------------------------------------------
def _imbalanced(tmp_path) -> Path:
    p = tmp_path / "d.csv"
    rows = [(f"positive example {i}", "pos") for i in range(150)] + [(f"negative example {i}", "neg") for i in range(50)]
    p.write_text(_csv_text(rows))
    return p


def test_stratified_split_keeps_class_proportions_and_is_seeded(tmp_path):
    p = _imbalanced(tmp_path)
    b = load_data(p)
    sizes = {s: len(v) for s, v in b.splits.items()}
    assert sizes == {"train": 160, "validation": 20, "test": 20}
    for s in ("validation", "test"):
        assert Counter(r["label"] for r in b.splits[s]) == {"pos": 15, "neg": 5}
    assert Counter(r["label"] for r in b.splits["train"]) == {"pos": 120, "neg": 40}
    # nothing lost or repeated
    texts = [r["text"] for v in b.splits.values() for r in v]
    assert len(set(texts)) == 200
    # the note says what was done
    assert any("no test split: cut a stratified 10% of train (20 rows) with seed 42" == n for n in b.notes)
    assert any(n.startswith("no validation split: cut a stratified") for n in b.notes)
    # same seed, same split; other seed, other split
    again = load_data(p)
    assert [r["text"] for r in again.splits["test"]] == [r["text"] for r in b.splits["test"]]
    other = load_data(p, split_seed=7)
    assert {r["text"] for r in other.splits["test"]} != {r["text"] for r in b.splits["test"]}


def test_only_validation_missing_is_cut(tmp_path):
    (tmp_path / "train.csv").write_text(_csv_text(ROWS))
    (tmp_path / "test.csv").write_text(_csv_text(ROWS[:4]))
    b = load_data(tmp_path, validation_fraction=0.25)
    assert len(b.splits["validation"]) == 10 and len(b.splits["test"]) == 4
    assert Counter(r["label"] for r in b.splits["validation"]) == {"pos": 5, "neg": 5}


def test_small_split_is_raised_to_one_row_per_class(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(_csv_text([(f"text {i}", f"c{i % 10}") for i in range(50)]))
    b = load_data(p)
    assert len(b.splits["test"]) == 10 and len(b.splits["validation"]) == 10
    assert {r["label"] for r in b.splits["test"]} == {f"c{i}" for i in range(10)}
    assert any("raised to one row per class" in n for n in b.notes)


def test_generation_split_is_plain_seeded(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(100)))
    b = load_data(p)
    assert [len(b.splits[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    assert any(n.startswith("no test split: cut a random 10%") for n in b.notes)
    assert load_data(p).splits["test"] == b.splits["test"]


# -- real shared data ----------------------------------------------------------------------------
def test_real_sst2():
    b = load_data(_shared("sst2"))
    assert b.task == "classification"
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 67349, "validation": 872, "test": 1821}
    assert b.label_names == ["negative", "positive"]


def test_real_banking77_keeps_irregular_label_names():
    b = load_data(_shared("banking77"))
    assert len(b.label_names) == 77
    assert "Refund_not_showing_up" in b.label_names and "reverted_card_payment?" in b.label_names


def test_real_alpaca_is_generation():
    b = load_data(_shared("alpaca"))
    assert b.task == "generation"
    assert b.columns == {"prompt": "instruction", "input": "input", "response": "output"}
    assert len(b.splits["train"]) == 3598
    with_input = [r for r in b.splits["train"] if "\n\n" in r["messages"][0]["content"]]
    assert with_input, "instruction + input rows join with a blank line"


def test_real_file_single_split_is_cut(tmp_path):
    b = load_data(_shared("tweet_sentiment_de") / "train.csv")
    assert sum(len(v) for v in b.splits.values()) == 1839
    for s in ("validation", "test"):
        assert set(Counter(r["label"] for r in b.splits[s]).values()) <= {61, 62}   # 613 per class, 10%


def test_import_stays_light():
    code = ("import sys, autoft.autotrain.data, autoft.autotrain.demo; "
            "print([m for m in ('torch', 'transformers', 'sklearn', 'datasets', 'pandas', 'pyarrow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_hub_id_online_goes_through_load_dataset(monkeypatch):
    import datasets
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    calls = []

    def fake_load_dataset(repo_id):
        calls.append(repo_id)
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"text": [t for t, _ in ROWS], "label": [l for _, l in ROWS]}),
            "validation": datasets.Dataset.from_dict({"text": ["ok"], "label": ["pos"]}),
            "test": datasets.Dataset.from_dict({"text": ["meh"], "label": ["neg"]}),
        })

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    b = load_data("someone/reviews")
    assert calls == ["someone/reviews"] and b.format == "hub"
    assert len(b.splits["train"]) == len(ROWS) and b.splits["test"] == [{"text": "meh", "label": "neg"}]


def test_hub_id_unreachable_is_a_data_error(monkeypatch):
    import datasets
    from autoft.errors import DataError
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)

    def fail(repo_id):
        raise ConnectionError("Couldn't reach 'someone/reviews' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"someone/reviews is not a local path and loading it as a Hub "
                                        r"dataset failed: Couldn't reach .*; check the id and your network"):
        load_data("someone/reviews")


def test_optional_input_column_may_be_absent_from_a_split(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"instruction": f"i{k}", "input": "x", "output": "o"}) + "\n"
                                                  for k in range(20)))
    (tmp_path / "test.jsonl").write_text(json.dumps({"instruction": "t", "output": "o"}) + "\n")
    b = load_data(tmp_path)
    assert b.splits["test"] == [{"messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "o"}]}]
    assert b.summary()["rows"] == {"train": 18, "validation": 2, "test": 1}


@pytest.mark.parametrize("content", [
    b"\xef\xbb\xbftext,label\n\"a, b\nc\",x\nplain,0001\n,y\n\n\"quoted \"\"q\"\"\",NA\n",
    b"text,label\nfine,pos\nnot, quoted,neg\n",                 # ragged: arrow fails, stdlib explains
    b"text,label\ncaf\xe9,x\n",                                 # latin-1: arrow fails, stdlib explains
])
def test_arrow_and_stdlib_csv_readers_agree(tmp_path, monkeypatch, content):
    from autoft.autotrain.data import readers
    from autoft.errors import DataError
    p = tmp_path / "d.csv"
    p.write_bytes(content)

    def read():
        try:
            return readers.read_file(p, "csv")
        except DataError as e:
            return str(e)

    monkeypatch.setattr(readers, "ARROW_MIN_BYTES", 10**12)
    stdlib = read()
    monkeypatch.setattr(readers, "ARROW_MIN_BYTES", 0)
    assert readers._read_delimited_arrow(p, ",") is None or isinstance(stdlib, dict)
    assert read() == stdlib
    if isinstance(stdlib, dict):    # strings stay strings: no NA -> null, no 0001 -> 1
        assert stdlib == {"text": ["a, b\nc", "plain", "", 'quoted "q"'], "label": ["x", "0001", "y", "NA"]}


def test_long_documents_beyond_the_csv_field_limit(tmp_path):
    long = "word " * 40_000                                   # 200k characters, over csv's 128 KiB default
    p = tmp_path / "d.csv"
    p.write_text(_csv_text([(long, "a"), ("short", "b")] * 10))
    b = load_data(p)
    assert max(len(r["text"]) for r in b.splits["train"]) == len(long.strip())
