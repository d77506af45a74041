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

from autoft.advisor.activations import (adapter_roles, block_bytes, block_linears, flow, known_template,
                                        model_bytes, stream_bytes, template, transient_bytes)
from autoft.advisor.spec import Estimate, ModelSpec, TrainSetup
from autoft.errors import AutoftError

GIB = 1024**3


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
# - bf16: "pure bf16". The model is loaded in bfloat16 and trained with torch's fused AdamW, whose
#   states take the parameter's dtype (torch.optim.AdamW: zeros_like(param)): 2 + 2 + 4 = 8 B/param.
#   If the trainer ever keeps fp32 master weights for bf16, use "bf16-mixed" (the HF Trainer default
#   when a model is loaded in fp32 and bf16=True): 4 + 2 + 4 + 8 = 18 B/param.
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



# ---------------------------------------------------------------------------------------------
# Constants. Two kinds, kept apart:
# - tensor-level ones, held to autoft's own step traced on fake tensors (autotrain/trace.py,
#   benchmarks/bench_trace_matrix.py): the block transients;
# - CUDA-only ones, which no CPU trace can see (the context, cuBLAS workspaces, the caching
#   allocator's fragmentation), calibrated on published GPU runs
#   (benchmarks/bench_estimator_accuracy.py --fit, benchmarks/data/published_memory.json).
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constants:
    # CUDA context + loaded kernels + cuBLAS/cuBLASLt workspaces (the context lies outside the
    # caching allocator; the workspaces, a few to a few tens of MiB, inside it). transformers'
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
    # tokens whose logits exist at once with a chunked/fused cross-entropy
    chunked_loss_tokens: int = 1024
    # temporaries of the optimizer step, as a fraction of the AdamW state bytes: torch's fused AdamW
    # (what the trainer uses on CUDA) allocates none; the foreach implementation (the HF Trainer's
    # old default "adamw_torch") about one parameter-sized tensor in the state dtype (0.5). The step
    # runs after backward, so it only matters when it exceeds the freed activations and logits.
    adamw_step_temp_frac: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


CONSTANTS = Constants()

TERMS = ("frozen_weights", "trainable_weights", "gradients", "optimizer_states", "activations",
         "logits_and_loss", "cuda_context", "allocator_margin")


# ---------------------------------------------------------------------------------------------
# Architecture helpers
# ---------------------------------------------------------------------------------------------
def is_gated(spec: ModelSpec) -> bool:
    return template(spec).gated


def layer_linears(spec: ModelSpec) -> list[tuple[str, int, int]]:
    """(role, d_in, d_out) of every linear layer in one transformer block, as the model type
    builds them (fused q/k/v or gate/up where it fuses them): see advisor/activations.py."""
    return block_linears(spec)


def lora_targets(spec: ModelSpec, setup: TrainSetup) -> set[str]:
    """Roles with a LoRA adapter (peft's attention targets for the model type, or all-linear)."""
    return adapter_roles(spec, setup)


def lora_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """Trainable LoRA parameters: r x (d_in + d_out) per targeted matrix per layer."""
    targets = adapter_roles(spec, setup)
    per_layer = sum(setup.lora_rank * (i + o) for role, i, o in block_linears(spec) if role in targets)
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
    return spec.num_layers * sum(i * o for _, i, o in block_linears(spec))


