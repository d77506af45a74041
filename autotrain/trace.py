"""Peak memory of autoft's own training step, counted on fake tensors: no GPU, no weights.

    from autoft.autotrain.trace import trace_memory
    r = trace_memory("Qwen/Qwen2.5-0.5B-Instruct", TrainSetup(technique="lora", batch_size=4, seq_len=512))
    r.peak_bytes     # what torch.cuda.max_memory_allocated() would report for that step on a GPU
    r.by_kind        # at the peak: weights, weight_copies, gradients, optimizer_states, activations, temporaries, inputs

The model is built from its config (a catalog id, a config.json, a model folder, a .gguf file, a
`ModelSpec` or a transformers config) under `FakeTensorMode`: every tensor has a shape and a dtype
but no storage, so a 70B model costs nothing to "load". Weight initialisation is skipped
(transformers' `no_init_weights`). Then the Trial's own code runs: `step.prepare_model` (the
technique module, checkpointing, fp32 masters), the technique's parameter groups,
`step.make_optimizer` (fused AdamW, as on CUDA), and `step.optimizer_step` (autocast, loss /
grad_accum, backward, clip, step, zero_grad) for `steps` optimizer steps, while
`trace_counter.StepCounter` (MemTracker's accounting, lean) counts every allocation by kind.

The batch is full: batch_size x seq_len real tokens, no padding (transformers then drops the
all-ones attention mask), every token labelled. That is the largest step the setup can take.

What a CPU trace cannot see of a CUDA run, and what is done about it, is in `trace_cuda.py`.
QLoRA: bitsandbytes' `Params4bit` cannot wrap a fake tensor, so `FakeLinear4bit` stands in with
the same bytes and bitsandbytes' CUDA behaviour (see trace_cuda.py, item 6).
"""
from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoft.advisor.spec import ModelSpec, TrainSetup
from autoft.errors import AutoftError


@dataclass
class TraceResult:
    """The traced peak of one setup (bytes), by kind, and where it happened."""

    model: str
    setup: dict
    peak_bytes: int
    by_kind: dict[str, int]  # at the peak (trace_counter.KINDS); sums to peak_bytes
    peak_phase: str  # forward | backward | optimizer
    peak_step: int  # 0-based optimizer step
    step_peaks: list[int]  # peak of each optimizer step
    phase_peaks: dict[str, dict[str, int]]  # forward / backward / optimizer: each one's peak, by kind and total
    params: int  # parameters of the model as trained (4-bit weights count 2 per byte)
    trainable_params: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 1024**3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_gib"] = round(self.peak_gib, 3)
        d["by_kind_gib"] = {k: round(v / 1024**3, 3) for k, v in self.by_kind.items()}
        return d


# ---------------------------------------------------------------------------------------------
# The model's config
# ---------------------------------------------------------------------------------------------
# Config keys that catalog rows (ModelSpec) do not hold but that move memory, from the published
# config.json of the catalog's checkpoints of each model type (transformers' defaults differ).
CATALOG_CONFIG_EXTRAS: dict[str, dict] = {
    # microsoft/deberta-v3-base: relative attention with c2p and p2c, no absolute positions
    "deberta-v2": {"relative_attention": True, "position_buckets": 256, "pos_att_type": ["p2c", "c2p"],
                   "max_relative_positions": -1, "position_biased_input": False, "norm_rel_ebd": "layer_norm",
                   "share_att_key": True, "type_vocab_size": 0, "layer_norm_eps": 1e-7},
    # google/electra-base-discriminator: embeddings as wide as the hidden state
    "electra": {"embedding_size": None},
    "roberta": {"type_vocab_size": 1, "pad_token_id": 1},
    "xlm-roberta": {"type_vocab_size": 1, "pad_token_id": 1},
    "camembert": {"type_vocab_size": 1, "pad_token_id": 1},
    # google/gemma-2-*: local/global layers, logit soft-capping
    "gemma2": {"query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
               "attn_logit_softcapping": 50.0, "hidden_activation": "gelu_pytorch_tanh"},
    # answerdotai/ModernBERT-*: global attention every third layer, 128-token local window
    "modernbert": {"global_attn_every_n_layers": 3, "local_attention": 128},
    "qwen2": {"use_sliding_window": False},
}
# ModelSpec field -> the config key that holds it, where transformers does not map the standard name
_RENAMED = {"distilbert": {"intermediate_size": "hidden_dim"}}


