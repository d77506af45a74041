"""Peak GPU memory of one fine-tuning setup, term by term, before any GPU time is spent.

A pure function of a `ModelSpec` (architecture numbers) and a `TrainSetup`; no torch. The terms:

    frozen_weights    base weights that do not train (16-bit for LoRA, NF4 + fp32 rest for QLoRA)
    trainable_weights weights that train (+ autocast's 16-bit copies of fp32 weights)
    gradients         one gradient per trainable parameter
    optimizer_states  AdamW: two states per trainable parameter (8-bit: one byte each)
    activations       tensors saved for backward (all layers, or checkpoints + one layer recomputed)
    logits_and_loss   b x s x V logits, their fp32 upcast, log-softmax and its gradient
    cuda_context      CUDA context + kernels + cuBLAS workspace, outside PyTorch's allocator
    allocator_margin  reserved minus allocated: the caching allocator's fragmentation

`peak_bytes` is their sum. It predicts reserved memory plus context (what nvidia-smi shows, and what
decides out-of-memory), so it is meant to sit slightly above `torch.cuda.max_memory_allocated()`.
The sum is conservative in one known way: gradients are counted as living alongside the forward
activations, which is true with gradient accumulation (grads persist across micro-batches) and
over-counts a little for full fine-tuning with accumulation 1.

Sources for the physics (checked, and cited where used):
- transformers docs, "Model training anatomy" (model_memory_anatomy.md): 4 B/param fp32 weights,
  mixed precision keeps an fp32 and a 16-bit copy (6 B), AdamW 8 B/param, 8-bit AdamW 2 B/param,
  gradients 4 B; BERT-large measurements (benchmarks/data/published_memory.json).
- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models":
  s*b*h*(34 + 5*a*s/h) bytes per GPT layer in 16-bit; the 5*a*s^2*b term is eager attention.
- Dettmers et al. 2023, "QLoRA": NF4 blocks of 64 with double-quantised constants, ~0.127 bit of
  overhead per parameter (4.127 bit -> 0.516 B/param); paged optimizers.
- peft `prepare_model_for_kbit_training`: upcasts every non-quantised fp16/bf16 parameter
  (embeddings, lm_head, norms) to fp32 and turns gradient checkpointing on.
- peft `scripts/train_memory.py` and `method_comparison/` results (max allocated / reserved).
- bitsandbytes docs: 8-bit optimizers keep uint8 states with blockwise (256) fp32 absmax.
- PyTorch autograd only saves an op's input when the other operand requires grad, so a frozen
  linear layer saves nothing for its weight gradient (checked with saved_tensors_hooks): the
  activations of LoRA differ from those of full fine-tuning term by term, and are modelled so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable

from autoft.advisor.activations import sdpa_kernel
from autoft.advisor.spec import SEQ2SEQ_TASKS, Estimate, ModelSpec, TrainSetup
from autoft.advisor.units import GIB



# ---------------------------------------------------------------------------------------------
# What the trainer does with each precision. ONE table, so that the trainer and the estimator
# agree: change it here if the trainer changes.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DtypePolicy:
    """Bytes per parameter / per activation element for one training precision (full and freeze)."""

    weight: float  # stored trainable weight
    autocast_copy: float  # 16-bit copy of each fp32 trainable weight cached by autocast in forward
    grad: float  # gradient
    adamw: float  # torch AdamW: exp_avg + exp_avg_sq, in the parameter's dtype
    frozen: float  # a frozen weight (freeze technique: bottom layers, embeddings)
    act: float  # one saved activation element (16-bit under autocast / pure bf16)
    help: str = ""


# Full and freeze fine-tuning:
# - bf16: fp32 master weights + bf16 autocast, as autoft's trainer does (and the HF Trainer with an
#   fp32 load and bf16=True, "bf16-mixed"): 4 + 2 (autocast copy) + 4 + 8 = 18 B/param.
# - bf16-pure: a model loaded in bfloat16 and trained with torch's AdamW, whose states take the
#   parameter's dtype (zeros_like(param)): 2 + 2 + 4 = 8 B/param. Published rows trained that way
#   are compared with this policy; autoft's trainer never trains so.
# - fp16: fp32 master weights + autocast + GradScaler (GradScaler refuses fp16 gradients, so pure
#   fp16 cannot train): 4 (fp32) + 2 (autocast copy) + 4 (fp32 grads) + 8 (fp32 AdamW) = 18 B/param,
#   the "18 bytes per parameter" of the transformers docs.
# - fp32: 4 + 4 + 8 = 16 B/param, activations in fp32.
TRAINING_DTYPES: dict[str, DtypePolicy] = {
    # autoft's trainer (autotrain/models.py) keeps fp32 master weights for full/freeze and runs
    # bf16 under autocast, as HF Trainer does with an fp32 load: "bf16" must describe that.
    "bf16": DtypePolicy(weight=4, autocast_copy=2, grad=4, adamw=8, frozen=4, act=2,
                        help="fp32 master weights + bf16 autocast (autoft's trainer, HF Trainer)"),
    "bf16-mixed": DtypePolicy(weight=4, autocast_copy=2, grad=4, adamw=8, frozen=4, act=2,
                              help="fp32 master weights + bf16 autocast (HF Trainer, fp32 load)"),
    "bf16-pure": DtypePolicy(weight=2, autocast_copy=0, grad=2, adamw=4, frozen=2, act=2,
                             help="pure bf16: bf16 weights, bf16 grads, AdamW states in bf16"),
    "fp16": DtypePolicy(weight=4, autocast_copy=2, grad=4, adamw=8, frozen=4, act=2,
                        help="fp32 master weights + fp16 autocast + GradScaler"),
    "fp32": DtypePolicy(weight=4, autocast_copy=0, grad=4, adamw=8, frozen=4, act=4,
                        help="everything in fp32"),
}
# LoRA/QLoRA: peft keeps adapter weights in fp32 (autocast_adapter_dtype=True), so adapters cost
# 4 (weight) + 4 (grad) + 8 (AdamW) B/param whatever the precision; the frozen base is loaded in
# the training dtype (2 B for bf16/fp16, 4 B for fp32).
ADAPTER_BYTES = {"weight": 4, "grad": 4, "adamw": 8}

# Model types whose MLP is a single up/down pair with GELU (everything else decoder-side is gated:
# SwiGLU/GeGLU with gate, up and down projections).
NON_GATED_DECODERS = frozenset({"gpt2", "phi", "gpt_neox", "gptj", "gpt_bigcode", "starcoder2", "falcon",
                                "opt", "bloom", "codegen", "mpt", "gpt_neo"})


# ---------------------------------------------------------------------------------------------
# Calibration constants: all in one place, refit from measurements with fit_constants().
# activation_scale, allocator_dynamic_frac and logits_bytes_16bit were fitted by
# `python benchmarks/bench_estimator_accuracy.py --fit` on the 12 calibration rows of
# benchmarks/data/published_memory.json (6 more rows held out); see benchmarks/results/.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constants:
    # CUDA context + loaded kernels + cuBLAS workspace, outside the caching allocator. transformers'
    # "Model training anatomy" measured 1343 MB on a V100 with CUDA 11.2 (all kernels loaded
    # eagerly); with lazy module loading (CUDA >= 11.7, the default in PyTorch wheels) an A100/H100
    # context is about 0.4-0.6 GiB.
    cuda_context_bytes: float = 0.5 * GIB
    # reserved / allocated: fragmentation of the churning terms (activations, logits) and of the
    # rest (weights and optimizer states are allocated once and pack well).
    allocator_dynamic_frac: float = 0.30
    allocator_static_frac: float = 0.02
    # NF4 with double quantisation: 4 bit + 8-bit absmax per 64 + fp32 per 256 blocks (QLoRA paper).
    nf4_bytes_per_param: float = 0.5 + 1 / 64 + 4 / (64 * 256)
    # 8-bit AdamW: two uint8 states + fp32 absmax per 256-block per state (bitsandbytes).
    adam8bit_bytes_per_param: float = 2 + 2 * 4 / 256
    # logits and loss, bytes per token per vocabulary entry: 16-bit logits (2) + fp32 upcast (4) +
    # log-softmax output (4) + its gradient (4) + the upcast's gradient (2) overlap to 12-16; the
    # fit on published runs lands at the top of that range (16), as does all-fp32 (16).
    logits_bytes_16bit: float = 16.0
    logits_bytes_fp32: float = 16.0
    # tokens whose logits exist at once with a chunked/fused cross-entropy
    chunked_loss_tokens: int = 1024
    # bytes per input element that a LoRA-wrapped linear saves for its adapter (peft casts the input
    # to the adapter's fp32, or autocast keeps a 16-bit copy, plus a dropout mask when p > 0).
    lora_input_bytes: float = 4.0
    # dropout masks saved by encoders' hidden dropout (bool, 1 B per element).
    dropout_mask_bytes: float = 1.0
    # temporaries of the optimizer step, as a fraction of the AdamW state bytes: torch's fused AdamW
    # (what the trainer uses on CUDA) allocates none; the foreach implementation (the HF Trainer's
    # old default "adamw_torch") about one parameter-sized tensor in the state dtype (0.5). The step
    # runs after backward, so it only matters when it exceeds the freed activations and logits.
    adamw_step_temp_frac: float = 0.0
    # multiplier on the per-layer activation count, for what the tally above misses (small
    # temporaries live at the peak, padding to multiples); refit on measurements.
    activation_scale: float = 0.9

    def to_dict(self) -> dict:
        return asdict(self)


CONSTANTS = Constants()

TERMS = ("frozen_weights", "trainable_weights", "gradients", "optimizer_states", "activations",
         "logits_and_loss", "cuda_context", "allocator_margin")


# ---------------------------------------------------------------------------------------------
# Architecture helpers
# ---------------------------------------------------------------------------------------------
# Encoders with a gated (GeGLU) MLP.
GATED_ENCODERS = frozenset({"modernbert"})
# Model types whose attention is computed explicitly whatever the kernel setting (DeBERTa's
# disentangled attention adds content-to-position and position-to-content score matrices).
EAGER_ONLY = frozenset({"deberta", "deberta-v2"})


def is_gated(spec: ModelSpec) -> bool:
    if spec.gated_mlp is not None:  # said by config.json (T5's feed_forward_proj)
        return spec.gated_mlp
    if spec.family == "encoder-decoder":
        return False  # BART, Marian: fc1/fc2
    if spec.family == "encoder":
        return spec.model_type in GATED_ENCODERS
    return spec.model_type not in NON_GATED_DECODERS


def layer_linears(spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(role, d_in, d_out) of every linear layer in one transformer block.
    Roles: q, k, v, o, gate, up, down."""
    h, hd = spec.hidden_size, spec.head_size
    q_out, kv_out = spec.num_attention_heads * hd, spec.num_kv_heads * hd
    f = spec.intermediate_size
    out = [("q", h, q_out), ("k", h, kv_out), ("v", h, kv_out), ("o", q_out, h)]
    if is_gated(spec):
        out.append(("gate", h, f))
    out += [("up", h, f), ("down", f, h)]
    return out


