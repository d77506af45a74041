"""Model catalog (rules/models.toml), parameter counting, and resolving --model values."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from autoft.advisor.catalog import (
    catalog_extra, count_params, count_params_from, find_in_catalog, load_catalog, model_tasks, read_gguf_header,
    resolve_model, spec_from_config,
)
from autoft.advisor.spec import ModelSpec
from autoft.errors import AutoftError

CATALOG = load_catalog()
ISO = {"en", "de", "fr", "es", "it", "pt", "nl", "zh", "ja", "ko", "ru", "ar", "hi", "th", "vi", "pl", "tr", "uk",
       "sv", "id", "ro", "multi"}
DOMAINS = {"general", "biomedical", "clinical", "scientific", "finance", "legal", "code", "news"}


# ----------------------------------------------------------------------------- the catalog as data


def test_catalog_size_and_unique_ids():
    ids = [s.id for s in CATALOG]
    assert len(ids) >= 40
    assert len(set(i.lower() for i in ids)) == len(ids)


def test_names_resolve_to_one_entry_each():
    # Every id, short name and alias must be unambiguous (the first row would silently win otherwise).
    seen: dict[str, str] = {}
    for s in CATALOG:
        names = {s.id.lower(), s.id.rsplit("/", 1)[-1].lower(), *(a.lower() for a in catalog_extra(s.id).get("aliases", []))}
        for n in names:
            assert seen.setdefault(n, s.id) == s.id, f"{n!r} names both {seen[n]} and {s.id}"


@pytest.mark.parametrize("spec", CATALOG, ids=[s.id for s in CATALOG])
def test_count_params_within_3_percent(spec):
    """The published count (model card / safetensors) agrees with the architecture numbers."""
    assert abs(count_params(spec) / spec.params - 1) <= 0.03


@pytest.mark.parametrize("spec", CATALOG, ids=[s.id for s in CATALOG])
def test_entry_is_well_formed(spec):
    assert spec.family in ("encoder", "decoder", "encoder-decoder")
    assert spec.num_attention_heads % spec.num_kv_heads == 0
    assert spec.head_dim is not None or spec.hidden_size % spec.num_attention_heads == 0
    assert spec.max_positions >= 512
    assert spec.languages and set(spec.languages) <= ISO, spec.languages
    assert spec.domains and set(spec.domains) <= DOMAINS, spec.domains
    assert spec.licence and isinstance(spec.gated, bool)
    tasks = model_tasks(spec)
    assert tasks and set(tasks) <= {"classification", "generation", "summarization", "translation"}
    assert ("generation" in tasks) == (spec.family == "decoder")
    assert bool(set(tasks) & {"summarization", "translation"}) == (spec.family == "encoder-decoder")
    if spec.family == "encoder-decoder":
        assert spec.num_decoder_layers and spec.num_decoder_layers >= 1
        for direction in catalog_extra(spec.id).get("translates", []):
            src, tgt = direction.split("-")
            assert {src, tgt} <= set(spec.languages) or "multi" in spec.languages, direction
    assert spec.source == "catalog"


def test_catalog_covers_the_task_families():
    enc = [s for s in CATALOG if s.family == "encoder"]
    dec = [s for s in CATALOG if s.family == "decoder"]
    assert any("multi" in s.languages for s in enc)
    assert any("de" in s.languages for s in enc)
    for domain in ("biomedical", "scientific", "finance", "legal"):
        assert any(domain in s.domains for s in enc), domain
    sizes = sorted(s.params for s in dec)
    assert sizes[0] <= 150e6 and sizes[-1] >= 65e9
    assert any("code" in s.domains for s in dec)
    assert {"llama", "qwen2", "mistral", "gemma2", "phi3"} <= {s.model_type for s in dec}


def test_load_catalog_returns_copies():
    a = load_catalog()
    a[0].languages.append("xx")
    assert "xx" not in load_catalog()[0].languages


# ----------------------------------------------------------------------------- counting by hand


def test_count_bert_base_by_hand():
    # BERT-base: embeddings (words + 512 positions + 2 types + LayerNorm), 12 layers, pooler.
    emb = 30522 * 768 + 512 * 768 + 2 * 768 + 2 * 768
    layer = 4 * (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 768
    pooler = 768 * 768 + 768
    assert count_params(find_in_catalog("bert-base-uncased")) == emb + 12 * layer + pooler


def test_count_gqa_and_tying():
    # SmolLM2-135M: GQA (9 heads, 3 kv heads of 64), gated MLP, tied head.
    s = find_in_catalog("SmolLM2-135M-Instruct")
    layer = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536 + 2 * 576
    assert count_params(s) == 49152 * 576 + 30 * layer + 576
    untied = count_params_from("llama", 576, 30, 9, 3, 1536, 49152, 8192, tied=False)
    assert untied - count_params(s) == 49152 * 576


def test_count_qwen2_bias_and_gemma2_head_dim():
    q = find_in_catalog("Qwen2.5-0.5B-Instruct")
    no_bias = count_params_from("llama", q.hidden_size, q.num_layers, q.num_attention_heads, q.num_kv_heads,
                                q.intermediate_size, q.vocab_size, q.max_positions, q.tied_embeddings)
    assert count_params(q) - no_bias == 24 * (896 + 2 * 2 * 64)  # q, k, v biases per layer
    g = find_in_catalog("google/gemma-2-9b-it")
    assert g.head_dim == 256 and g.head_size == 256 and g.hidden_size // g.num_attention_heads == 224


# ----------------------------------------------------------------------------- lookup by name


@pytest.mark.parametrize("name, expect", [
    ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("huggingfacetb/smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("bert-base-uncased", "google-bert/bert-base-uncased"),
    ("roberta-base", "FacebookAI/roberta-base"),
    ("pubmedbert", "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"),
    ("https://huggingface.co/Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ("  Llama-3.1-8B-Instruct ", "meta-llama/Llama-3.1-8B-Instruct"),
])
def test_resolve_catalog_names(name, expect):
    s = resolve_model(name)
    assert s.id == expect and s.source == "catalog"


def test_unknown_model_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path))
    for name in ["no-such-model", "nobody/no-such-model"]:
        with pytest.raises(AutoftError) as err:
            resolve_model(name)
        msg = str(err.value)
        assert name in msg and "SmolLM2-135M-Instruct" in msg and "\n" not in msg
    with pytest.raises(AutoftError, match="does not exist"):
        resolve_model(str(tmp_path / "missing-folder") + "/")


# ----------------------------------------------------------------------------- local folders and files


def test_resolve_local_minilm_folder(minilm_path):
    s = resolve_model(minilm_path)
    assert s.source == "local" and s.model_type == "bert" and s.family == "encoder"
    assert (s.hidden_size, s.num_layers, s.num_attention_heads, s.intermediate_size) == (384, 6, 12, 1536)
    assert s.vocab_size == 30522 and s.max_positions == 512
    # params from the safetensors header (integer buffers excluded), equal to the catalog's.
    assert s.params == find_in_catalog("all-MiniLM-L6-v2").params == count_params(s)


def test_resolve_config_json_path(minilm_path):
    s = resolve_model(minilm_path + "/config.json")
    assert s.hidden_size == 384 and s.params == 22_713_216


def test_llama_style_config(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512, "num_hidden_layers": 4,
           "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 1376, "vocab_size": 32000,
           "max_position_embeddings": 4096, "head_dim": 128}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = resolve_model(str(tmp_path))
    assert s.family == "decoder" and s.num_kv_heads == 2 and s.head_dim == 128
    assert s.tied_embeddings is False  # llama's default when the key is absent
    assert s.params == count_params(s)  # no weights: counted from the architecture
    cfg["tie_word_embeddings"] = True
    assert spec_from_config(cfg, "x").tied_embeddings is True


def test_distilbert_and_nested_text_config():
    d = spec_from_config({"model_type": "distilbert", "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
                          "vocab_size": 30522, "max_position_embeddings": 512}, "d")
    assert (d.hidden_size, d.num_layers, d.intermediate_size, d.family) == (768, 6, 3072, "encoder")
    assert abs(d.params / 66e6 - 1) < 0.03
    g = spec_from_config({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "hidden_size": 1152,
                          "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
                          "head_dim": 256, "intermediate_size": 6912, "vocab_size": 262144}}, "g")
    assert g.hidden_size == 1152 and g.head_dim == 256 and g.family == "decoder"


def test_bad_config_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    with pytest.raises(AutoftError, match="lacks"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(AutoftError, match="cannot read"):
        resolve_model(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AutoftError, match="no config.json"):
        resolve_model(str(empty))


def test_resolve_gguf_matches_the_gguf_package(smollm2_gguf):
    s = resolve_model(str(smollm2_gguf))
    assert s.source == "local" and s.model_type == "llama" and s.family == "decoder"
    assert (s.hidden_size, s.num_layers, s.num_attention_heads, s.num_kv_heads) == (576, 30, 9, 3)
    assert (s.intermediate_size, s.vocab_size, s.max_positions) == (1536, 49152, 8192)
    assert s.tied_embeddings and s.licence == "apache-2.0" and s.languages == ["en"]
    # Same architecture and parameter count as the catalog's SmolLM2-135M-Instruct.
    assert s.params == find_in_catalog("SmolLM2-135M-Instruct").params == count_params(s)
    # Our header reader agrees with the gguf package's reader.
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(smollm2_gguf))
    meta, tensors = read_gguf_header(smollm2_gguf)
    assert meta["llama.embedding_length"] == r.fields["llama.embedding_length"].contents()
    assert meta["tokenizer.ggml.tokens"]["array_len"] == len(r.fields["tokenizer.ggml.tokens"].data)
    assert sum(t.n_elements for t in r.tensors) == s.params
    assert set(tensors) == {t.name for t in r.tensors}


def test_gguf_folder_and_broken_gguf(tmp_path, smollm2_gguf):
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.gguf").symlink_to(smollm2_gguf)
    assert resolve_model(str(d)).hidden_size == 576
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 1, 5))  # promises more than it has
    with pytest.raises(AutoftError, match="GGUF"):
        resolve_model(str(bad))
    (tmp_path / "nogguf.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(AutoftError, match="GGUF"):
        resolve_model(str(tmp_path / "nogguf.gguf"))


# ----------------------------------------------------------------------------- import weight


def test_catalog_imports_nothing_heavy():
    code = ("import sys, autoft.advisor.catalog as c; c.load_catalog(); c.resolve_model('SmolLM2-135M-Instruct');"
            "bad = [m for m in ('torch', 'transformers', 'huggingface_hub', 'gguf', 'numpy') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_modelspec_roundtrip():
    s = find_in_catalog("gemma-2-2b-it")
    assert ModelSpec(**s.to_dict()) == s


def test_parsed_catalog_cache(tmp_path, monkeypatch):
    from autoft.advisor import catalog

    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path))
    rows = catalog._catalog_rows()
    f = tmp_path / "models.toml.json"
    data = json.loads(f.read_text())
    assert data["rows"] == rows and len(rows) == len(CATALOG)
    # A cache written for another version of models.toml is not used.
    data["key"][1] += 1
    data["rows"] = rows[:1]
    f.write_text(json.dumps(data))
    assert catalog._catalog_rows() == rows
    # An unreadable cache is rewritten.
    f.write_text("{broken")
    assert catalog._catalog_rows() == rows and json.loads(f.read_text())["rows"] == rows


def test_local_folder_wins_over_catalog_name(tmp_path, monkeypatch, minilm_path):
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert-base-uncased").mkdir()
    shutil.copy(minilm_path + "/config.json", tmp_path / "bert-base-uncased" / "config.json")
    s = resolve_model("bert-base-uncased")
    assert s.source == "local" and s.hidden_size == 384


# ----------------------------------------------------------------------------- encoder-decoders
def test_catalog_has_encoder_decoders_for_both_seq2seq_tasks():
    ed = [s for s in CATALOG if s.family == "encoder-decoder"]
    assert len(ed) >= 10
    assert {"t5", "mt5", "bart", "marian"} <= {s.model_type for s in ed}
    assert any("multi" in s.languages for s in ed)
    assert any("en-de" in catalog_extra(s.id).get("translates", []) for s in ed)


@pytest.mark.parametrize("kind", ["t5-gated", "t5-relu", "bart", "marian"])
def test_encoder_decoder_count_matches_transformers(kind):
    """count_params of a spec read from a config.json equals the parameters transformers builds."""
    import json

    transformers = pytest.importorskip("transformers")
    from autoft.advisor.catalog import spec_from_config

    small = dict(d_model=64, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96,
                 decoder_ffn_dim=96, vocab_size=500, max_position_embeddings=100, encoder_layers=2, decoder_layers=3)
    cfg, cls = {
        "t5-gated": (transformers.T5Config(d_model=64, d_ff=96, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=3,
                                           vocab_size=500, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                     transformers.T5ForConditionalGeneration),
        "t5-relu": (transformers.T5Config(d_model=64, d_ff=96, num_heads=4, num_layers=2, vocab_size=500),
                    transformers.T5ForConditionalGeneration),
        "bart": (transformers.BartConfig(**small), transformers.BartForConditionalGeneration),
        "marian": (transformers.MarianConfig(**small, pad_token_id=499, decoder_start_token_id=499),
                   transformers.MarianMTModel),
    }[kind]
    model = cls(cfg)
    spec = spec_from_config(json.loads(cfg.to_json_string(use_diff=False)), kind)
    assert spec.family == "encoder-decoder" and spec.num_layers == 2
    assert spec.num_decoder_layers == (2 if kind == "t5-relu" else 3)
    assert spec.params == count_params(spec) == sum(p.numel() for p in model.parameters())