def config_from_spec(spec: ModelSpec):
    """A transformers config with the spec's architecture numbers (and CATALOG_CONFIG_EXTRAS), built
    with them as constructor arguments so that values derived from them (head_dim, DeBERTa's pooler
    width, ...) follow."""
    import inspect

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if spec.model_type not in CONFIG_MAPPING:
        raise AutoftError(f"transformers cannot build model type {spec.model_type!r} ({spec.id})",
                          "pass the model's folder or config.json (with --trust-remote-code for custom code)")
    cls = CONFIG_MAPPING[spec.model_type]
    accepted = set(inspect.signature(cls.__init__).parameters)
    names = {**getattr(cls, "attribute_map", {}), **_RENAMED.get(spec.model_type, {})}
    values = {"hidden_size": spec.hidden_size, "num_hidden_layers": spec.num_layers,
              "num_attention_heads": spec.num_attention_heads, "num_key_value_heads": spec.num_kv_heads,
              "intermediate_size": spec.intermediate_size, "vocab_size": spec.vocab_size,
              "max_position_embeddings": spec.max_positions, "tie_word_embeddings": spec.tied_embeddings,
              "head_dim": spec.head_size}
    extras = {k: (spec.hidden_size if v is None else v) for k, v in CATALOG_CONFIG_EXTRAS.get(spec.model_type, {}).items()}
    kwargs = {names.get(k, k): v for k, v in values.items() if names.get(k, k) in accepted}
    cfg = cls(**kwargs, **{k: v for k, v in extras.items() if k in accepted})
    for key, value in extras.items():  # keys the constructor takes through **kwargs
        if key not in accepted:
            setattr(cfg, key, value)
    return cfg


