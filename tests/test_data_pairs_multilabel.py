"""The data layer's sentence-pair and multi-label layouts: detection, records, cuts, profile."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from autoft.autotrain.data import build_profile, load_data
from autoft.autotrain.data.columns import infer_mapping


def _csv(path: Path, header, rows) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _jsonl(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


# -- sentence pairs ---------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                                 ("Question1", "Question2")])
def test_pair_columns_are_found(a, b):
    m = infer_mapping([a, b, "label"])
    assert m.task == "classification" and m.columns == {"text": a, "text_pair": b, "label": "label"}


def test_pair_flags_win_and_a_text_column_alone_stays_single():
    cols = ["premise", "hypothesis", "claim", "label"]
    assert infer_mapping(cols, text_column="claim").columns == {"text": "claim", "label": "label"}
    m = infer_mapping(cols, text_column="claim", text_pair_column="premise")
    assert m.columns == {"text": "claim", "text_pair": "premise", "label": "label"}
    m = infer_mapping(["body", "title", "label"], text_column="title", text_pair_column="body")
    assert m.columns["text"] == "title" and m.columns["text_pair"] == "body"


def test_mrpc_loads_as_pairs_and_profiles_both_sides(shared_data):
    b = load_data(shared_data / "mrpc")
    assert b.task == "classification" and not b.multi_label
    assert b.columns == {"text": "sentence1", "text_pair": "sentence2", "label": "label"}
    assert {len(v) for v in b.splits.values()} == {3668, 408, 1000}
    r = b.splits["train"][0]
    assert set(r) == {"text", "text_pair", "label"} and r["text"] != r["text_pair"]
    p = build_profile(b)
    # the pair as the model reads it is longer than either side
    assert p.pair_lengths["text"]["p95"] < p.length_percentiles["p95"]
    assert p.pair_lengths["text_pair"]["p95"] < p.length_percentiles["p95"]
    assert p.majority_share == pytest.approx(2477 / 3668, abs=1e-4)
    assert p.to_question_fields()["majority_share"] == p.majority_share


def test_pair_lengths_from_a_tokenizer_count_both_sides(shared_data, minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    b = load_data(shared_data / "mrpc")
    b.splits["train"] = b.splits["train"][:200]
    p = build_profile(b, tok)
    r = b.splits["train"]
    exact = sorted(len(tok(x["text"], x["text_pair"])["input_ids"]) for x in r)
    assert p.length_percentiles["max"] == exact[-1] and not p.lengths_estimated
    side = max(len(tok(x["text_pair"], add_special_tokens=False)["input_ids"]) for x in r)
    assert p.pair_lengths["text_pair"]["max"] == side


def test_pairs_with_an_empty_side_are_dropped(tmp_path):
    rows = [(f"first {i}", "" if i == 3 else f"second {i}", "yes" if i % 2 else "no") for i in range(60)]
    b = load_data(_csv(tmp_path / "p.csv", ("premise", "hypothesis", "label"), rows))
    assert sum(len(v) for v in b.splits.values()) == 59
    assert any("dropped 1 of 60 train rows with an empty text" in n for n in b.notes)


# -- multi-label ------------------------------------------------------------------------------
def test_go_emotions_loads_as_multilabel(shared_data):
    b = load_data(shared_data / "go_emotions")
    assert b.multi_label and b.task == "classification" and len(b.label_names) == 28
    assert all(isinstance(r["labels"], list) and r["labels"] for r in b.splits["train"])
    p = build_profile(b)
    assert p.multi_label and p.label_counts["train"]["neutral"] == 1649 and p.label_counts["train"]["grief"] == 11
    assert p.imbalance_ratio == pytest.approx(1649 / 11, abs=0.01)
    assert p.labels_per_row == pytest.approx((4136 + 2 * 800 + 3 * 61 + 4 * 3) / 5000, abs=1e-3)
    q = p.to_question_fields()
    assert q["multi_label"] is True and q["imbalance_ratio"] == p.imbalance_ratio
    from autoft.advisor.question import Question
    Question(**q)


def test_binary_columns_are_found_and_all_zero_rows_allowed(tmp_path):
    rows = [(f"comment {i}", int(i % 3 == 0), int(i % 5 == 0), i) for i in range(100)]
    b = load_data(_csv(tmp_path / "tox.csv", ("text", "toxic", "insult", "id"), rows))
    assert b.multi_label and b.label_names == ["toxic", "insult"]      # id holds 0..99: not a label
    recs = {r["text"]: r["labels"] for s in b.splits.values() for r in s}
    assert recs["comment 15"] == ["toxic", "insult"] and recs["comment 1"] == []
    assert sum(len(v) for v in b.splits.values()) == 100
    assert any("rarest label" in n or "random" in n for n in b.notes)   # validation and test were cut


def test_label_columns_flag_and_list_cells_in_csv(tmp_path):
    rows = [(f"t {i}", int(i % 2 == 0), int(i % 3 == 0), int(i % 4 == 0)) for i in range(40)]
    b = load_data(_csv(tmp_path / "m.csv", ("text", "a", "b", "c"), rows), label_columns="c,a")
    assert b.label_names == ["c", "a"]
    rows = [(f"t {i}", json.dumps(["x", "y"][: 1 + i % 2])) for i in range(40)]
    b = load_data(_csv(tmp_path / "l.csv", ("text", "labels"), rows))
    assert b.multi_label and b.label_names == ["x", "y"]


def test_empty_label_lists_allowed_when_asked(tmp_path):
    recs = [{"text": f"t{i}", "labels": ["a", "b"][: i % 3]} for i in range(60)]
    b = load_data(_jsonl(tmp_path / "f.jsonl", recs), allow_empty_labels=True)
    assert any(r["labels"] == [] for s in b.splits.values() for r in s)


def test_multilabel_cut_keeps_every_label_in_train(tmp_path):
    recs = [{"text": f"t{i}", "labels": ["common"] + (["rare"] if i % 10 == 0 else [])} for i in range(200)]
    recs += [{"text": f"u{i}", "labels": ["other"]} for i in range(50)]
    b = load_data(_jsonl(tmp_path / "f.jsonl", recs), split_seed=3)
    train = {l for r in b.splits["train"] for l in r["labels"]}
    assert train == {"common", "rare", "other"}
    assert {len(b.splits[s]) for s in ("validation", "test")} == {25}
    # stratified on the rarest label: the 20 'rare' rows split about 16 / 2 / 2
    rare = {s: sum("rare" in r["labels"] for r in v) for s, v in b.splits.items()}
    assert rare["train"] >= 14 and rare["validation"] >= 1 and rare["test"] >= 1
