"""Summarization and translation: the data layer (real DialogSum and Multi30k, every layout, the
one-line errors), encoding, tiny encoder-decoders (T5, BART) through every technique, generation
metrics, the two-stack estimator, the advisor's choices, and the card/report."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import (build_tiny_bart, build_tiny_llama, build_tiny_t5, easy_seq2seq,  # noqa: E402
                         seq2seq_tokenizer, small_tokenizer)

from autoft.autotrain.data import build_profile, load_data  # noqa: E402
from autoft.errors import DataError  # noqa: E402


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


PAIRS = [("A dog runs.", "Ein Hund rennt."), ("Two men talk.", "Zwei Männer reden."),
         ("A girl reads a book.", "Ein Mädchen liest ein Buch."), ("The sun is hot.", "Die Sonne ist heiß."),
         ("A cat sleeps.", "Eine Katze schläft."), ("Kids play outside.", "Kinder spielen draußen."),
         ("A man cooks.", "Ein Mann kocht."), ("Birds fly high.", "Vögel fliegen hoch."),
         ("It rains today.", "Es regnet heute."), ("We eat bread.", "Wir essen Brot.")]


# -- data layer: real data ----------------------------------------------------------------------
def test_dialogsum_is_summarization_with_target_lengths(shared_data):
    b = load_data(shared_data / "dialogsum")
    assert b.task == "summarization" and b.columns == {"source": "document", "target": "summary"}
    assert {k: len(v) for k, v in b.splits.items()} == {"train": 3000, "validation": 250, "test": 498}
    assert set(b.splits["train"][0]) == {"source", "target"}
    p = build_profile(b)
    q = p.to_question_fields()
    assert q["task"] == "summarization" and q["data_size"] == 3000
    # summaries are much shorter than the dialogues they summarize
    assert q["target_len_p95"] < q["seq_len_p95"] / 2 and q["target_len_p99"] >= q["target_len_p95"]
    assert p.to_dict()["target_token_lengths"]["max"] >= q["target_len_p99"]


def test_multi30k_pair_column_gives_the_direction(shared_data):
    b = load_data(shared_data / "multi30k_en_de")
    assert b.task == "translation" and (b.source_lang, b.target_lang) == ("en", "de")
    assert any("en -> de" in n for n in b.notes)
    rev = load_data(shared_data / "multi30k_en_de", source_lang="de", target_lang="en")
    assert rev.splits["test"][0] == {"source": b.splits["test"][0]["target"], "target": b.splits["test"][0]["source"]}
    q = build_profile(b).to_question_fields()
    assert (q["source_lang"], q["target_lang"], q["language"]) == ("en", "de", "en")


def test_profile_with_a_tokenizer_counts_targets(shared_data):
    tok = seq2seq_tokenizer()
    b = load_data(shared_data / "multi30k_en_de")
    p = build_profile(b, tok)
    assert not p.lengths_estimated and p.target_length_percentiles["p50"] > 0


# -- data layer: layouts ------------------------------------------------------------------------
def test_language_code_columns_and_source_target_columns(tmp_path):
    import csv

    f = tmp_path / "pairs.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["de", "en"])
        w.writerows([(d, e) for e, d in PAIRS])
    b = load_data(f)
    assert (b.task, b.source_lang, b.target_lang) == ("translation", "de", "en")   # column order
    b = load_data(f, source_lang="en", target_lang="de")
    assert b.splits["train"][0]["source"] in {e for e, _ in PAIRS}
    g = write_jsonl(tmp_path / "st.jsonl", [{"source": e, "target": d} for e, d in PAIRS])
    with pytest.raises(DataError, match="--task summarization, or --task translation"):
        load_data(g, source_column="source", target_column="target")
    b = load_data(g, task="translation", source_lang="en", target_lang="de")
    assert b.columns == {"source": "source", "target": "target"} and b.target_lang == "de"
    with pytest.raises(DataError, match="languages are unknown"):
        load_data(g, task="translation")


@pytest.mark.parametrize("cols", [("document", "summary"), ("article", "highlights"), ("dialogue", "summary"),
                                  ("text", "summary")])
def test_summarization_layouts(tmp_path, cols):
    rows = [{cols[0]: f"long text number {i} " * 5, cols[1]: f"text {i}"} for i in range(12)]
    b = load_data(write_jsonl(tmp_path / "d.jsonl", rows))
    assert b.task == "summarization" and b.columns == {"source": cols[0], "target": cols[1]}


def test_column_flags_override(tmp_path):
    rows = [{"body": f"a long body {i} " * 4, "tldr": f"tldr {i}", "summary": "x"} for i in range(12)]
    b = load_data(write_jsonl(tmp_path / "d.jsonl", rows), task="summarization", source_column="body",
                  target_column="tldr")
    assert b.columns == {"source": "body", "target": "tldr"} and b.splits["train"][0]["target"].startswith("tldr")


# -- data layer: one-line errors naming the row --------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    ({"translation": {"en": "A dog."}}, r"row 4 of train: the 'translation' pair has no 'de' text"),
    ({"translation": "just a string"}, r"row 4 of train: the 'translation' column holds text that is not a JSON"),
    ({"translation": ["en", "de"]}, r"row 4 of train: the 'translation' column holds a list"),
    ({"translation": {"en": "A dog.", "de": "  "}}, r"row 4 of train has an empty target"),
])
def test_bad_pairs_name_the_row(tmp_path, bad, match):
    rows = [{"translation": {"en": e, "de": d}} for e, d in PAIRS]
    rows.insert(3, bad)
    with pytest.raises(DataError, match=match):
        load_data(write_jsonl(tmp_path / "t.jsonl", rows))


def test_empty_summary_and_same_language(tmp_path):
    rows = [{"document": f"doc {i} " * 5, "summary": "" if i in (6, 9) else f"s {i}"} for i in range(12)]
    with pytest.raises(DataError, match=r"row 7 of train \(and 1 more\) has an empty target \('summary'\)"):
        load_data(write_jsonl(tmp_path / "s.jsonl", rows))
    t = write_jsonl(tmp_path / "t.jsonl", [{"translation": {"en": e, "de": d}} for e, d in PAIRS])
    with pytest.raises(DataError, match="both 'en'"):
        load_data(t, source_lang="en", target_lang="en")
    from autoft.advisor.question import Question
    from autoft.errors import AutoftError

    with pytest.raises(AutoftError, match="both 'de'"):
        Question(task="translation", source_lang="de", target_lang="DE")


# -- encoding -----------------------------------------------------------------------------------
def test_encode_seq2seq_and_collate_pad_labels_apart():
    from autoft.autotrain import tasks

    tok = seq2seq_tokenizer()
    recs = easy_seq2seq().splits["train"][:2]
    recs[1] = {"source": "say the colour red", "target": "red red red red red"}
    enc = tasks.encode_seq2seq(recs, tok, seq_len=16, target_len=4, prefix="")
    assert all(e["labels"][-1] == tok.eos_token_id and len(e["labels"]) <= 4 for e in enc)
    batch = tasks.collate(enc, tok.pad_token_id, "seq2seq")
    assert batch["input_ids"].shape[1] == max(len(e["input_ids"]) for e in enc)
    assert batch["labels"].shape == (2, max(len(e["labels"]) for e in enc))
    assert (batch["labels"] == -100).sum() == sum(batch["labels"].shape[1] - len(e["labels"]) for e in enc)
    assert tasks.source_prefix("t5", "translation", "en", "de") == "translate English to German: "
    assert tasks.source_prefix("bart", "summarization") == "" and tasks.source_prefix("t5", "summarization") == "summarize: "
    assert tasks.length_cap([10] * 99 + [40]) == 13 and tasks.length_cap(list(range(1, 101))) == 124
    msgs = tasks.seq2seq_messages({"source": "Hallo", "target": "Hello"}, "translation", "de", "en")
    assert msgs[0]["content"].startswith("Translate the following text from German to English.")
    assert msgs[-1] == {"role": "assistant", "content": "Hello"}


# -- metrics ------------------------------------------------------------------------------------
def test_text_metrics_by_hand():
    from autoft.autotrain.evaluate import exact_match, text_metrics

    r = text_metrics("summarization", ["the cat sat"], ["the cat sat on the mat"])
    # unigram: P 3/3, R 3/6 -> F 2/3; bigram: P 2/2, R 2/5 -> F 4/7
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rouge2"] == pytest.approx(4 / 7)
    t = text_metrics("translation", ["Ein Hund rennt schnell nach Hause."], ["Ein Hund rennt schnell nach Hause."])
    assert t["bleu"] == pytest.approx(100.0) and t["chrf"] == pytest.approx(100.0)
    assert text_metrics("translation", ["xyz"], ["Ein Hund."])["bleu"] == 0.0
    assert exact_match(["The Paris!", "blue"], ["paris", "red"]) == 0.5
    with pytest.raises(ValueError):
        text_metrics("summarization", ["a"], ["a", "b"])


# -- the Trial on tiny encoder-decoders -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = seq2seq_tokenizer()
    d = tmp_path_factory.mktemp("seq2seq")
    return {"t5": build_tiny_t5(d / "t5", tok), "bart": build_tiny_bart(d / "bart", tok)}


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("technique", ["full", "freeze", "lora", "qlora"])
def test_every_technique_learns_the_pattern(tiny, arch, technique):
    import torch

    from autoft.autotrain.trainer import Trial

    torch.set_num_threads(2)
    lr = {"full": 3e-3, "freeze": 3e-3, "lora": 1e-2, "qlora": 1e-2}[technique]
    t = Trial(tiny[arch], easy_seq2seq(), task="translation", technique=technique,
              hparams={"learning_rate": lr}, batch_size=8, seq_len=16, target_len=8)
    try:
        assert t.kind == "seq2seq"
        before = t.evaluate("validation")["eval_loss"]
        t.train(30)
        after = t.evaluate("validation")["eval_loss"]
        assert after < 0.5 * before
        if technique == "freeze":  # the bottom block of BOTH stacks is frozen, the top one trains
            names = {n for n, p in t.model.named_parameters() if p.requires_grad}
            for stack in ("encoder", "decoder"):
                assert not any(f"{stack}.{'block' if arch == 't5' else 'layers'}.0." in n for n in names)
                assert any(f"{stack}.{'block' if arch == 't5' else 'layers'}.1." in n for n in names)
        if technique in ("lora", "qlora"):  # adapters in the encoder, the decoder and cross-attention
            names = [n for n, p in t.model.named_parameters() if p.requires_grad]
            cross = "EncDecAttention" if arch == "t5" else "encoder_attn"
            assert any(".encoder." in n for n in names) and any(cross in n for n in names)
    finally:
        t.close()


def test_generation_scores_improve_over_the_base_model_and_reload(tiny, tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from autoft.autotrain.trainer import Trial

    torch.set_num_threads(2)
    t = Trial(tiny["t5"], easy_seq2seq(), task="translation", technique="full",
              hparams={"learning_rate": 3e-3}, batch_size=8, seq_len=16, target_len=8)
    seen = []
    base = t.evaluate_generation("test", on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (8, 8) and base["examples"] == 8 and base["max_new_tokens"] <= 8
    t.train(40)
    tuned = t.evaluate_generation("test", max_examples=4)
    assert tuned["examples"] == 4 and tuned["chrf"] > base["chrf"] + 30
    assert tuned["samples"][0]["output"] == tuned["samples"][0]["reference"]
    t.save_model(tmp_path / "out")
    t.close()
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    tok = seq2seq_tokenizer()
    ids = tok(["translate English to German: say the colour blue twice"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, num_beams=1)
    assert tok.decode(out[0], skip_special_tokens=True).split() == ["blue", "blue"]


def test_a_decoder_trains_on_translation_with_instruction_prompts(tmp_path):
    import torch

    from autoft.autotrain.trainer import Trial

    torch.set_num_threads(2)
    path = build_tiny_llama(tmp_path / "llama", small_tokenizer())
    t = Trial(path, easy_seq2seq(), task="translation", technique="lora", hparams={"learning_rate": 1e-2},
              batch_size=8, seq_len=64)
    try:
        assert t.kind == "generation"
        before = t.evaluate("validation")["eval_loss"]
        t.train(30)
        assert t.evaluate("validation")["eval_loss"] < before
        g = t.evaluate_generation("test", max_examples=4)
        assert {"bleu", "chrf", "samples"} <= set(g)
    finally:
        t.close()


def test_summaries_block_repeated_trigrams_translations_do_not(tmp_path):
    import torch

    from autoft.autotrain.trainer import Trial

    torch.set_num_threads(1)
    path = build_tiny_llama(tmp_path / "llama", small_tokenizer())
    records = [{"source": "say red", "target": " ".join(["red"] * 16)}] * 4
    outputs = {}
    for task in ("summarization", "translation"):
        bundle = easy_seq2seq(task)
        bundle.splits = {"train": records, "validation": records, "test": records}
        t = Trial(path, bundle, task=task, technique="full", hparams={"learning_rate": 1e-2}, batch_size=4, seq_len=48)
        try:
            t.train(20)  # trained on "red red red ...", greedy search repeats red
            outputs[task] = t.evaluate_generation("test", max_examples=1, max_new_tokens=12)["samples"][0]["output"].split()
        finally:
            t.close()
    assert outputs["translation"] == ["red"] * 12  # greedy search alone repeats
    # trigram blocking (textgen.DECODING) bans a third "red red red" (on token ids: special tokens
    # it emits instead are not in the decoded text, so the words alone cannot show it)
    assert outputs["summarization"] != outputs["translation"]


# -- estimator ----------------------------------------------------------------------------------
def test_estimator_two_stacks_and_lora_count_matches_peft(tiny):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from autoft.advisor.catalog import find_in_catalog, spec_from_config
    from autoft.advisor.memory import encoder_decoder_lora_params, estimate
    from autoft.advisor.spec import TrainSetup
    from autoft.autotrain.techniques import lora

    spec = find_in_catalog("flan-t5-base")
    s = TrainSetup(technique="full", task="summarization", batch_size=8, seq_len=512, target_len=64)
    short, long_ = estimate(spec, s), estimate(spec, TrainSetup(**{**s.to_dict(), "target_len": 256}))
    # logits cover target tokens only: 4x the target, 4x the logits
    assert long_.breakdown_bytes["logits_and_loss"] == pytest.approx(4 * short.breakdown_bytes["logits_and_loss"], rel=1e-6)
    assert long_.breakdown_bytes["activations"] > short.breakdown_bytes["activations"]
    more_src = estimate(spec, TrainSetup(**{**s.to_dict(), "seq_len": 1024}))
    assert more_src.breakdown_bytes["logits_and_loss"] == short.breakdown_bytes["logits_and_loss"]
    assert more_src.breakdown_bytes["activations"] > 1.5 * short.breakdown_bytes["activations"]
    # the LoRA parameter count of both stacks (cross-attention included) equals peft's
    for arch in ("t5", "bart"):
        cfg = AutoConfig.from_pretrained(tiny[arch])
        spec = spec_from_config(cfg.to_dict(), arch)
        model = AutoModelForSeq2SeqLM.from_pretrained(tiny[arch])
        peft_model = lora.apply(model, lora.LoraConfig(lora_r=4), "translation")
        trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert encoder_decoder_lora_params(spec, TrainSetup(technique="lora", task="translation", lora_rank=4)) == trained


# -- advisor ------------------------------------------------------------------------------------
def test_advise_translation_picks_a_model_that_knows_both_languages():
    from autoft.advisor.question import Question
    from autoft.advisor.recommend import advise

    rec = advise(Question(task="translation", source_lang="en", target_lang="de", data_size=3000, gpu="T4")).to_dict()
    assert {"en", "de"} <= set(rec["model"]["languages"]) and rec["model"]["family"] == "encoder-decoder"
    rules = {r["rule"] for r in rec["reasons"]}
    assert {"MODEL-022", "TARGET-LEN"} <= rules and rec["target_len"] and rec["fits"]
    # a pair no catalog encoder-decoder translates, on a big GPU: a multilingual decoder may win
    rec = advise(Question(task="translation", source_lang="en", target_lang="ja", data_size=3000,
                          gpu="A100-80GB")).to_dict()
    assert "ja" in rec["model"]["languages"] or "multi" in rec["model"]["languages"]


def test_advise_summarization_from_percentiles_and_t5_precision():
    from autoft.advisor.question import Question
    from autoft.advisor.recommend import advise

    rec = advise(Question(task="summarization", data_size=3000, seq_len_p99=517, target_len_p99=86, gpu="T4"))
    assert rec.model["family"] == "encoder-decoder" and rec.seq_len == 576 and rec.target_len == 88
    t5 = advise(Question(task="summarization", data_size=3000, model="google/flan-t5-base", gpu="T4"))
    assert t5.precision == "fp32" and any(r["rule"] == "PREC-004" for r in t5.reasons)
    assert t5.search_space["learning_rate"][0] >= 1e-4            # T5-style rates
    bart = advise(Question(task="summarization", data_size=3000, model="facebook/bart-base", gpu="T4",
                           technique="full"))
    assert bart.search_space["learning_rate"][1] <= 1e-4
    dec = advise(Question(task="summarization", data_size=3000, model="HuggingFaceTB/SmolLM2-135M-Instruct",
                          seq_len_p99=500, target_len_p99=80, gpu="T4"))
    assert dec.seq_len >= 500 + 80   # a decoder reads source, target and the prompt as one sequence


# -- card and report ------------------------------------------------------------------------------
def test_card_and_report_carry_text_metrics(tmp_path):
    from autoft.autotrain.card import card_text
    from autoft.autotrain.report import write_report

    rec = {"model": {"id": "Helsinki-NLP/opus-mt-en-de", "family": "encoder-decoder"}, "technique": "full",
           "batch_size": 16, "seq_len": 64}
    metrics = {"task": "translation", "metric": "eval_loss",
               "test": {"bleu": 31.2, "chrf": 58.0, "eval_loss": 1.1, "examples": 500, "max_new_tokens": 68},
               "baseline": {"bleu": 24.0, "chrf": 52.5, "eval_loss": 1.6},
               "samples": [{"source": "A dog.", "reference": "Ein Hund.", "output": "Ein Hund.",
                            "base_output": "Hund."}]}
    card = card_text(rec, metrics, "multi30k", "autoft run ...")
    head = card.split("---")[1]
    assert "pipeline_tag: translation" in head and "- bleu" in head and "- chrf" in head
    assert "| bleu | 31.2 | 24 |" in card and "AutoModelForSeq2SeqLM" not in card  # full weights: pipeline
    write_report(tmp_path, rec, metrics, [], {"train": [], "validation": []}, None, "autoft run ...")
    report = (tmp_path / "report.md").read_text()
    assert "| chrf | 58 | 52.5 |" in report and "**Base model:** Hund." in report and "500 test examples" in report


# -- autoft run, end to end -----------------------------------------------------------------------
def test_autoft_run_translates_and_scores_against_the_base_model(tiny, tmp_path):
    """A translation folder (en/de columns) through the whole pipeline on a tiny T5: a search on
    eval loss, the final run, BLEU/chrF on the test split next to the base model, samples with
    both outputs, the report's sample section."""
    import torch

    from autoft.autotrain.pipeline import RunOptions, run

    torch.set_num_threads(2)
    data = tmp_path / "data"
    data.mkdir()
    b = easy_seq2seq(n_train=48, n_eval=8)
    for split, rows in b.splits.items():
        write_jsonl(data / f"{split}.jsonl", [{"en": r["source"], "de": r["target"]} for r in rows])
    rec = {"model": {"id": tiny["t5"]}, "technique": "full", "task": "translation", "batch_size": 8,
           "gradient_accumulation_steps": 1, "seq_len": 16, "target_len": 8, "precision": "fp32",
           "search_space": {"learning_rate": [3e-3, 6e-3]}}
    res = run(RunOptions(data=str(data), recommendation=rec, output=str(tmp_path / "out"), search_trials=2,
                         eta=2, min_steps=10, max_steps=40, eval_every=10, max_eval_examples=6))
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert res.plan.trial.target_len == 8 and m["task"] == "translation" and m["metric"] == "eval_loss"
    assert m["test"]["generated_examples"] == 6 and m["baseline"]["chrf"] is not None
    assert m["test"]["chrf"] > m["baseline"]["chrf"] + 20 and m["test"]["eval_loss"] < m["baseline"]["eval_loss"]
    assert m["samples"] and {"source", "reference", "output", "base_output"} <= set(m["samples"][0])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Base model:**" in report and "chrF" in report.replace("chrf", "chrF")
