"""What autoft's training step keeps for backward, tensor by tensor, per transformer block.

Pure arithmetic (no torch), used by `advisor/memory.py`. Every rule below was read off autoft's
own step traced on fake tensors (`autotrain/trace.py`, CUDA behaviour emulated): for each catalog
architecture, technique and precision, the bytes one block saves per token agree with the trace
exactly (tests/test_activations.py holds a table of traced values). The rules are autograd's:

- a linear layer saves its input when its weight trains (for the weight's gradient), nothing
  when the weight is frozen; under autocast each call casts an fp32 input to 16 bits on its own,
  so q, k and v save three copies of the norm's output;
- a norm saves its input in fp32 (the stream itself when that is fp32) and, when its weight
  trains, the normalised input (HF's RMSNorm in the input's dtype, Gemma's in fp32);
- SDPA's flash / memory-efficient kernels save q, k, v, the output and an fp32 log-sum-exp per
  head; the math kernel (fp32 with grouped KV heads on CUDA) and eager attention save the
  a x s scores as well;
- activation functions save their input, a product saves both operands, dropout a bool mask;
- a LoRA adapter saves its dropout mask and lora_A's input (cast to 16 bits under autocast),
  and lora_A's output (r values per token).

`Flow` says in which dtypes a step runs (from technique and precision), `Template` what a model
type's block is made of. Unknown model types borrow llama's (decoders) or BERT's (encoders).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autoft.advisor.spec import ModelSpec, TrainSetup


@dataclass(frozen=True)
class Template:
    """A model type's block, as far as saved tensors go."""

    kind: str = "decoder"  # decoder (pre-norm) | encoder (BERT: post-LayerNorm) | modernbert (pre-LayerNorm)
    norm: str = "rms"  # rms: HF RMSNorm, normalised kept in the input's dtype | rms-gemma: in fp32 | ln: LayerNorm
    norms: int = 2  # norms per block
    gated: bool = True  # gate, up, down (SwiGLU / GeGLU) rather than up, down
    fused_qkv: bool = False  # one projection for q, k, v (v stays a view of its output: all of it is saved)
    fused_gate_up: bool = False
    o_copy: bool = False  # the attention output is copied before o_proj (q from a fused projection)
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
    eager: bool = False  # no SDPA in transformers: eager attention (a x s scores)
    softcap: bool = False  # tanh soft-capping of attention scores and logits (Gemma 2)
    dropouts: int = 0  # hidden dropouts per block (encoders; p = 0.1 in their configs)
    attention_dropout: bool = False  # dropout on attention probabilities (encoders)
    attention_roles: tuple[str, ...] | None = ("q", "v")  # peft's LoRA "attention" targets; None: all-linear
    local_window: int | None = None  # local attention layers need a mask (ModernBERT)
    global_every: int | None = None  # every n-th layer is global (ModernBERT)
    relative: bool = False  # DeBERTa's disentangled attention (content-to-position, position-to-content)


DECODER = Template()
ENCODER = Template(kind="encoder", norm="ln", gated=False, dropouts=2, attention_dropout=True)
TEMPLATES: dict[str, Template] = {
    "llama": DECODER, "mistral": DECODER, "qwen2": DECODER, "mixtral": DECODER, "granite": DECODER,
    "qwen3": Template(qk_norm=True),
    "phi3": Template(fused_qkv=True, fused_gate_up=True, o_copy=True, attention_roles=None),
    "gemma2": Template(norm="rms-gemma", norms=4, eager=True, softcap=True),
    "bert": ENCODER, "roberta": ENCODER, "xlm-roberta": ENCODER, "electra": ENCODER,
    "camembert": Template(kind="encoder", norm="ln", gated=False, dropouts=2, attention_dropout=True,
                          attention_roles=None),
    "distilbert": Template(kind="encoder", norm="ln", gated=False, dropouts=1, attention_dropout=True,
                           attention_roles=None),
    "deberta-v2": Template(kind="encoder", norm="ln", gated=False, dropouts=2, attention_dropout=True,
                           relative=True, eager=True),
    "modernbert": Template(kind="modernbert", norm="ln", fused_qkv=True, fused_gate_up=True,
                           attention_roles=None, local_window=128, global_every=3),
}
# relative position buckets of DeBERTa-v3 (2 x position_buckets)
DEBERTA_RELATIVE = 512