def model_config(model: Any, trust_remote_code: bool = False) -> tuple[Any, str]:
    """(transformers config, label) for a catalog id, a folder, a config.json, a .gguf file, a
    ModelSpec or a transformers config. Reads files only (offline); builds nothing."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model, getattr(model, "name_or_path", "") or model.model_type
    if isinstance(model, ModelSpec):
        return config_from_spec(model), model.id
    name = str(model)
    path = Path(name).expanduser()
    try:
        if path.is_dir() and (path / "config.json").is_file():
            return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), name
        if path.is_file() and path.suffix == ".json":
            return _config_from_json(path, trust_remote_code), name
        if path.is_file() and path.suffix == ".gguf":
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name), name
        if path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return AutoConfig.from_pretrained(str(path), gguf_file=ggufs[0].name), name
    except (OSError, ValueError, KeyError) as err:
        raise AutoftError(f"transformers cannot read the config of {name}: {str(err).splitlines()[0][:160]}",
                          "pass a folder or config.json of a model type transformers knows "
                          "(--trust-remote-code for models with their own code)") from None
    from autoft.advisor.catalog import resolve_model

    return config_from_spec(resolve_model(name)), name


def _config_from_json(path: Path, trust_remote_code: bool):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if path.name == "config.json":
        return AutoConfig.from_pretrained(str(path.parent), trust_remote_code=trust_remote_code)
    cfg = json.loads(path.read_text(encoding="utf-8"))
    model_type = cfg.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type].from_dict(cfg)


# ---------------------------------------------------------------------------------------------
# QLoRA stand-in
# ---------------------------------------------------------------------------------------------
def _fake_linear4bit_class():
    import bitsandbytes as bnb

    class FakeLinear4bit(bnb.nn.Linear4bit):
        """A bitsandbytes Linear4bit (peft wraps it as one) holding fake tensors of NF4's bytes:
        packed weight (uint8, 2 values per byte), absmax (uint8 per 64-block, double quantised),
        its fp32 absmax per 256 absmax and the 256-entry code. CUDA behaviour for training inputs
        (bitsandbytes backends/cuda/ops.py, autograd/_functions.py MatMul4Bit): the weight is
        dequantised to the compute dtype for the GEMM and freed; backward dequantises it again (to
        its stored dtype, then the gradient's) for the input gradient; only the packed weight is saved."""

        def __init__(self, linear: nn.Linear, compute_dtype, stored_dtype):
            nn.Module.__init__(self)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            n = linear.in_features * linear.out_features
            blocks = -(-n // 64)
            dev = linear.weight.device
            self.weight = nn.Parameter(torch.empty(((n + 1) // 2, 1), dtype=torch.uint8, device=dev),
                                       requires_grad=False)
            self.weight.compress_statistics, self.weight.quant_type = True, "nf4"
            self.register_buffer("absmax", torch.empty(blocks, dtype=torch.uint8, device=dev))
            self.register_buffer("absmax2", torch.empty(-(-blocks // 256), dtype=torch.float32, device=dev))
            self.register_buffer("code", torch.empty(256, dtype=torch.float32, device=dev))
            self.bias = linear.bias
            self.compute_dtype, self.stored_dtype = compute_dtype, stored_dtype
            self.compute_type_is_set, self.quant_state = True, None

        def forward(self, x):
            inp_dtype = x.dtype
            x = x.to(self.compute_dtype)
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            return _NF4MatMul.apply(x, self.weight, bias, self).to(inp_dtype)

    return FakeLinear4bit


class _NF4MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, packed, bias, layer):
        w = x.new_empty((layer.out_features, layer.in_features))  # dequantised, compute dtype
        out = torch.nn.functional.linear(x, w, bias)
        del w
        ctx.layer = layer
        ctx.save_for_backward(packed)
        return out

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        w = grad.new_empty((layer.out_features, layer.in_features), dtype=layer.stored_dtype)
        grad_x = grad @ w.to(grad.dtype)
        del w
        grad_bias = grad.sum(tuple(range(grad.dim() - 1))) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None


def quantize_like_bnb(model, compute_dtype, skip: list[str]) -> int:
    """Replace the linear layers bitsandbytes would quantise (type nn.Linear, not matching `skip`,
    transformers' should_convert_module rules) with FakeLinear4bit. Returns how many."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    cls = _fake_linear4bit_class()
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and should_convert_module(n, skip)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        setattr(parent, child, cls(old, compute_dtype, old.weight.dtype))
    model.is_loaded_in_4bit = True
    return len(names)


@contextmanager
def _fake_parameter_moves():
    """Module.to() swaps fake parameters (torch.utils.swap_tensors), which refuses tensors that
    FakeTensorMode's converter holds weak references to (peft moves new adapters to the base
    layer's dtype that way); assign .data instead, which is what .to() did before swapping."""
    from torch._subclasses.fake_tensor import FakeTensor

    original = torch.utils.swap_tensors

    def swap(t1, t2):
        try:
            return original(t1, t2)
        except RuntimeError:
            if not isinstance(t1, FakeTensor):
                raise
            t1.data = t2.data

    torch.utils.swap_tensors = swap
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


@contextmanager
def _quiet():
    import warnings

    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(level)


# ---------------------------------------------------------------------------------------------
# Building the run
# ---------------------------------------------------------------------------------------------
def _build_model(config, setup: TrainSetup, dtype):
    """The model class and dtype `models.load_model_and_tokenizer` would load, with SDPA where the
    architecture has it (eager if setup.attention says so), on fake tensors, weights not initialised."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.initialization import no_init_weights

    if setup.task == "classification":
        config.num_labels = setup.num_labels
        config.id2label = {i: f"LABEL_{i}" for i in range(setup.num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
        # what transformers infers from integer labels; said up front, because DeBERTa's own
        # inference reads the labels' values (nonzero), which fake tensors do not have
        config.problem_type = "single_label_classification"
        cls = AutoModelForSequenceClassification
    else:
        cls = AutoModelForCausalLM
    attn = "eager" if setup.attention == "eager" else "sdpa"
    with no_init_weights():
        try:
            net = cls.from_config(copy.deepcopy(config), dtype=dtype, attn_implementation=attn)
        except ValueError as err:
            if "attention" not in str(err).lower() and "sdpa" not in str(err).lower():
                raise AutoftError(f"cannot build {config.model_type} for {setup.task}: {str(err).splitlines()[0][:160]}",
                                  "pick a model whose architecture supports this task") from None
            net = cls.from_config(config, dtype=dtype)  # no SDPA for this architecture (as the Trial)
    net.tie_weights()  # no_init_weights skips init_weights, which ties the output embeddings
    return net


def _recompute_under(net, counter, cuda: bool) -> None:
    """Non-reentrant checkpointing recomputes a layer inside backward, where the trace's
    torch-function mode (trace_cuda.CudaAutocast) is not active; have torch.utils.checkpoint
    recompute under a fresh one (its context_fn), so the recomputation matches the forward, and
    tell the counter that what it makes then are activations."""
    import functools

    from autoft.autotrain.trace_cuda import CudaAutocast

    @contextmanager
    def recompute():
        counter.recomputing = True
        try:
            with CudaAutocast() if cuda else nullcontext():
                yield
        finally:
            counter.recomputing = False

    def contexts():
        return nullcontext(), recompute()

    for m in net.modules():
        f = getattr(m, "_gradient_checkpointing_func", None)
        if isinstance(f, functools.partial):
            m._gradient_checkpointing_func = functools.partial(f.func, *f.args, **{**f.keywords, "context_fn": contexts})


def _adopt_fakes(net, mode) -> None:
    """peft deep-copies the classification head (modules_to_save); a deep copy of a fake tensor
    belongs to a new FakeTensorMode, which ours refuses to mix with. Re-create such tensors (same
    shape, dtype, requires_grad) in ours."""
    for module in net.modules():
        for store in (module._parameters, module._buffers):
            for name, t in list(store.items()):
                if t is not None and getattr(t, "fake_mode", mode) is not mode:
                    new = torch.empty(t.shape, dtype=t.dtype)
                    store[name] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new


def _hparams(setup: TrainSetup) -> dict:
    h = {"lora_r": setup.lora_rank, "lora_targets": setup.lora_targets}
    if setup.freeze_layers is not None:
        h["freeze_layers"] = setup.freeze_layers
    return h


def _batch(setup: TrainSetup, vocab: int) -> dict:
    b, s = setup.batch_size, setup.seq_len
    ids = torch.randint(0, max(vocab, 2), (b, s))
    labels = torch.randint(0, setup.num_labels, (b,)) if setup.task == "classification" else ids.clone()
    return {"input_ids": ids, "labels": labels}


def trace_memory(model: Any, setup: TrainSetup, *, steps: int = 1, warm: bool = True,
                 emulate_cuda: bool | None = None, trust_remote_code: bool = False) -> TraceResult:
    """Run `steps` optimizer steps of the Trial's training code for `setup` on fake tensors and
    return the peak allocated memory by kind.

    warm: create the optimizer states first (an untraced optimizer step on zero gradients), so
    that the first traced step is a steady-state step, as every step after the first is (the
    first has no optimizer states until its own optimizer step; later steps have them throughout).
    Accumulation (setup.grad_accum None or > 1): the traced micro-batch is a later one of its
    step, whose gradients of the earlier micro-batches already exist (zeros, untraced); the first
    micro-batch of a step has none, so it never peaks higher.
    `emulate_cuda` (default: setup.device == "cuda") applies trace_cuda.py's CUDA behaviour; off,
    the trace is the CPU code path as it is."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from autoft.autotrain.step import optimizer_step
    from autoft.autotrain.trace_counter import StepCounter
    from autoft.autotrain.trace_cuda import cuda_like, full_batch_masks

    t0 = time.perf_counter()
    cuda = setup.device == "cuda" if emulate_cuda is None else emulate_cuda
    config, label = model_config(model, trust_remote_code)
    if getattr(config, "is_encoder_decoder", False):
        raise AutoftError(f"the tracer does not build encoder-decoders yet ({config.model_type}: {label})",
                          "use the analytic estimate (autoft estimate without --trace) for this model")
    counter = StepCounter(round_to=512 if cuda else 1)  # (CUDA's allocator rounds to 512 B)
    with FakeTensorMode() as fake, _quiet(), _fake_parameter_moves():
        run = _build_run(config, setup, fake, counter, cuda)
        if warm:
            _zero_grads(run.params)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        accumulating = setup.grad_accum != 1
        grad_accum = max(2, setup.grad_accum or 2) if accumulating else 1
        batch = _batch(setup, config.get_text_config().vocab_size)
        counter.track(run.model, run.optimizer, list(batch.values()))
        with full_batch_masks(), cuda_like() if cuda else nullcontext(), counter:
            for step in range(steps):
                counter.step = step
                if accumulating:  # the earlier micro-batches' gradients
                    _zero_grads(run.params)
                    counter.grads_present(run.params)
                optimizer_step(run.model, iter([batch]), optimizer=run.optimizer, scheduler=run.scheduler,
                               scaler=run.scaler, params=run.params, clip_norm=run.clip_norm,
                               grad_accum=grad_accum, autocast=run.autocast)
        total, trainable = _count(run.model)
    notes = list(run.notes)
    if setup.chunked_loss:
        notes.append("chunked loss: the Trial computes the loss in one piece; traced as it runs")
    return TraceResult(model=label, setup=setup.to_dict(), peak_bytes=counter.peak, by_kind=dict(counter.peak_by_kind),
                       peak_phase=counter.peak_phase, peak_step=counter.peak_step, step_peaks=list(counter.step_peaks),
                       phase_peaks=dict(counter.phase_peaks), params=total, trainable_params=trainable,
                       seconds=time.perf_counter() - t0, notes=notes)


@dataclass
class _Run:
    model: Any
    params: list
    optimizer: Any
    scheduler: Any
    scaler: Any
    autocast: Any
    clip_norm: float
    notes: list[str]


def _build_run(config, setup: TrainSetup, fake, counter, cuda: bool) -> _Run:
    """The Trial's model, technique, trainable parameters, optimizer, schedule, scaler and autocast
    for `setup`, on fake tensors (inside the FakeTensorMode `fake`)."""
    from autoft.autotrain.models import weights_dtype
    from autoft.autotrain.step import make_optimizer, prepare_model
    from autoft.autotrain.techniques import get_technique, make_config
    from autoft.autotrain.trace_cuda import TraceGradScaler

    precision = "fp32" if setup.device == "cpu" else setup.precision
    info = get_technique(setup.technique)
    tech_config = make_config(setup.technique, _hparams(setup))
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    notes = []
    net = _build_model(config, setup, getattr(torch, weights_dtype(setup.technique, precision)))
    if info.quantized:
        from autoft.autotrain.techniques.qlora import SKIP_MODULES

        n = quantize_like_bnb(net, compute, list(SKIP_MODULES) + list(getattr(net, "_keep_in_fp32_modules", None) or []))
        notes.append(f"qlora: {n} linear layers stood in by NF4-sized fake tensors "
                     "(bitsandbytes' Params4bit cannot hold fake tensors)")
    net, params = prepare_model(net, info, tech_config, setup.task, setup.gradient_checkpointing,
                                after_apply=lambda m: _adopt_fakes(m, fake))
    _recompute_under(net, counter, cuda)
    groups = info.module.trainable_parameter_groups(net, tech_config, 1e-4, 0.0)
    opt = _optimizer(groups, setup.optimizer, "cuda" if cuda else "cpu", make_optimizer, notes)
    autocast = ((lambda: torch.autocast("cpu", dtype=compute)) if precision != "fp32"
                else (lambda: torch.autocast("cpu", enabled=False)))
    net.train()
    return _Run(net, params, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
                TraceGradScaler("cpu") if precision == "fp16" else None, autocast, info.clip_norm, notes)


def _zero_grads(params) -> None:
    for p in params:
        p.grad = torch.zeros_like(p)


def _optimizer(groups, name, device_type, make_optimizer, notes):
    try:
        return make_optimizer(groups, name, 1e-4, device_type)
    except ImportError:
        raise AutoftError(f"the {name} optimizer needs bitsandbytes", "pip install bitsandbytes") from None


def _count(net) -> tuple[int, int]:
    seen, total, trainable = set(), 0, 0
    for p in net.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


# ---------------------------------------------------------------------------------------------
# Beside the analytic estimate
# ---------------------------------------------------------------------------------------------
# (label, analytic terms, traced kinds): the same memory on both sides
SIDE_BY_SIDE = (
    ("weights", ("frozen_weights", "trainable_weights"), ("weights", "weight_copies")),
    ("gradients", ("gradients",), ("gradients",)),
    ("optimizer states", ("optimizer_states",), ("optimizer_states",)),
    ("activations, logits", ("activations", "logits_and_loss"), ("activations", "temporaries", "inputs")),
)


def side_by_side(estimate, traced: TraceResult) -> dict:
    """The analytic estimate's tensor terms beside the traced peak's kinds (bytes), the tensor-level
    totals, and the GPU-only terms the trace cannot see (CUDA context, allocator margin)."""
    bd = estimate.breakdown_bytes
    rows = [{"term": label, "analytic_bytes": sum(bd[t] for t in terms),
             "traced_bytes": sum(traced.by_kind.get(k, 0) for k in kinds)}
            for label, terms, kinds in SIDE_BY_SIDE]
    analytic = estimate.peak_bytes - bd["cuda_context"] - bd["allocator_margin"]
    return {"rows": rows, "analytic_tensor_bytes": analytic, "traced_tensor_bytes": traced.peak_bytes,
            "difference": (analytic - traced.peak_bytes) / traced.peak_bytes if traced.peak_bytes else 0.0,
            "gpu_only_bytes": bd["cuda_context"] + bd["allocator_margin"],
            "traced_peak_with_gpu_terms_bytes": traced.peak_bytes + bd["cuda_context"] + bd["allocator_margin"],
            "peak_phase": traced.peak_phase, "seconds": round(traced.seconds, 1), "notes": list(traced.notes)}
