"""Model facts: the catalog in rules/models.toml, local config.json / GGUF files, and the Hub.

    load_catalog() -> list[ModelSpec]           # cached; a few ms
    resolve_model("SmolLM2-135M-Instruct")      # catalog id, short name, folder, config.json, .gguf, Hub
    count_params(spec) -> int                   # parameters computed from the architecture numbers

Nothing here imports torch or transformers: a config.json is read as JSON and a GGUF file's header
is parsed directly (its metadata only; no tensor data is read).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path

from autoft.advisor.spec import ModelSpec
from autoft.errors import AutoftError

# ----------------------------------------------------------------------------- architecture families

# Encoders whose layers are BERT-shaped: q, k, v, o with biases, LayerNorm with bias, a 2-matrix MLP
# with biases. Value: token-type embeddings rows (type_vocab_size) in their published configs.
BERT_LIKE = {"bert": 2, "roberta": 1, "xlm-roberta": 1, "camembert": 1, "electra": 2,
             "distilbert": 0, "deberta-v2": 0, "deberta": 0}
ENCODER_TYPES = set(BERT_LIKE) | {"modernbert", "albert", "mpnet"}
# Decoders with gated MLPs (gate, up, down: 3 matrices) and RMSNorm without bias.
GATED_DECODERS = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral", "olmo2",
                  "granite", "cohere", "starcoder2"}
# Decoders with a plain 2-matrix MLP and biases everywhere.
PLAIN_MLP_DECODERS = {"gpt2", "gpt_neox", "gptj", "opt", "phi", "falcon", "bloom", "gpt_bigcode"}
QKV_BIAS = {"qwen2"}  # q, k, v projections carry biases
NORMS_PER_LAYER = {"gemma2": 4}  # gemma2: input, post-attention, pre- and post-feedforward norms
QK_NORM = {"qwen3"}  # per-head RMSNorm on q and k (head_dim each)
# Model types whose parameter count count_params_from computes by their own rules; any other type
# is counted by the generic Llama-style rules, which must be checked against the weights.
COUNTED_TYPES = set(BERT_LIKE) | {"modernbert"} | GATED_DECODERS | PLAIN_MLP_DECODERS
# Encoder-decoders. T5-style: no biases, RMSNorm weight only, a relative position bias table in the
# first block of each stack. BART-style (bart, mbart, marian, pegasus): biases everywhere,
# LayerNorms with bias, learned positions (BART: max_positions + 2 rows per stack) or sinusoidal
# ones (Marian, Pegasus: stored as non-trained weights of max_positions rows).
T5_TYPES = {"t5", "mt5", "umt5"}
BART_TYPES = {"bart", "mbart", "marian", "pegasus"}
ENCODER_DECODER_TYPES = T5_TYPES | BART_TYPES
UNTIED_BY_DEFAULT = {"llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral"}  # config default when the key is absent


def count_params_from(model_type: str, hidden: int, layers: int, heads: int, kv_heads: int,
                      intermediate: int, vocab: int, max_positions: int, tied: bool,
                      head_dim: int | None = None) -> int:
    """Parameters of the base checkpoint (LM head for decoders unless tied; pooler for BERT)."""
    h, i, V = hidden, intermediate, vocab
    d = head_dim or h // heads
    if model_type in BERT_LIKE:
        emb = V * h + BERT_LIKE[model_type] * h + 2 * h  # words, token types, LayerNorm
        if model_type.startswith("deberta"):
            # DeBERTa-v3: no absolute positions; relative position table of 2 x 256 buckets + its LayerNorm.
            emb += 2 * 256 * h + 2 * h
        else:
            emb += max_positions * h
        attn = 4 * (h * h + h) + 2 * h  # q, k, v, o with bias; LayerNorm
        mlp = (h * i + i) + (i * h + h) + 2 * h  # up, down with bias; LayerNorm
        pooler = (h * h + h) if model_type in ("bert", "roberta", "xlm-roberta", "camembert") else 0
        return emb + layers * (attn + mlp) + pooler
    if model_type == "modernbert":
        # No biases; LayerNorm weight only; fused Wqkv; GLU MLP whose Wi is h x 2i; the first layer
        # has no attention norm; final norm; MLM head (dense + norm, decoder tied to the embeddings).
        per_layer = 3 * h * h + h * h + h * 2 * i + i * h + 2 * h
        return V * h + h + layers * per_layer - h + h + (h * h + h)
    # Llama-style decoder (GQA): q: h x heads*d, k/v: h x kv*d, o: heads*d x h.
    attn = h * heads * d + 2 * h * kv_heads * d + heads * d * h
    if model_type in QKV_BIAS:
        attn += heads * d + 2 * kv_heads * d
    if model_type in QK_NORM:
        attn += 2 * d
    if model_type in PLAIN_MLP_DECODERS:
        # GPT-2/NeoX/Phi-2 style: 2-matrix MLP and biases on every linear, LayerNorm with bias.
        mlp = 2 * h * i + i + h
        attn += heads * d + 2 * kv_heads * d + h
        norms = NORMS_PER_LAYER.get(model_type, 2) * 2 * h
    else:
        mlp = 3 * h * i
        norms = NORMS_PER_LAYER.get(model_type, 2) * h
    head = 0 if tied else V * h
    return V * h + layers * (attn + mlp + norms) + h + head


def count_encoder_decoder_params(model_type: str, hidden: int, enc_layers: int, dec_layers: int, heads: int,
                                 intermediate: int, vocab: int, max_positions: int, tied: bool,
                                 head_dim: int | None = None, gated: bool = False) -> int:
    """Parameters of a T5- or BART-style encoder-decoder (shared embedding, LM head unless tied)."""
    h, i, V = hidden, intermediate, vocab
    inner = heads * (head_dim or h // heads)
    attn = 4 * h * inner
    mlp = (3 if gated else 2) * h * i
    if model_type in T5_TYPES:
        enc = enc_layers * (attn + mlp + 2 * h) + h
        dec = dec_layers * (2 * attn + mlp + 3 * h) + h
        rel = 2 * 32 * heads  # relative_attention_num_buckets (32 in every published config) x heads, per stack
        return V * h + enc + dec + rel + (0 if tied else V * h)
    attn += 3 * inner + h  # q, k, v, o biases
    mlp += i + h
    enc = enc_layers * (attn + mlp + 4 * h)
    dec = dec_layers * (2 * attn + mlp + 6 * h)
    pos_rows = max_positions + 2 if model_type == "bart" else max_positions
    norms = 4 * h if model_type in ("bart", "mbart") else 0  # layernorm_embedding per stack
    norms += 4 * h if model_type == "mbart" else 0  # final layer_norm per stack
    return V * h + 2 * pos_rows * h + enc + dec + norms + (0 if tied else V * h)


def count_params(spec: ModelSpec) -> int:
    """Parameter count computed from the architecture numbers (not read from the catalog)."""
    if spec.family == "encoder-decoder":
        return count_encoder_decoder_params(
            spec.model_type, spec.hidden_size, spec.num_layers, spec.num_decoder_layers or spec.num_layers,
            spec.num_attention_heads, spec.intermediate_size, spec.vocab_size, spec.max_positions,
            spec.tied_embeddings, spec.head_dim, bool(spec.gated_mlp))
    return count_params_from(spec.model_type, spec.hidden_size, spec.num_layers, spec.num_attention_heads,
                             spec.num_kv_heads, spec.intermediate_size, spec.vocab_size, spec.max_positions,
                             spec.tied_embeddings, spec.head_dim)


# ----------------------------------------------------------------------------- the catalog

_SPEC_FIELDS = {f.name for f in fields(ModelSpec)}


def _catalog_rows() -> list[dict]:
    """rules/models.toml's rows. Parsing the TOML takes ~10 ms (tomllib is pure Python), so the
    parsed rows are kept as JSON under $AUTOFT_CACHE (~/.cache/autoft), valid while the TOML file's
    size and modification time are unchanged; reading that takes well under a millisecond."""
    # rules/ sits next to advisor/ both in the repository and installed (autoft/rules); finding it
    # by path avoids importing autoft.rules, whose tomllib import is only needed on a cache miss.
    toml_path = Path(__file__).resolve().parent.parent / "rules" / "models.toml"
    if not toml_path.is_file():  # pragma: no cover - unusual layouts
        import importlib.util

        toml_path = Path(list(importlib.util.find_spec("autoft.rules").submodule_search_locations)[0]) / "models.toml"
    st = toml_path.stat()
    key = [str(toml_path), st.st_size, st.st_mtime_ns]
    from autoft.advisor.hub import cache_root

    cache = cache_root() / "models.toml.json"
    try:
        with open(cache, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("key") == key:
            return data["rows"]
    except (OSError, ValueError, AttributeError):
        pass
    from autoft.rules import tomllib

    with open(toml_path, "rb") as fh:
        rows = tomllib.load(fh)["model"]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "rows": rows}), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass  # read-only home: parse each time
    return rows


@lru_cache(maxsize=1)
def _catalog() -> tuple[tuple[ModelSpec, ...], dict[str, int], dict[str, dict]]:
    rows = _catalog_rows()
    specs, index, extra = [], {}, {}
    for n, row in enumerate(rows):
        spec = ModelSpec(**{k: v for k, v in row.items() if k in _SPEC_FIELDS})
        specs.append(spec)
        extra[spec.id] = {k: v for k, v in row.items() if k not in _SPEC_FIELDS}
        names = [spec.id, spec.id.rsplit("/", 1)[-1], *row.get("aliases", [])]
        for name in names:
            index.setdefault(name.lower(), n)
    return tuple(specs), index, extra


def load_catalog() -> list[ModelSpec]:
    """Every catalog entry as a fresh ModelSpec (callers may modify their copies)."""
    return [replace(s, languages=list(s.languages), domains=list(s.domains)) for s in _catalog()[0]]


def catalog_extra(model_id: str) -> dict:
    """Catalog fields that ModelSpec does not hold (tasks, aliases, source note)."""
    return dict(_catalog()[2].get(model_id, {}))


def model_tasks(spec: ModelSpec) -> list[str]:
    """Tasks a model is listed for: the catalog's `tasks`, else by family."""
    tasks = catalog_extra(spec.id).get("tasks")
    if tasks:
        return list(tasks)
    if spec.family == "encoder-decoder":
        return ["summarization", "translation"]
    return ["classification"] if spec.family == "encoder" else ["generation", "classification"]