def template(spec: ModelSpec, setup: TrainSetup | None = None) -> Template:
    """The model type's template; unknown types borrow llama's (decoders) or BERT's (encoders).
    setup.attention == "eager" asks for transformers' eager attention instead of SDPA."""
    t = TEMPLATES.get(spec.model_type, DECODER if spec.family == "decoder" else ENCODER)
    if setup is not None and setup.attention == "eager" and not t.eager:
        t = replace(t, eager=True)
    return t


def known_template(spec: ModelSpec) -> bool:
    return spec.model_type in TEMPLATES


def block_linears(spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(role, d_in, d_out) of every linear layer in one block, as the model type builds them.
    Roles: q, k, v (or qkv), o, gate, up (or gate_up), down."""
    t = template(spec)
    h, f = spec.hidden_size, spec.intermediate_size
    q_w, kv_w = spec.num_attention_heads * spec.head_size, spec.num_kv_heads * spec.head_size
    if t.fused_qkv:
        out = [("qkv", h, q_w + 2 * kv_w), ("o", q_w, h)]
    else:
        out = [("q", h, q_w), ("k", h, kv_w), ("v", h, kv_w), ("o", q_w, h)]
    if t.fused_gate_up:
        out += [("gate_up", h, 2 * f), ("down", f, h)]
    elif t.gated:
        out += [("gate", h, f), ("up", h, f), ("down", f, h)]
    else:
        out += [("up", h, f), ("down", f, h)]
    return out


def adapter_roles(spec: ModelSpec, setup: TrainSetup) -> set[str]:
    """Block linears with a LoRA adapter: every one (all-linear), every attention projection
    (qkvo, a fused qkv included), or peft's attention targets for the model type (all-linear where
    peft's table has none, as autoft's lora technique does)."""
    roles = {r for r, _, _ in block_linears(spec)}
    if setup.lora_targets == "qkvo":
        return roles & {"q", "k", "v", "o", "qkv"}
    attention = template(spec).attention_roles
    if setup.lora_targets == "attention" and attention is not None:
        return roles & set(attention)
    return roles


@dataclass(frozen=True)
class Flow:
    """Bytes per element of what one training step moves, from technique and precision."""

    stream: int  # the residual stream (the embeddings' dtype: fp32 masters, LoRA's 16-bit base)
    compute: int  # linear outputs and attention inputs: 2 under autocast, else 4
    mlp: int  # MLP intermediates: compute, but QLoRA's 4-bit layers hand back their input's dtype
    cast: bool  # a linear's input is cast per call (fp32 stream, 16-bit compute)
    base: str  # the block's linear weights: train | frozen | nf4
    adapter: int  # bytes a LoRA adapter saves per input element: dropout mask + lora_A's input
    adapter_out: int  # bytes per rank element of lora_A's output


def flow(technique: str, precision: str, pure_16bit: bool = False) -> Flow:
    """How autoft's trainer runs: fp32 masters + autocast for full/freeze; a 16-bit frozen base
    for LoRA; NF4 with an fp32 rest (k-bit preparation) for QLoRA; everything fp32 in fp32.
    pure_16bit: weights, gradients and optimizer in 16 bits, no autocast (other stacks' "bf16")."""
    e = 4 if precision == "fp32" else 2
    adapter = 1 + e  # dropout mask (bool) + lora_A's input in the compute dtype
    if technique in ("full", "freeze"):
        stream = e if pure_16bit else 4
        return Flow(stream, e, e, cast=stream > e, base="train", adapter=0, adapter_out=0)
    if technique == "lora":
        return Flow(e, e, e, cast=False, base="frozen", adapter=adapter, adapter_out=e)
    return Flow(4, e, 4, cast=e < 4, base="nf4", adapter=adapter, adapter_out=e)  # qlora


def stream_bytes(spec: ModelSpec, fl: Flow) -> int:
    """Bytes per element of the residual stream between blocks: LayerNorm models' stream is the
    norms' fp32 output under CUDA autocast (layer_norm runs in fp32 there), whatever the base."""
    return 4 if template(spec).norm == "ln" else fl.stream


def sdpa_kernel(spec: ModelSpec, compute: int, masked: bool = False) -> str:
    """The kernel torch's CUDA SDPA picks for training (aten/.../cuda/sdp_utils.cpp): flash for
    16-bit without a mask and head_dim <= 256; memory-efficient without grouped KV heads; else math."""
    d = spec.head_size
    if compute == 2 and not masked and d <= 256:
        return "flash"
    if spec.num_kv_heads == spec.num_attention_heads and d % (8 if compute == 2 else 4) == 0:
        return "efficient"
    return "math"


def _roundup(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def attention_bytes(spec: ModelSpec, t: Template, fl: Flow, b: int, s: int, train: bool, local: bool = False) -> float:
    """Bytes one block's attention saves for a micro-batch of b x s tokens."""
    e, a, kv = fl.compute, spec.num_attention_heads, spec.num_kv_heads
    d = spec.head_size
    q_w, kv_w = a * d, kv * d
    per_tok = 0.0
    if t.qk_norm:  # fp32 copies of q and k, rsqrt per head; normalised (16-bit) when the weights train
        per_tok += 4 * (q_w + kv_w) + 4 * (a + kv) + (e * (q_w + kv_w) if train else 0)
    # attention probabilities: the fp32 softmax output; the product with v saves its input too: a
    # 16-bit cast, or the dropout output (with its bool mask); soft-capping saves its tanh
    drop = t.attention_dropout
    scores = 4 + (e if (e < 4 or drop) else 0) + (1 if drop else 0) + (e if t.softcap else 0)
    if t.relative:
        return per_tok * b * s + _deberta_attention(spec, fl, b, s, train, scores)
    if t.eager:  # transformers' eager attention: q, repeated k and v, the o_proj input copy
        per_tok += e * 3 * q_w + (e * q_w if train else 0) + scores * a * s
        return per_tok * b * s
    masked = local
    kernel = sdpa_kernel(spec, e, masked)
    if kernel == "math":  # scaled q, repeated scaled k and v, fp32 scores; the output copied for o_proj
        per_tok += e * 3 * q_w + e * a * s + (e * q_w if train else 0)
        return per_tok * b * s
    per_tok += e * (2 * q_w + 2 * kv_w)  # q, k, v, output
    per_tok += 4 * a * (_roundup(s, 32) if kernel == "efficient" else s) / s  # log-sum-exp
    if t.fused_qkv and not (fl.base == "nf4" and e < 4):
        per_tok += e * (q_w + kv_w)  # v is a view of the fused projection's output, which stays whole
    if t.o_copy and train and kernel == "flash":
        per_tok += e * q_w  # flash's output follows q's layout: copied for o_proj
    mask = e * s if masked else 0  # the float mask SDPA makes of a bool one, saved by the kernel
    return (per_tok + mask) * b * s


def _deberta_attention(spec: ModelSpec, fl: Flow, b: int, s: int, train: bool, scores: float) -> float:
    """DeBERTa-v2/v3 disentangled attention: q, k, the scaled k, v; content-to-position and
    position-to-content scores over the relative buckets; the probabilities; the output copy;
    per sample the projected relative keys and queries and a bool mask; per layer the two s x s
    relative position indices (int64)."""
    e, a = fl.compute, spec.num_attention_heads
    q_w = a * spec.head_size
    k2 = DEBERTA_RELATIVE
    per_tok = e * 4 * q_w + (e * q_w if train else 0) + 2 * e * a * k2 + scores * a * s
    per_sample = 2 * e * q_w * k2 + s * s
    return per_tok * b * s + per_sample * b + 2 * 8 * s * s


def block_bytes(spec: ModelSpec, setup: TrainSetup, fl: Flow, layer: int = 0) -> float:
    """Bytes one trained block saves for backward, for the setup's micro-batch."""
    b, s = setup.batch_size, setup.seq_len
    t = template(spec, setup)
    h, f = spec.hidden_size, spec.intermediate_size
    train = fl.base == "train"
    per_tok = 0.0
    # norms: the fp32 input (the stream itself when it is fp32) and rsqrt / mean + rstd; the
    # normalised input when the weight trains
    if t.norm == "ln":
        per_tok += t.norms * (4 * h + 8)
    else:
        per_tok += t.norms * (4 * h + 4 + ((4 if t.norm == "rms-gemma" else fl.stream) * h if train else 0))
    # inputs of the block's own linears, for their weight gradients
    if train:
        calls = (1 if t.fused_qkv else 3) + (1 if (t.fused_gate_up or not t.gated) else 2)
        per_tok += (calls if fl.cast else 2) * fl.compute * h
    per_tok += t.dropouts * h  # hidden dropout masks
    # MLP: activation input, activation output and up (gated) / activation input (plain); the
    # down projection's input when it trains
    per_tok += (3 if t.gated else 1) * fl.mlp * f + (fl.mlp * f if train else 0)
    # LoRA adapters
    roles = adapter_roles(spec, setup) if fl.base != "train" else set()
    for role, d_in, _ in block_linears(spec):
        if role in roles:
            per_tok += fl.adapter * d_in + fl.adapter_out * setup.lora_rank
    local = bool(t.global_every and t.local_window and layer % t.global_every != 0 and s > t.local_window)
    return per_tok * b * s + attention_bytes(spec, t, fl, b, s, train, local)


def model_bytes(spec: ModelSpec, setup: TrainSetup, fl: Flow) -> float:
    """Bytes saved outside the blocks for the setup's micro-batch: the embeddings' LayerNorm and
    dropout (encoders), the final norm, the head's input, rotary tables and attention masks."""
    t = template(spec, setup)
    b, s, h = setup.batch_size, setup.seq_len, spec.hidden_size
    T = b * s
    train = fl.base == "train" and setup.technique != "freeze" or setup.technique == "freeze"
    per_tok = 0.0
    if t.kind in ("encoder", "modernbert"):
        per_tok += 4 * h + 8 + (h if t.dropouts else 0)  # embeddings' LayerNorm input (fp32) and dropout mask
    if t.kind == "modernbert":
        per_tok += (4 * h + 8) - (4 * h + 8)  # final norm; the first block has no attention norm
    if t.kind == "decoder":
        gemma = t.norm == "rms-gemma"
        per_tok += 4 * h + 4 + (((4 if gemma else fl.stream) * h) if train else 0)  # final norm
        head_trains = fl.base == "train" and (setup.technique == "full" or setup.task == "classification"
                                               or not spec.tied_embeddings)
        if setup.task == "classification" or head_trains:
            per_tok += (fl.compute if fl.cast or setup.task == "classification" else fl.stream) * h
    out = per_tok * T
    if t.kind != "encoder" or t.kind == "modernbert":  # rotary cos and sin (1 x s x head_dim), per set
        out += (2 if t.global_every else 1) * 2 * s * spec.head_size * (4 if t.kind == "modernbert" else fl.stream)
    if t.eager and t.kind == "decoder":  # one b x 1 x s x s additive causal mask for every layer
        out += b * s * s * fl.stream
    return out


def transient_bytes(spec: ModelSpec, setup: TrainSetup, fl: Flow, backward: bool = False) -> float:
    """Bytes per token of working tensors a block holds without saving them, at the peak of its
    forward (backward: of its recomputation and backward): encoders hold three residual-stream tensors
    (the embeddings' output, the block's input, the attention's output); a LoRA adapter converts
    its input to fp32 (peft) and keeps its dropout's output, 4-bit ones clone the base output."""
    t = template(spec, setup)
    if t.kind == "decoder":
        return 0.0  # (a decoder's peak is the loss's: its block transients are smaller)
    h = spec.hidden_size
    held = 3 * stream_bytes(spec, fl) * h
    # DeBERTa's attention sums three score tensors and masks them before the softmax: about 8 bytes
    # per score in flight at once (measured on the traces: 44-80 h per token at s = 256-512)
    # (recomputed before its backward: half of them)
    scores = (4 if backward else 8) * spec.num_attention_heads * setup.seq_len if t.relative else 0.0
    if t.relative and fl.base == "nf4":  # 4-bit q, k, v come back in fp32 and are cast for the products
        scores += 3 * 4 * h
    if backward:  # gradients in flight through the block: two fp32 stream-sized ones
        held += 2 * 4 * h
    if fl.base == "train":
        return held + scores
    x_bytes = {"o": fl.compute, "down": fl.mlp}  # other roles read the LayerNorm's fp32 output
    worst = 0.0
    for role, d_in, d_out in block_linears(spec):
        if role not in adapter_roles(spec, setup):
            continue
        xb = x_bytes.get(role, 4)
        if fl.base == "nf4":  # peft's 4-bit layer: no conversion under autocast; clones the base output
            worst = max(worst, xb * d_in + xb * d_out)
        else:  # peft's Linear: the input in fp32 (a copy unless it is fp32), and its dropout output
            worst = max(worst, (4 if xb < 4 else 0) * d_in + 4 * d_in)
    return held + max(worst, scores)  # (the adapters' moment and the scores' are different ones)