def lora_targets(setup: TrainSetup) -> set[str]:
    # "attention": peft's defaults for Llama/BERT-like models (q_proj+v_proj, query+value);
    # "qkvo": all four attention projections (what fms-acceleration's and many recipes' rows use)
    if setup.lora_targets == "attention":
        return {"q", "v"}
    if setup.lora_targets == "qkvo":
        return {"q", "k", "v", "o"}
    return {"q", "k", "v", "o", "gate", "up", "down"}


def lora_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Trainable LoRA parameters: r x (d_in + d_out) per targeted matrix per layer."""
    targets = lora_targets(setup)
    per_layer = sum(setup.lora_rank * (i + o) for role, i, o in layer_linears(spec) if role in targets)
    return per_layer * spec.num_layers


def head_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """New classification head: a linear layer (decoders' `score`), plus a dense h x h layer for
    encoders (RoBERTa-style head / BERT pooler)."""
    if setup.task != "classification":
        return 0
    h, n = spec.hidden_size, setup.num_labels
    return h * n + n + (h * h + h if spec.family == "encoder" else 0)


def effective_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Parameters of the model as trained: a decoder used for classification loses its untied
    LM head and gains a small score head."""
    p = spec.params
    if setup.task == "classification" and spec.family == "decoder" and not spec.tied_embeddings:
        p -= spec.vocab_size * spec.hidden_size
    return max(p, 1) + head_params(spec, setup)


def block_linear_params(spec: ModelSpec) -> int:
    """Parameters in the transformer blocks' linear layers (what QLoRA quantises)."""
    return spec.num_layers * sum(i * o for _, i, o in layer_linears(spec))


def frozen_bottom_layers(spec: ModelSpec, setup: TrainSetup) -> int:
    """freeze: bottom layers kept frozen (None -> all but the top quarter, at least one trains)."""
    L = spec.num_layers
    if setup.freeze_layers is None:
        return L - max(1, math.ceil(L / 4))
    return min(setup.freeze_layers, L)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
def layer_activation_bytes_per_token(spec: ModelSpec, setup: TrainSetup, *, weights_train: bool,
                                     lora: set[str], e: float, c: Constants = CONSTANTS,
                                     stream: float | None = None) -> float:
    """Bytes one block saves for backward per token (sdpa/flash attention, no quadratic term).

    weights_train: the block's own weights train (full, freeze's top layers): every linear saves
    its input. lora: roles with a LoRA adapter (their adapter saves a copy of the input).
    e: bytes per saved element (2 in 16-bit, 4 in fp32). stream: bytes per element of the residual
    stream (4 under autocast with fp32 weights: LayerNorm runs in fp32 there)."""
    stream = e if stream is None else stream
    h, hd = spec.hidden_size, spec.head_size
    q_w, kv_w = spec.num_attention_heads * hd, spec.num_kv_heads * hd
    f = spec.intermediate_size
    total = 0.0
    # q, k, v and the attention output are saved by sdpa/flash whatever trains (all require grad),
    # plus its fp32 log-sum-exp (one float per head per token).
    total += e * (2 * q_w + 2 * kv_w) + 4 * spec.num_attention_heads
    if spec.family == "decoder":
        # two RMSNorms (transformers upcasts to fp32: the fp32 input is saved); their 16-bit output
        # is saved only by a trainable weight multiply / trainable linear.
        total += 2 * 4 * h + (2 * e * h if weights_train else 0)
    else:
        # two post-LayerNorms: input saved (+ output when the norm weight trains) + two hidden
        # dropout masks (p = 0.1 in BERT-style configs).
        total += 2 * stream * h + (2 * e * h if weights_train else 0) + 2 * c.dropout_mask_bytes * h
    # MLP: gated: gate out (SiLU input), SiLU out and up out (the product's operands);
    # plain: up out (GELU input).
    if is_gated(spec):
        total += 3 * e * f
    else:
        total += e * f
    # inputs of the linear layers, saved for their weight gradients when the weights train:
    # attention input (shared by q, k, v: the norm output counted above for decoders; for encoders
    # the previous layer's LayerNorm output, counted there), o_proj input, down_proj input.
    if weights_train:
        total += e * q_w  # o_proj input (contiguous copy of the attention output)
        total += e * f  # down_proj input (SiLU(gate) * up, or GELU output)
    else:
        # frozen base: the GELU output is not needed (frozen down_proj saves nothing), but a
        # gated product still saves its operands (counted above).
        pass
    # LoRA adapters: each targeted linear saves its own copy of the input for lora_A.
    for role, d_in, _ in layer_linears(spec):
        if role in lora:
            total += c.lora_input_bytes * d_in
    return total * c.activation_scale


def eager_attention_bytes_per_sample(spec: ModelSpec, setup: TrainSetup, e: float, softmax: float | None = None) -> float:
    """Eager attention's a x s x s matrices per layer per sample (Korthikanti's 5*a*s^2 term):
    decoders (transformers' eager_attention_forward): fp32 softmax output + its 16-bit cast;
    encoders: softmax output + dropout mask + dropout output."""
    a, s = spec.num_attention_heads, setup.seq_len
    softmax = e if softmax is None else softmax  # autocast runs softmax in fp32
    per = (4 + e) if spec.family == "decoder" else (softmax + 1 + e)
    if spec.model_type in EAGER_ONLY:
        per += 2 * e  # DeBERTa: c2p and p2c relative-position score matrices
    if e == 4 and spec.family == "decoder":
        per = 4  # fp32 softmax output is the cast
    return a * s * s * per


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------
def estimate(spec: ModelSpec, setup: TrainSetup, constants: Constants | None = None,
             dtype_policy: str | None = None) -> Estimate:
    """Predicted peak memory of training `spec` with `setup`, by term (bytes).

    dtype_policy: a key of TRAINING_DTYPES to override the one chosen by setup.precision (used to
    compare with published runs that trained differently, e.g. "bf16-mixed")."""
    c = constants or CONSTANTS
    if spec.family == "encoder-decoder":
        return estimate_encoder_decoder(spec, setup, c, dtype_policy)
    if setup.task in SEQ2SEQ_TASKS:  # a decoder reads source and target as one seq_len sequence
        setup = replace(setup, task="generation")
    notes: list[str] = []
    if not spec.params_verified:
        notes.append(f"{spec.id}: {spec.params / 1e9:.2f}B parameters counted from config.json by generic rules "
                     f"(model type {spec.model_type!r}) and not checked against the weights: the estimate may be "
                     "far off; give the folder with its safetensors (or their index) to check it")
    on_cpu = setup.device == "cpu"
    precision = "fp32" if on_cpu else setup.precision
    if on_cpu and setup.precision != "fp32":
        notes.append("CPU: training runs in fp32; the figure is RAM, not GPU memory")
    if on_cpu and setup.technique == "qlora":
        # bitsandbytes >= 0.48 runs NF4 layers on the CPU: it works, but dequantising every
        # forward makes it slower than LoRA, and saves RAM only.
        notes.append("CPU: QLoRA runs (bitsandbytes CPU kernels) but is slower than LoRA")
    policy = TRAINING_DTYPES[dtype_policy or precision]
    e = policy.act
    b, s, L, h, V = setup.batch_size, setup.seq_len, spec.num_layers, spec.hidden_size, spec.vocab_size
    tokens = b * s
    P = effective_params(spec, setup)
    tech = setup.technique
    ckpt = setup.gradient_checkpointing
    opt_per_param_full = policy.adamw
    if setup.optimizer != "adamw":
        opt_per_param_full = c.adam8bit_bytes_per_param

    frozen = trainable = grads = opt = 0.0
    stream_bytes = e  # bytes per element of the hidden state between blocks
    logits_elem = c.logits_bytes_fp32 if e == 4 else c.logits_bytes_16bit
    lora: set[str] = set()
    trained_layers = L  # layers whose activations are saved (gradient flows through them)
    layer_weights_train = False
    extra_act = 0.0

    if tech == "full":
        trainable = P * (policy.weight + policy.autocast_copy)
        grads = P * policy.grad
        opt = P * opt_per_param_full
        layer_weights_train = True
    elif tech == "freeze":
        k = frozen_bottom_layers(spec, setup)
        per_layer = sum(i * o for _, i, o in layer_linears(spec)) + 2 * h
        n_train = (L - k) * per_layer + h + head_params(spec, setup)  # top layers, final norm, head
        n_train = min(n_train, P)
        trainable = n_train * (policy.weight + policy.autocast_copy)
        frozen = (P - n_train) * policy.frozen
        grads = n_train * policy.grad
        opt = n_train * opt_per_param_full
        trained_layers = L - k
        layer_weights_train = True
        notes.append(f"freeze: bottom {k} of {L} layers and the embeddings frozen; "
                     f"{n_train / 1e6:.1f}M parameters train")
    else:  # lora, qlora
        n_lora = lora_params(spec, setup) + head_params(spec, setup)
        adam = ADAPTER_BYTES["adamw"] if setup.optimizer == "adamw" else c.adam8bit_bytes_per_param
        trainable = n_lora * ADAPTER_BYTES["weight"]
        grads = n_lora * ADAPTER_BYTES["grad"]
        opt = n_lora * adam
        lora = lora_targets(setup)
        base = P - head_params(spec, setup)
        if tech == "lora":
            frozen = base * (4 if precision == "fp32" else 2)
        else:
            quantised = min(block_linear_params(spec), base)
            rest = base - quantised
            frozen = quantised * c.nf4_bytes_per_param + rest * 4  # k-bit prep: rest upcast to fp32
            # one weight dequantised to the compute dtype at a time
            extra_act += max(i * o for _, i, o in layer_linears(spec)) * 2
            stream_bytes = 4  # fp32 embeddings and norms make the residual stream fp32
            # the lm_head is fp32 after k-bit preparation and common QLoRA recipes cast its output
            # to fp32: fp32 logits (fms-acceleration's bnb runs measure ~16 B per logit, not 12)
            logits_elem = c.logits_bytes_fp32
            notes.append(f"qlora: {quantised / 1e9:.2f}B block parameters in NF4 (double quant), "
                         f"{rest / 1e6:.0f}M embedding/head/norm parameters upcast to fp32 by k-bit preparation")
            if not ckpt:
                notes.append("qlora: peft's prepare_model_for_kbit_training turns gradient checkpointing on "
                             "unless told not to; this estimate assumes it is off as requested")
        notes.append(f"{tech}: {n_lora / 1e6:.2f}M trainable parameters (rank {setup.lora_rank}, "
                     f"{setup.lora_targets} targets), adapters in fp32")
    if setup.optimizer == "paged-adamw-8bit":
        notes.append("paged-adamw-8bit: optimizer states are counted on the GPU, but under memory "
                     "pressure they are paged to CPU RAM, so the real peak can be lower")

    # -- activations --------------------------------------------------------------------------
    mixed = policy.autocast_copy > 0  # fp32 weights under autocast: fp32 stream, norms, softmax
    if (mixed and tech in ("full", "freeze")) or (spec.family == "encoder" and policy.act == 2):
        # the residual stream between blocks (what checkpointing keeps per layer) is fp32 under
        # autocast with fp32 weights (full/freeze: fp32 embeddings + 16-bit outputs add up in
        # fp32), and in every LayerNorm model under autocast: layer_norm runs in fp32 there and its
        # output is the stream (LoRA's 16-bit decoders keep a 16-bit stream)
        stream_bytes = 4
    per_token = layer_activation_bytes_per_token(spec, setup, weights_train=layer_weights_train,
                                                 lora=lora, e=e, c=c, stream=4 if mixed else None)
    per_layer = per_token * tokens
    eager = setup.attention == "eager" or spec.model_type in EAGER_ONLY
    if eager and setup.attention != "eager":
        notes.append(f"{spec.model_type}: attention is computed explicitly (a x s x s matrices per layer) "
                     "whatever the kernel setting")
    if eager:
        per_layer += eager_attention_bytes_per_sample(spec, setup, e, 4 if mixed else None) * b
    elif not on_cpu and spec.family == "decoder" and sdpa_kernel(spec, e) == "math":
        # CUDA SDPA has no fused kernel for this call (fp32 with grouped KV heads: flash needs 16
        # bits, memory-efficient no GQA), so the math one runs: it saves the a x s x s fp32
        # scores, q scaled and k, v repeated to every head, instead of q, k, v, the output and the
        # log-sum-exp (the fake-tensor trace: 36 of SmolLM2's 48 GiB at 2 x 4096 in fp32)
        a, qw, kvw = spec.num_attention_heads, spec.num_attention_heads * spec.head_size, spec.num_kv_heads * spec.head_size
        per_layer += (e * a * s + e * (3 * qw - 2 * qw - 2 * kvw) - 4 * a) * tokens
    if trained_layers <= 0:
        acts = 0.0
    elif ckpt:
        # one layer input per checkpointed layer + one layer's activations recomputed in backward.
        # The recompute happens after the logits' gradient is consumed, so at the peak only the
        # larger of the two lives: the logits term is counted in full below, the recomputed layer
        # only beyond it.
        acts = trained_layers * stream_bytes * h * tokens
        recompute = per_layer
    else:
        acts = trained_layers * per_layer
    acts += extra_act
    if trained_layers <= 0 or not ckpt:
        recompute = 0.0

    # -- logits and loss ----------------------------------------------------------------------
    if setup.task == "generation":
        t = min(tokens, c.chunked_loss_tokens) if setup.chunked_loss else tokens
        logits = logits_elem * t * V
        if not setup.chunked_loss and V * tokens * logits_elem > 0.25 * GIB:
            notes.append(f"logits: {logits / GIB:.2f} GiB for a {V:,}-token vocabulary; a chunked/fused "
                         "cross-entropy would remove most of it")
    else:
        logits = 16.0 * b * max(setup.num_labels, 1) * (s if spec.family == "decoder" else 1)

    if recompute:
        acts += max(0.0, recompute - logits)
    # optimizer step temporaries: live after the activations and logits are freed
    if setup.optimizer == "adamw" and c.adamw_step_temp_frac > 0:
        opt += max(0.0, c.adamw_step_temp_frac * opt - acts - logits)

    context = 0.0 if on_cpu else c.cuda_context_bytes
    static = frozen + trainable + grads + opt
    margin = c.allocator_dynamic_frac * (acts + logits) + c.allocator_static_frac * static
    breakdown = {
        "frozen_weights": frozen, "trainable_weights": trainable, "gradients": grads,
        "optimizer_states": opt, "activations": acts, "logits_and_loss": logits,
        "cuda_context": context, "allocator_margin": margin,
    }
    breakdown_int = {k: int(round(v)) for k, v in breakdown.items()}
    if eager and s >= 1024:
        notes.append("eager attention stores a x s x s score matrices per layer; sdpa/flash attention avoids them")
    return Estimate(peak_bytes=sum(breakdown_int.values()), breakdown_bytes=breakdown_int, notes=notes)


# ---------------------------------------------------------------------------------------------
# Encoder-decoders (T5, BART, Marian): two stacks, two lengths
# ---------------------------------------------------------------------------------------------
# The encoder reads seq_len source tokens, the decoder writes target_len target tokens; each
# decoder block adds cross-attention (q, o on target tokens; k, v on the encoder's output, so on
# source tokens), and the LM head's logits cover target tokens only. T5 adds a learned relative
# position bias to every attention, which SDPA receives as a float mask of b x heads x len_q x
# len_k per layer (transformers' sdpa_attention create_position_bias_mask); BART and Marian use
# plain SDPA. Pre-norm RMSNorm stacks (T5) are counted as the decoder-style norms above,
# post-LayerNorm stacks with dropout (BART, Marian) as the encoder-style ones.
RELATIVE_BIAS_TYPES = frozenset({"t5", "mt5", "umt5"})
PRE_NORM_RMS_TYPES = RELATIVE_BIAS_TYPES


def cross_attention_linears(spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(role, d_in, d_out) of a decoder block's cross-attention: q and o act on target tokens,
    k and v on the encoder output (source tokens)."""
    h, hd = spec.hidden_size, spec.head_size
    q_out, kv_out = spec.num_attention_heads * hd, spec.num_kv_heads * hd
    return [("q", h, q_out), ("k", h, kv_out), ("v", h, kv_out), ("o", q_out, h)]


def encoder_decoder_layers(spec: ModelSpec) -> tuple[int, int]:
    return spec.num_layers, spec.num_decoder_layers or spec.num_layers


def encoder_decoder_lora_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """LoRA parameters over both stacks: r x (d_in + d_out) per targeted matrix, cross-attention
    included (peft matches T5's EncDecAttention.q/v and BART's encoder_attn.q_proj/v_proj by name)."""
    targets = lora_targets(setup)
    L_enc, L_dec = encoder_decoder_layers(spec)
    block = sum(setup.lora_rank * (i + o) for role, i, o in layer_linears(spec) if role in targets)
    cross = sum(setup.lora_rank * (i + o) for role, i, o in cross_attention_linears(spec) if role in targets)
    return L_enc * block + L_dec * (block + cross)


def _stack_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as one stack for layer_activation_bytes_per_token: pre-norm RMS stacks count like
    decoder blocks, post-LayerNorm + dropout stacks like encoder blocks."""
    fam = "decoder" if spec.model_type in PRE_NORM_RMS_TYPES else "encoder"
    return replace(spec, family=fam, gated_mlp=is_gated(spec))


def encoder_decoder_activations(spec: ModelSpec, setup: TrainSetup, *, trained: tuple[int, int],
                                weights_train: bool, lora: set[str], e: float, stream: float,
                                c: Constants = CONSTANTS) -> float:
    """Bytes saved for backward by both stacks (no checkpointing). `trained`: (encoder layers whose
    activations are kept, decoder layers whose weights train); the decoder's other layers still
    save their frozen-form activations when the gradient must reach the encoder through them."""
    b, s = setup.batch_size, setup.seq_len
    t = setup.target_len or setup.seq_len
    L_enc, L_dec = encoder_decoder_layers(spec)
    one = _stack_spec(spec)
    a, h = spec.num_attention_heads, spec.hidden_size
    q_w, kv_w = a * spec.head_size, spec.num_kv_heads * spec.head_size

    def block(train: bool) -> float:
        return layer_activation_bytes_per_token(one, setup, weights_train=train, lora=lora, e=e, c=c, stream=stream)

    enc = trained[0] * block(weights_train) * b * s
    # decoder: self-attention block as above, plus cross-attention per target token (q, output,
    # o input, its norm, log-sum-exp) and per source token (k and v of the encoder output)
    cross_t = e * 2 * q_w + 4 * a + stream * h + (e * (q_w + h) if weights_train else 0)
    cross_t += sum(c.lora_input_bytes * i for role, i, _ in cross_attention_linears(spec) if role in lora and role in "qo")
    cross_s = 2 * e * kv_w + sum(c.lora_input_bytes * i for role, i, _ in cross_attention_linears(spec)
                                 if role in lora and role in "kv")
    n_dec_train = trained[1]
    dec = (n_dec_train * block(weights_train) + (L_dec - n_dec_train) * block(False)) * b * t
    dec += L_dec * (cross_t * b * t + cross_s * b * s) * c.activation_scale
    dec += (e * h * b * s if weights_train else 0)  # the encoder output, saved once for the k/v weights
    if spec.model_type in RELATIVE_BIAS_TYPES:  # float bias masks, fp32, one per attention
        dec += 4 * a * b * (L_dec * (t * t + t * s))
        enc += 4 * a * b * trained[0] * s * s
    return enc + dec


def estimate_encoder_decoder(spec: ModelSpec, setup: TrainSetup, c: Constants = CONSTANTS,
                             dtype_policy: str | None = None) -> Estimate:
    """Peak memory of fine-tuning an encoder-decoder on source (seq_len) -> target (target_len)."""
    notes: list[str] = []
    on_cpu = setup.device == "cpu"
    precision = "fp32" if on_cpu else setup.precision
    policy = TRAINING_DTYPES[dtype_policy or precision]
    e, mixed = policy.act, policy.autocast_copy > 0
    stream = 4 if mixed else e
    b, s, h, V = setup.batch_size, setup.seq_len, spec.hidden_size, spec.vocab_size
    t = setup.target_len or s
    L_enc, L_dec = encoder_decoder_layers(spec)
    P, tech = spec.params, setup.technique
    opt_full = policy.adamw if setup.optimizer == "adamw" else c.adam8bit_bytes_per_param
    frozen = trainable = grads = opt = extra = 0.0
    lora: set[str] = set()
    trained, weights_train = (L_enc, L_dec), tech in ("full", "freeze")
    logits_elem = c.logits_bytes_fp32 if e == 4 else c.logits_bytes_16bit
    block_enc = sum(i * o for _, i, o in layer_linears(spec)) + 2 * h
    block_dec = block_enc + sum(i * o for _, i, o in cross_attention_linears(spec)) + h
    if tech == "full":
        trainable, grads, opt = P * (policy.weight + policy.autocast_copy), P * policy.grad, P * opt_full
    elif tech == "freeze":
        k_enc = frozen_bottom_layers(replace(spec, num_layers=L_enc), setup)
        k_dec = frozen_bottom_layers(replace(spec, num_layers=L_dec), setup)
        n = min(P, (L_enc - k_enc) * block_enc + (L_dec - k_dec) * block_dec + 2 * h
                + (0 if spec.tied_embeddings else V * h))
        trainable, frozen = n * (policy.weight + policy.autocast_copy), (P - n) * policy.frozen
        grads, opt, trained = n * policy.grad, n * opt_full, (L_enc - k_enc, L_dec - k_dec)
        notes.append(f"freeze: bottom {k_enc} of {L_enc} encoder and {k_dec} of {L_dec} decoder layers and the "
                     f"embeddings frozen; {n / 1e6:.1f}M parameters train")
    else:
        n = encoder_decoder_lora_params(spec, setup)
        adam = ADAPTER_BYTES["adamw"] if setup.optimizer == "adamw" else c.adam8bit_bytes_per_param
        trainable, grads, opt = n * ADAPTER_BYTES["weight"], n * ADAPTER_BYTES["grad"], n * adam
        lora = lora_targets(setup)
        if tech == "lora":
            frozen = P * (4 if precision == "fp32" else 2)
        else:
            quantised = min(L_enc * (block_enc - 2 * h) + L_dec * (block_dec - 3 * h), P)
            frozen = quantised * c.nf4_bytes_per_param + (P - quantised) * 4
            extra = max(i * o for _, i, o in layer_linears(spec)) * 2
            stream, logits_elem = 4, c.logits_bytes_fp32
        notes.append(f"{tech}: {n / 1e6:.2f}M trainable parameters (rank {setup.lora_rank}, "
                     f"{setup.lora_targets} targets, encoder, decoder and cross-attention), adapters in fp32")
    acts = encoder_decoder_activations(spec, setup, trained=trained, weights_train=weights_train, lora=lora,
                                       e=e, stream=stream, c=c)
    logits = logits_elem * b * t * V  # the LM head covers target tokens only
    if setup.gradient_checkpointing:
        # block inputs kept, one block recomputed at a time (counted beyond the logits, as above)
        kept = stream * h * b * (trained[0] * s + L_dec * t) + e * h * b * s
        one_block = acts / max(1, trained[0] + L_dec)
        acts = kept + max(0.0, one_block - logits)
    acts += extra
    context = 0.0 if on_cpu else c.cuda_context_bytes
    static = frozen + trainable + grads + opt
    margin = c.allocator_dynamic_frac * (acts + logits) + c.allocator_static_frac * static
    breakdown = {"frozen_weights": frozen, "trainable_weights": trainable, "gradients": grads,
                 "optimizer_states": opt, "activations": acts, "logits_and_loss": logits,
                 "cuda_context": context, "allocator_margin": margin}
    bd = {k: int(round(v)) for k, v in breakdown.items()}
    notes.append(f"encoder-decoder: {L_enc} encoder layers over {s} source tokens, {L_dec} decoder layers over "
                 f"{t} target tokens; logits over the target tokens only")
    if spec.model_type in RELATIVE_BIAS_TYPES:
        notes.append(f"{spec.model_type}: the relative position bias reaches attention as a b x heads x len x len "
                     "float mask per layer")
    return Estimate(peak_bytes=sum(bd.values()), breakdown_bytes=bd, notes=notes)


def predicted(est: Estimate, what: str = "peak") -> int:
    """The part of an estimate comparable with one kind of measurement:
    'peak' / 'nvidia-smi' (everything), 'reserved' (no CUDA context), 'allocated' (no context, no
    allocator margin)."""
    bd = est.breakdown_bytes
    if what in ("peak", "nvidia-smi"):
        return est.peak_bytes
    if what == "reserved":
        return est.peak_bytes - bd["cuda_context"]
    if what == "allocated":
        return est.peak_bytes - bd["cuda_context"] - bd["allocator_margin"]
    raise ValueError(f"unknown measurement kind {what!r}")


def max_batch_size(spec: ModelSpec, setup: TrainSetup, memory_bytes: int, safety: float = 0.9,
                   limit: int = 1024, constants: Constants | None = None) -> int:
    """Largest micro-batch whose predicted peak is at most safety x memory (0 if even 1 does not fit).
    Peak memory grows monotonically with the batch, so doubling then bisection finds it."""
    budget = safety * memory_bytes

    def fits(bs: int) -> bool:
        return estimate(spec, replace(setup, batch_size=bs), constants).peak_bytes <= budget

    if not fits(1):
        return 0
    lo = 1
    while lo < limit and fits(min(lo * 2, limit)):
        lo = min(lo * 2, limit)
    if lo >= limit:
        return limit
    hi = min(lo * 2, limit)  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One measured peak: the model, the setup, the bytes measured and what was measured."""

    spec: ModelSpec
    setup: TrainSetup
    measured_bytes: float
    kind: str = "reserved"  # allocated | reserved | nvidia-smi
    dtype_policy: str | None = None
    context_bytes: float | None = None  # the context the source itself measured, when it did


def relative_errors(measurements: Iterable[Measurement], constants: Constants | None = None) -> list[float]:
    """(predicted - measured) / measured for each measurement (negative: under-prediction)."""
    out = []
    for m in measurements:
        est = estimate(m.spec, m.setup, constants, m.dtype_policy)
        pred = predicted(est, m.kind)
        if m.kind == "nvidia-smi" and m.context_bytes is not None:
            pred = pred - est.breakdown_bytes["cuda_context"] + m.context_bytes
        out.append((pred - m.measured_bytes) / m.measured_bytes)
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2) if n else 0.0


def fit_constants(measurements: list[Measurement], base: Constants | None = None,
                  grid: dict[str, Iterable[float]] | None = None, max_under: float = 0.10) -> Constants:
    """Refit calibration constants on measurements by grid search: minimise the median absolute
    relative error, with any under-prediction beyond `max_under` penalised heavily (under-predicting
    is what crashes a run). Pure: returns new Constants."""
    base = base or CONSTANTS
    grid = grid or {
        "activation_scale": [0.8, 0.9, 1.0, 1.1, 1.2, 1.3],
        "allocator_dynamic_frac": [0.05, 0.1, 0.15, 0.2, 0.3],
        "logits_bytes_16bit": [10.0, 12.0, 14.0, 16.0],
    }
    names = list(grid)
    known = {f.name for f in fields(Constants)}
    for n in names:
        if n not in known:
            raise ValueError(f"unknown constant {n!r}")

    def loss(cst: Constants) -> float:
        errs = relative_errors(measurements, cst)
        under = sum(max(0.0, -err - max_under) for err in errs)
        return _median([abs(x) for x in errs]) + 10 * under

    best, best_loss = base, loss(base)

    def walk(i: int, cur: dict) -> None:
        nonlocal best, best_loss
        if i == len(names):
            cst = replace(base, **cur)
            lo = loss(cst)
            if lo < best_loss:
                best, best_loss = cst, lo
            return
        for v in grid[names[i]]:
            walk(i + 1, {**cur, names[i]: v})

    walk(0, {})
    return best