def find_in_catalog(name: str) -> ModelSpec | None:
    """Catalog entry by Hub id, short name or alias, case-insensitively."""
    specs, index, _ = _catalog()
    key = name.strip().lower()
    n = index.get(key)
    if n is None and key.startswith("https://huggingface.co/"):
        n = index.get(key.removeprefix("https://huggingface.co/").strip("/"))
    if n is None:
        return None
    s = specs[n]
    return replace(s, languages=list(s.languages), domains=list(s.domains))


def _short_list(k: int = 8) -> str:
    picks = ["SmolLM2-135M-Instruct", "Qwen2.5-0.5B-Instruct", "Llama-3.2-1B-Instruct", "Qwen2.5-7B-Instruct",
             "bert-base-uncased", "all-MiniLM-L6-v2", "xlm-roberta-base", "deberta-v3-base"]
    return ", ".join(p for p in picks[:k] if find_in_catalog(p))


# ----------------------------------------------------------------------------- config.json


def _pick(cfg: dict, *keys, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def spec_from_encoder_decoder_config(cfg: dict, model_id: str, source: str = "local", params: int | None = None,
                                     **meta) -> ModelSpec:
    """A ModelSpec from a T5-style (d_model, num_layers, num_heads, d_kv, d_ff, feed_forward_proj)
    or BART-style (d_model, encoder_layers, decoder_layers, encoder_attention_heads,
    encoder_ffn_dim) config.json."""
    model_type = str(cfg.get("model_type") or "unknown").lower()
    hidden = _pick(cfg, "d_model", "hidden_size")
    enc = _pick(cfg, "num_layers", "encoder_layers")
    dec = _pick(cfg, "num_decoder_layers", "decoder_layers", default=enc)
    heads = _pick(cfg, "num_heads", "encoder_attention_heads", "num_attention_heads")
    vocab = _pick(cfg, "vocab_size")
    if not (hidden and enc and heads and vocab):
        raise AutoftError(f"{model_id}: config.json of an encoder-decoder lacks d_model, the layer counts, the "
                          "heads or vocab_size", "pass a model folder with a complete config.json")
    hidden, heads = int(hidden), int(heads)
    inter = int(_pick(cfg, "d_ff", "encoder_ffn_dim", default=4 * hidden))
    d_kv = cfg.get("d_kv")
    head_dim = int(d_kv) if d_kv and int(d_kv) * heads != hidden else None
    t5 = model_type in T5_TYPES
    gated = str(cfg.get("feed_forward_proj", "")).startswith("gated") if t5 else False
    tied = bool(cfg.get("tie_word_embeddings", True))
    max_pos = int(_pick(cfg, "max_position_embeddings", "n_positions", default=512))
    counted = count_encoder_decoder_params(model_type, hidden, int(enc), int(dec), heads, inter, int(vocab), max_pos,
                                           tied, head_dim, gated)
    return ModelSpec(id=model_id, model_type=model_type, params=int(params or counted), hidden_size=hidden,
                     num_layers=int(enc), num_decoder_layers=int(dec), num_attention_heads=heads, num_kv_heads=heads,
                     intermediate_size=inter, vocab_size=int(vocab), max_positions=max_pos, tied_embeddings=tied,
                     family="encoder-decoder", head_dim=head_dim, gated_mlp=gated if t5 else None,
                     source=source, **meta)


def spec_from_config(cfg: dict, model_id: str, source: str = "local", params: int | None = None,
                     **meta) -> ModelSpec:
    """A ModelSpec from a config.json dict (BERT-style, Llama-style, T5/BART-style encoder-decoders
    and a few older spellings)."""
    if cfg.get("is_encoder_decoder") or str(cfg.get("model_type", "")).lower() in ENCODER_DECODER_TYPES:
        return spec_from_encoder_decoder_config(cfg, model_id, source, params, **meta)
    if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers (Gemma 3, Llava, ...)
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    model_type = str(cfg.get("model_type") or "unknown").lower()
    hidden = _pick(cfg, "hidden_size", "d_model", "n_embd", "dim")
    layers = _pick(cfg, "num_hidden_layers", "n_layers", "n_layer", "num_layers")
    heads = _pick(cfg, "num_attention_heads", "n_heads", "n_head")
    vocab = _pick(cfg, "vocab_size", "padded_vocab_size")
    missing = [n for n, v in (("hidden_size", hidden), ("num_hidden_layers", layers),
                              ("num_attention_heads", heads), ("vocab_size", vocab)) if not v]
    if missing:
        raise AutoftError(f"{model_id}: config.json lacks {', '.join(missing)}",
                          "pass a model folder whose config.json describes a transformer "
                          "(hidden_size, num_hidden_layers, num_attention_heads, vocab_size)")
    hidden, layers, heads, vocab = int(hidden), int(layers), int(heads), int(vocab)
    kv = int(_pick(cfg, "num_key_value_heads", "num_kv_heads", "multi_query_group_num", default=heads))
    inter = int(_pick(cfg, "intermediate_size", "hidden_dim", "n_inner", "ffn_dim", "ffn_hidden_size",
                      default=4 * hidden))
    max_pos = int(_pick(cfg, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                        default=2048))
    tied = cfg.get("tie_word_embeddings")
    if tied is None:
        tied = model_type not in UNTIED_BY_DEFAULT
    head_dim = cfg.get("head_dim")
    head_dim = int(head_dim) if head_dim and int(head_dim) != hidden // heads else None
    archs = " ".join(cfg.get("architectures") or [])
    encoder = model_type in ENCODER_TYPES or "MaskedLM" in archs or (
        model_type not in GATED_DECODERS and not cfg.get("is_decoder", False) and "CausalLM" not in archs
        and "type_vocab_size" in cfg)
    family = "encoder" if encoder else "decoder"
    count = lambda f: count_params_from(model_type, hidden, layers, heads, kv, f, vocab, max_pos,  # noqa: E731
                                        bool(tied), head_dim)
    counted = count(inter)
    verified = model_type in COUNTED_TYPES
    if params:
        verified = True
        if model_type not in COUNTED_TYPES and abs(counted - params) > 0.03 * params:
            # generic rules got the count wrong: the one number they guess is the MLP's width
            # (Qwen-7B's config gives twice the width its MLP uses); infer it from the true count
            base, per_unit = count(0), count(1) - count(0)
            width = round((params - base) / per_unit) if per_unit > 0 else 0
            width = round(width / 64) * 64 if width >= 640 else width  # widths come in multiples of 64
            if 0.2 * inter <= width <= 2 * inter:
                inter = width
    return ModelSpec(id=model_id, model_type=model_type, params=int(params or counted), hidden_size=hidden,
                     num_layers=layers, num_attention_heads=heads, num_kv_heads=kv, intermediate_size=inter,
                     vocab_size=vocab, max_positions=max_pos, tied_embeddings=bool(tied), family=family,
                     head_dim=head_dim, source=source, params_verified=verified, **meta)


def read_config(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as err:
        raise AutoftError(f"cannot read {path}: {err}", "pass a model folder with a valid config.json") from None
    if not isinstance(cfg, dict):
        raise AutoftError(f"{path} is not a JSON object", "pass a model's config.json")
    return cfg


def _safetensors_params(folder: Path) -> int | None:
    """Exact parameter count from the safetensors headers in a folder (no tensor data read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return None
        for name, t in header.items():
            # Integer tensors are buffers (BERT's saved position_ids), not parameters.
            if name != "__metadata__" and t.get("dtype") not in ("I64", "I32", "BOOL"):
                count = 1
                for dim in t["shape"]:
                    count *= dim
                total += count
    return total or None


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def _index_params(folder: Path, cfg: dict) -> int | None:
    """Parameter count from a sharded checkpoint's index (model.safetensors.index.json:
    metadata.total_size, in bytes) when the shards themselves are absent. Bytes per parameter
    from config.json's dtype; without one, the 2 or 4 bytes that come nearest the config's count."""
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            with open(folder / name, encoding="utf-8") as fh:
                total = int(json.load(fh)["metadata"]["total_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        per = _DTYPE_BYTES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "").replace("torch.", ""))
        if per is None:
            try:
                guess = spec_from_config(cfg, "index").params
            except AutoftError:
                return None
            per = min((2, 4), key=lambda b: abs(total / b - guess))
        return total // per
    return None


def spec_from_folder(folder: str | os.PathLike) -> ModelSpec:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return spec_from_gguf(ggufs[0])
        raise AutoftError(f"{folder} has no config.json" + (" and several .gguf files" if ggufs else ""),
                          "pass a model folder saved with save_pretrained, a config.json or one .gguf file")
    cfg = read_config(cfg_path)
    return spec_from_config(cfg, str(folder), params=_safetensors_params(folder) or _index_params(folder, cfg),
                            languages=["unknown"])


# ----------------------------------------------------------------------------- GGUF

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_header(path: str | os.PathLike) -> tuple[dict, dict[str, list[int]]]:
    """GGUF metadata (arrays of strings come back as their length only) and tensor shapes.

    A direct reader of the header (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
    the gguf package's GGUFReader also works but parses every token string into numpy objects,
    which takes seconds; the advisor only needs numbers.
    """
    for limit in (4 << 20, 64 << 20, 1 << 30):  # headers, vocabularies included, are usually a few MB
        with open(path, "rb") as fh:
            data = fh.read(limit)
        try:
            return _parse_gguf_header(data)
        except _Truncated:
            if len(data) < limit:
                break
    raise ValueError("truncated header")


class _Truncated(ValueError):
    pass


def _parse_gguf_header(data: bytes) -> tuple[dict, dict[str, list[int]]]:
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise _Truncated("truncated header")
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += size
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8", errors="replace")
        pos += n
        return s

    def value(vtype: int):
        nonlocal pos
        if vtype in _GGUF_SCALARS:
            return take(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return string()
        if vtype == _GGUF_ARRAY:
            etype, n = take("<I"), take("<Q")
            if etype == _GGUF_STRING:
                if n > 64:  # vocabularies, merges: skip over them, keep the count
                    for _ in range(n):
                        size = take("<Q")  # (not `pos += take(...)`: that reads pos before take moves it)
                        pos += size
                    return {"array_len": n}
                return [string() for _ in range(n)]
            if etype in _GGUF_SCALARS:
                size = struct.calcsize(_GGUF_SCALARS[etype])
                if n > 64:
                    pos += size * n
                    return {"array_len": n}
                return [take(_GGUF_SCALARS[etype]) for _ in range(n)]
            raise ValueError(f"nested GGUF array type {etype}")
        raise ValueError(f"unknown GGUF value type {vtype}")

    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file (bad magic)")
    pos = 4
    version = take("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    n_tensors, n_kv = take("<Q"), take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("<I"))
    tensors = {}
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        take("<I"), take("<Q")  # ggml type, data offset
        tensors[name] = dims
    return meta, tensors


def spec_from_gguf(path: str | os.PathLike) -> ModelSpec:
    try:
        meta, tensors = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as err:
        raise AutoftError(f"cannot read the GGUF file {path}: {err}", "pass a valid .gguf file or a model folder") from None
    arch = str(meta.get("general.architecture", "llama"))

    def key(name, default=None):
        return meta.get(f"{arch}.{name}", default)

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size") or (tokens["array_len"] if isinstance(tokens, dict) else len(tokens or []))
    if "token_embd.weight" in tensors and not vocab:
        vocab = tensors["token_embd.weight"][-1]
    hidden, layers, heads = key("embedding_length"), key("block_count"), key("attention.head_count")
    if not (hidden and layers and heads and vocab):
        raise AutoftError(f"{path}: GGUF metadata lacks the architecture numbers ({arch}.embedding_length, ...)",
                          "pass the original model folder with its config.json instead")
    params = 0
    for dims in tensors.values():
        n = 1
        for d in dims:
            n *= d
        params += n
    langs = meta.get("general.languages")
    head_dim = key("attention.key_length")
    head_dim = int(head_dim) if head_dim and int(head_dim) != hidden // heads else None
    return ModelSpec(
        id=str(path), model_type=arch, params=int(params), hidden_size=int(hidden), num_layers=int(layers),
        num_attention_heads=int(heads), num_kv_heads=int(key("attention.head_count_kv", heads)),
        intermediate_size=int(key("feed_forward_length", 4 * hidden)), vocab_size=int(vocab),
        max_positions=int(key("context_length", 2048)), tied_embeddings="output.weight" not in tensors,
        family="decoder", head_dim=head_dim,
        languages=list(langs) if isinstance(langs, list) and langs else ["unknown"],
        licence=str(meta.get("general.license", "unknown")), source="local")


# ----------------------------------------------------------------------------- resolve


def resolve_model(id_or_path: str, trust_remote_code: bool = False) -> ModelSpec:
    """Model facts for a catalog id or short name, a local folder / config.json / .gguf, or a Hub id.

    Nothing is executed: a config.json is only read as data, so `trust_remote_code` matters only
    for the trainer (it is accepted here so that callers pass the user's choice through).
    """
    name = str(id_or_path).strip()
    if not name:
        raise AutoftError("no model given", "pass --model with a Hub id, a catalog name or a local folder")
    path = Path(name).expanduser()
    # An existing local path wins over a catalog name, as in transformers' from_pretrained.
    spec = None if path.exists() else find_in_catalog(name)
    if spec is not None:
        return spec
    if path.exists():
        if path.is_dir():
            return spec_from_folder(path)
        if path.suffix == ".gguf":
            return spec_from_gguf(path)
        if path.suffix == ".json":
            cfg = read_config(path)
            weights = None
            if path.name == "config.json":
                weights = _safetensors_params(path.parent) or _index_params(path.parent, cfg)
            return spec_from_config(cfg, str(path.parent if path.name == "config.json" else path),
                                    params=weights, languages=["unknown"])
        raise AutoftError(f"cannot read a model from the file {path}",
                          "pass a model folder, its config.json or a .gguf file")
    looks_local = name.startswith((".", "/", "~")) or name.endswith((".json", ".gguf")) or os.sep + os.sep in name
    if not looks_local and name.count("/") == 1:
        from autoft.advisor import hub

        info = hub.model_info(name)
        if info is not None:
            spec = hub.spec_from_info(info)
            if spec is not None:
                return spec
            if info.get("gated"):
                raise AutoftError(f"{name} is gated on the Hub and its config.json could not be read",
                                  "accept its terms on huggingface.co and log in (hf auth login), "
                                  "or pass a local folder")
            raise AutoftError(f"the Hub has no readable config.json for {name}",
                              "download the model and pass its local folder")
    if looks_local:
        raise AutoftError(f"model path {name} does not exist", "check the path, or pass a Hub id or catalog name")
    raise AutoftError(f"unknown model {name}: not in the catalog, not a local path, and the Hub cannot be "
                      "reached offline or does not know it",
                      f"pass a local folder or one of: {_short_list()}")