def frozen_bottom_layers(spec: ModelSpec, setup: TrainSetup) -> int:
    """freeze: bottom layers kept frozen (None -> all but the top quarter, at least one trains;
    as autotrain/techniques/freeze.py's frozen_count)."""
    L = spec.num_layers
    if setup.freeze_layers is None:
        return L - max(1, L // 4)
    return min(setup.freeze_layers, L)


def lm_head_params(spec: ModelSpec, setup: TrainSetup) -> int:
    """The output projection a generation step multiplies by (tied or not): V x h."""
    return spec.vocab_size * spec.hidden_size if setup.task == "generation" else 0


# ---------------------------------------------------------------------------------------------
# Weights, gradients, optimizer states
# ---------------------------------------------------------------------------------------------
@dataclass
class Weights:
    frozen: float = 0.0  # frozen weights
    masters: float = 0.0  # trainable weights as stored (fp32 masters, fp32 adapters)
    copies: float = 0.0  # 16-bit casts saved for backward (autocast): trainable linears + cast frozen heads
    copies_head: float = 0.0  # the part of `copies` outside the blocks (they stay with checkpointing)
    copies_block: float = 0.0  # one trained block's copies (a recomputed layer makes them again)
    grads: float = 0.0  # one gradient per trainable parameter
    opt: float = 0.0
    embedding_grad: float = 0.0  # the input embeddings' gradient, when they train


def weight_terms(spec: ModelSpec, setup: TrainSetup, policy: DtypePolicy, c: Constants,
                 notes: list[str]) -> Weights:
    """Bytes of weights, autocast's weight copies, gradients and optimizer states."""
    tech, L, h = setup.technique, spec.num_layers, spec.hidden_size
    P = effective_params(spec, setup)
    copy = policy.autocast_copy  # 2 under autocast with fp32 trainable weights, else 0
    lm = lm_head_params(spec, setup)
    head = head_params(spec, setup)
    block = sum(i * o for _, i, o in block_linears(spec))
    adam = policy.adamw if setup.optimizer == "adamw" else c.adam8bit_bytes_per_param
    w = Weights()
    if tech == "full":
        w.masters, w.grads, w.opt = P * policy.weight, P * policy.grad, P * adam
        w.embedding_grad = spec.vocab_size * h * policy.grad
        w.copies_block, w.copies_head = copy * block, copy * (lm + head)
        w.copies = L * w.copies_block + w.copies_head
    elif tech == "freeze":
        k = frozen_bottom_layers(spec, setup)
        per_layer = block + TEMPLATE_NORMS(spec) * h
        untied_lm = lm if not spec.tied_embeddings else 0
        n_train = min((L - k) * per_layer + h + head + untied_lm, P)
        w.masters, w.frozen = n_train * policy.weight, (P - n_train) * policy.frozen
        w.grads, w.opt = n_train * policy.grad, n_train * adam
        # the LM head is cast whether it trains (untied) or not (tied to the frozen embeddings):
        # the top layers need its gradient's input side
        w.copies_block, w.copies_head = copy * block, copy * (lm + head)
        w.copies = (L - k) * w.copies_block + w.copies_head
        notes.append(f"freeze: bottom {k} of {L} layers and the embeddings frozen; "
                     f"{n_train / 1e6:.1f}M parameters train")
    else:  # lora, qlora: fp32 adapters (peft) and head
        n_lora = lora_params(spec, setup) + head
        ad16 = 2 if policy.act == 2 else 0  # autocast's 16-bit copies of the fp32 adapters
        w.masters, w.grads = n_lora * ADAPTER_BYTES["weight"], n_lora * ADAPTER_BYTES["grad"]
        w.opt = n_lora * (ADAPTER_BYTES["adamw"] if setup.optimizer == "adamw" else c.adam8bit_bytes_per_param)
        base = P - head
        w.copies_block = ad16 * lora_params(spec, setup) / L
        w.copies_head = ad16 * head
        if tech == "lora":
            w.frozen = base * (4 if policy.act == 4 else 2)
        else:
            quantised = min(block_linear_params(spec), base)
            rest = base - quantised
            w.frozen = quantised * c.nf4_bytes_per_param + rest * 4  # k-bit prep: rest upcast to fp32
            w.copies_head += ad16 * lm  # the fp32 LM head, cast for its product with the 16-bit input
            notes.append(f"qlora: {quantised / 1e9:.2f}B block parameters in NF4 (double quant), "
                         f"{rest / 1e6:.0f}M embedding/head/norm parameters upcast to fp32 by k-bit preparation")
        w.copies = L * w.copies_block + w.copies_head
        notes.append(f"{tech}: {n_lora / 1e6:.2f}M trainable parameters (rank {setup.lora_rank}, "
                     f"{setup.lora_targets} targets), adapters in fp32")
    return w


def TEMPLATE_NORMS(spec: ModelSpec) -> int:  # noqa: N802 - norms per block (their weights: h each)
    return template(spec).norms


# ---------------------------------------------------------------------------------------------
# Activations, the loss, and the moment of the peak
# ---------------------------------------------------------------------------------------------
@dataclass
class Activations:
    layers: float = 0.0  # what every trained block saves (no checkpointing)
    checkpoints: float = 0.0  # with checkpointing: each trained block's input
    block: float = 0.0  # one trained block's saved tensors (recomputed in backward with checkpointing)
    model: float = 0.0  # saved outside the blocks: embeddings' norm, final norm, head input, masks, rotary
    loss_forward: float = 0.0  # logits and loss while the loss is computed
    loss_backward: float = 0.0  # ... and at the start of backward (log-softmax output and two gradients)
    tied_head: bool = False  # a generation head tied to the input embeddings
    forward_transient: float = 0.0  # a block's working tensors at the forward's peak
    backward_transient: float = 0.0  # a block's gradients and working tensors during its backward


def activation_terms(spec: ModelSpec, setup: TrainSetup, precision: str, policy: DtypePolicy,
                     c: Constants, notes: list[str]) -> Activations:
    tech, L, h = setup.technique, spec.num_layers, spec.hidden_size
    b, s, V = setup.batch_size, setup.seq_len, spec.vocab_size
    T = b * s
    fl = flow(tech, precision, pure_16bit=policy.autocast_copy == 0 and policy.act == 2 and policy.weight == 2)
    t = template(spec)
    trained = L - frozen_bottom_layers(spec, setup) if tech == "freeze" else L
    a = Activations()
    first = L - trained
    a.layers = sum(block_bytes(spec, setup, fl, layer) for layer in range(first, L))
    a.block = max((block_bytes(spec, setup, fl, layer) for layer in range(first, L)), default=0.0)
    # transformers' gradient_checkpointing_enable makes the embeddings' output require grad, so
    # with freeze every layer is checkpointed and back-propagated through, frozen ones too
    a.checkpoints = L * stream_bytes(spec, fl) * h * T
    a.model = model_bytes(spec, setup, fl)
    if setup.task == "generation":
        tokens = min(T, c.chunked_loss_tokens) if setup.chunked_loss else T
        # forward: the logits (compute dtype), their fp32 upcast and log-softmax (one fp32 tensor
        # when the logits are fp32); backward: log-softmax's output and two fp32 gradients
        a.loss_forward = (fl.compute + 4 + (4 if fl.compute < 4 else 0)) * tokens * V
        a.loss_backward = 12 * tokens * V
        if t.softcap:  # logit soft-capping: scaled logits, their tanh (saved), the capped logits
            a.loss_forward += 3 * fl.compute * tokens * V
            a.loss_backward += fl.compute * tokens * V
        if not setup.chunked_loss and a.loss_backward > 0.25 * GIB:
            notes.append(f"logits: {a.loss_backward / GIB:.2f} GiB for a {V:,}-token vocabulary at the start of "
                         "backward; a chunked/fused cross-entropy would remove most of it")
    a.forward_transient = transient_bytes(spec, setup, fl) * T
    a.backward_transient = transient_bytes(spec, setup, fl, backward=True) * T
    a.tied_head = setup.task == "generation" and spec.tied_embeddings
    return a


def peak_phases(w: Weights, a: Activations, setup: TrainSetup) -> dict[str, dict[str, float]]:
    """The candidate moments of the peak, each as (gradients, weight copies, activations, logits):
    the end of the forward (the loss being computed), the start of backward (the loss's gradient),
    a block's backward (recomputed first with checkpointing) and, without accumulation, the end of
    backward (every gradient made). The peak is the largest."""
    accumulating = setup.grad_accum != 1  # earlier micro-batches' gradients live throughout
    g = w.grads if accumulating else 0.0
    ckpt = setup.gradient_checkpointing
    saved = a.model + (a.checkpoints if ckpt else a.layers)
    copies_bw = w.copies_head if ckpt else w.copies
    phases = {
        # the autocast cache keeps every weight copy until the forward ends, checkpointing or not
        "forward": {"gradients": g, "copies": w.copies, "activations": saved + a.forward_transient,
                    "logits": a.loss_forward},
        "loss_backward": {"gradients": g, "copies": copies_bw, "activations": saved, "logits": a.loss_backward},
        "block_backward": {"gradients": g, "copies": copies_bw + (w.copies_block if ckpt else 0.0),
                           "activations": saved + (a.block if ckpt else 0.0) + a.backward_transient, "logits": 0.0},
    }
    if not accumulating:
        phases["backward_end"] = {"gradients": w.grads, "copies": 0.0, "activations": a.model, "logits": 0.0}
    # the embeddings' backward makes a whole V x h gradient before adding it to the one that exists
    # (earlier micro-batches', or the tied LM head's)
    if w.embedding_grad and (accumulating or a.tied_head):
        phases["embedding_backward"] = {"gradients": w.grads, "copies": 0.0, "activations": w.embedding_grad,
                                        "logits": 0.0}
    return phases


def estimate(spec: ModelSpec, setup: TrainSetup, constants: Constants | None = None,
             dtype_policy: str | None = None) -> Estimate:
    """Predicted peak memory of training `spec` with `setup`, by term (bytes).

    The tensor terms are those alive at the peak moment (`peak_phases`); cuda_context and
    allocator_margin are what a GPU adds (calibrated on published runs). dtype_policy: a key of
    TRAINING_DTYPES overriding the one setup.precision chooses (to compare with runs of other
    stacks, e.g. "bf16-pure")."""
    c = constants or CONSTANTS
    notes = _setup_notes(spec, setup)
    on_cpu = setup.device == "cpu"
    precision = "fp32" if on_cpu else setup.precision
    policy = TRAINING_DTYPES[dtype_policy or precision]
    w = weight_terms(spec, setup, policy, c, notes)
    a = activation_terms(spec, setup, precision, policy, c, notes)
    phases = peak_phases(w, a, setup)
    static = w.frozen + w.masters + w.opt
    name, at = max(phases.items(), key=lambda kv: sum(kv[1].values()))
    context = 0.0 if on_cpu else c.cuda_context_bytes
    margin = c.allocator_dynamic_frac * (at["activations"] + at["logits"]) + c.allocator_static_frac * static
    breakdown = {
        "frozen_weights": w.frozen, "trainable_weights": w.masters + at["copies"], "gradients": at["gradients"],
        "optimizer_states": w.opt, "activations": at["activations"], "logits_and_loss": at["logits"],
        "cuda_context": context, "allocator_margin": margin,
    }
    breakdown_int = {k: int(round(v)) for k, v in breakdown.items()}
    notes.append(f"peak at the {name.replace('_', ' ')}")
    return Estimate(peak_bytes=sum(breakdown_int.values()), breakdown_bytes=breakdown_int, notes=notes)


def _setup_notes(spec: ModelSpec, setup: TrainSetup) -> list[str]:
    notes = []
    if setup.device == "cpu" and setup.precision != "fp32":
        notes.append("CPU: training runs in fp32; the figure is RAM, not GPU memory")
    if setup.device == "cpu" and setup.technique == "qlora":
        notes.append("CPU: QLoRA runs (bitsandbytes CPU kernels) but is slower than LoRA")
    if setup.technique == "qlora" and not setup.gradient_checkpointing:
        notes.append("qlora: peft's prepare_model_for_kbit_training turns gradient checkpointing on "
                     "unless told not to; this estimate assumes it is off as requested")
    if setup.optimizer == "paged-adamw-8bit":
        notes.append("paged-adamw-8bit: optimizer states are counted on the GPU, but under memory "
                     "pressure they are paged to CPU RAM, so the real peak can be lower")
    if not spec.params_verified:
        notes.append(f"{spec.id}: {spec.params / 1e9:.2f}B parameters counted from config.json by generic rules "
                     f"(model type {spec.model_type!r}) and not checked against the weights: the estimate may be "
                     "far off; give the folder with its safetensors (or their index) to check it")
    t = template(spec, setup)
    if not known_template(spec):
        notes.append(f"{spec.model_type}: activations counted as for a {'llama' if spec.family == 'decoder' else 'bert'}"
                     "-shaped block (autoft estimate --trace measures this architecture itself)")
    if t.eager and setup.seq_len >= 1024:
        notes.append(f"{spec.model_type}: attention is computed explicitly (a x s x s scores per layer): "
                     "transformers has no SDPA path for it")
    return notes


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
