"""Where a fake-tensor trace on the CPU differs from the same step on a CUDA GPU, and how the
tracer (`autotrain/trace.py`) makes up for it. ONE place: every known difference is listed here,
with what is done about it.

Fake tensors run each operator's meta kernel: shapes, dtypes and every output allocation of the
real code, but not kernel-internal workspaces. CUDA fake tensors do not work with the CPU build
of torch (autograd asks for a CUDA device guard), so the trace runs on fake *CPU* tensors. What
that changes, measured on the catalog's architectures (benchmarks/bench_trace_matrix.py,
`cuda_emulation` rows: the same cell traced with and without this module):

0. Fake tensors read as "tracing" to transformers (`full_batch_masks`): its mask code then keeps
   the mask (the fake query offset or an all-ones padding mask could be anything; RoBERTa makes
   one from its input ids), while a real full batch (no
   padding, queries = keys, positions 0..s-1 in every row, so no packed sequences) drops it and
   SDPA runs with is_causal=True (flash on CUDA). The tracer answers as the real batch would. Measured effect: a b x 1 x s x s mask, and SDPA leaving flash
   for the memory-efficient kernel, which saves the mask and a padded logsumexp. Classification
   models are told problem_type single_label_classification, which transformers infers from
   integer labels anyway (DeBERTa's own inference reads the labels' values: a few bytes).
1. Autocast op lists (`CudaAutocast`). CPU autocast and CUDA autocast cast different operators.
   CUDA runs layer_norm, group_norm, pow, exp, log, rsqrt, softplus, logsumexp, the losses, ... in
   fp32 and softmax / log_softmax / sum / cumsum / prod with an fp32 output; CPU autocast does
   none of that (its fp32 list is mostly linear algebra and losses). CUDA also lowers einsum,
   mv, addmv, addr. A torch-function mode applies CUDA's policy to those calls while autocast is
   on. Measured effect: encoders' LayerNorm outputs (and everything after them) become fp32 in a
   16-bit LoRA run; eager attention's softmax output becomes fp32 (4 instead of 2 bytes per score).
   `torch.is_autocast_enabled()` without a device (peft's 4-bit LoRA layers ask it) reports the
   CPU autocast state, as it would report CUDA's on a GPU.
2. The attention kernel (`CudaAutocast` -> `cuda_sdpa`). On the CPU, SDPA picks its CPU flash
   kernel, or the math kernel (a x s x s scores) whenever there is dropout or GQA; on CUDA it
   picks, in torch's order (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp): flash
   (fp16/bf16, no mask, head dim <= 256, GQA allowed), memory-efficient (any float dtype, masks,
   but no GQA), else math. The tracer takes CUDA's choice and calls that kernel's own meta
   function (the outputs and saved tensors of the real kernel), plus the backward workspaces the
   CUDA kernels allocate through the caching allocator, which meta functions do not show:
   flash-attention 2's fp32 dq accumulator (b x roundup(s,128) x a x roundup(d,32)) and
   softmax-d (b x a x roundup(s,128)) and, with GQA, dk/dv expanded to all heads;
   memory-efficient attention's delta (b x a x s, fp32). fp32 training of a GQA model falls to
   the math kernel on CUDA (flash needs 16-bit, memory-efficient refuses GQA): quadratic memory.
2b. Dropout (`cuda_dropout`). On CUDA, F.dropout in training runs the fused native_dropout kernel,
   which saves a bool mask (1 byte per element); on the CPU it multiplies by a noise tensor of the
   input's dtype, which is saved (4 bytes per element for fp32 input). The tracer calls
   native_dropout, as CUDA does. Measured effect: peft's LoRA dropout on fp32 inputs saves 1 byte
   per element instead of 4.
3. Allocation granularity (`CUDA_MIN_ALLOC`): the CUDA caching allocator rounds every request
   up to 512 bytes, and `max_memory_allocated` counts the rounded sizes; the tracker does too.
4. Fused AdamW: the Trial uses torch's fused AdamW on CUDA (no temporaries); the tracer does too
   (CPU has a fused kernel with a meta function).
5. GradScaler (fp16): its step reads `found_inf` with `.item()`, which fake tensors cannot answer;
   the tracer's scaler (`TraceGradScaler`) always steps. Its memory (a scalar scale, an in-place
   unscale) is unchanged.
6. bitsandbytes 4-bit (QLoRA): `Params4bit` cannot wrap a fake tensor, so the tracer stands in
   for each quantised linear with `FakeLinear4bit` (trace.py): a uint8 weight of the NF4 bytes,
   the double-quantised absmax buffers, and bitsandbytes' CUDA behaviour for training-sized
   inputs: the weight dequantised to the compute dtype for the forward GEMM, and dequantised again
   (to its stored dtype, then cast) for the input gradient; nothing else saved.

Not traced at all (CUDA-only, outside tensors; `advisor.memory.Constants` models them and
calibrates them on published runs): the CUDA context and kernels (outside the allocator),
cuBLAS/cuBLASLt workspaces (inside it, a few to a few tens of MiB per stream), and the caching
allocator's fragmentation (reserved minus allocated).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten
CUDA_MIN_ALLOC = 512  # c10/cuda/CUDACachingAllocator.cpp kMinBlockSize
HALF = (torch.float16, torch.bfloat16)


def _round(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


# -- 2. the attention kernel ----------------------------------------------------------------------
def cuda_sdpa_kernel(q, k, v, attn_mask, enable_gqa: bool) -> str:
    """The backend torch's CUDA dispatcher picks for training (sm80-sm90): flash, efficient or math."""
    d_q, d_k, d_v = q.size(-1), k.size(-1), v.size(-1)
    gqa = q.size(-3) != k.size(-3)
    if q.dtype in HALF and attn_mask is None and d_q == d_k == d_v and d_q <= 256:
        return "flash"
    align = 8 if q.dtype in HALF else 4
    if not gqa and d_q == d_k and d_q % align == 0 and d_v % align == 0:
        return "efficient"
    return "math"


class _FlashAttention(torch.autograd.Function):
    """aten's flash-attention kernel (its meta function) with FA2's backward workspaces."""

    @staticmethod
    def forward(ctx, q, k, v, dropout_p, is_causal, scale):
        out, lse, cq, ck, mq, mk, seed, offset, _ = aten._scaled_dot_product_flash_attention(
            q, k, v, dropout_p, is_causal, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, seed, offset)
        ctx.args = (cq, ck, mq, mk, dropout_p, is_causal, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, seed, offset = ctx.saved_tensors
        cq, ck, mq, mk, dropout_p, is_causal, scale = ctx.args
        b, a, s, d = q.shape
        # flash_attn mha_bwd: dq_accum (fp32), softmax_d (fp32), and dk/dv for every query head
        # when the keys are grouped; all through the caching allocator, alive during the kernel.
        work = [q.new_empty((b, _round(s, 128), a, _round(d, 32) if d <= 192 else 256), dtype=torch.float32),
                q.new_empty((b, a, _round(s, 128)), dtype=torch.float32)]
        if k.size(1) != a:
            work += [k.new_empty((b, k.size(2), a, d)), v.new_empty((b, v.size(2), a, v.size(-1)))]
        grads = aten._scaled_dot_product_flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, cq, ck, mq, mk, dropout_p, is_causal, seed, offset,
            scale=scale)
        del work
        return grads[0], grads[1], grads[2], None, None, None


class _EfficientAttention(torch.autograd.Function):
    """aten's memory-efficient kernel (its meta function) with its backward's delta buffer."""

    @staticmethod
    def forward(ctx, q, k, v, bias, dropout_p, is_causal, scale):
        out, lse, seed, offset = aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, dropout_p, is_causal, scale=scale)
        ctx.save_for_backward(q, k, v, bias, out, lse, seed, offset)
        ctx.args = (dropout_p, is_causal, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse, seed, offset = ctx.saved_tensors
        dropout_p, is_causal, scale = ctx.args
        delta = q.new_empty(q.shape[:3], dtype=torch.float32)
        grads = aten._scaled_dot_product_efficient_attention_backward(
            grad_out.contiguous(), q, k, v, bias, out, lse, seed, offset, dropout_p, [True, True, True, False],
            is_causal, scale=scale)
        del delta
        return grads[0], grads[1], grads[2], None, None, None, None


def cuda_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention as CUDA would run it (see the module docstring, item 2)."""
    if torch.is_autocast_enabled("cpu"):  # SDPA is on both autocast lists: 16-bit q, k, v
        dt = torch.get_autocast_dtype("cpu")
        q, k, v = (t.to(dt) if t.is_floating_point() else t for t in (q, k, v))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(dt)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # what SDPA itself does with a bool mask
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
            attn_mask.logical_not(), float("-inf"))
    kernel = cuda_sdpa_kernel(q, k, v, attn_mask, enable_gqa)
    if kernel == "flash":
        return _FlashAttention.apply(q, k, v, dropout_p, is_causal, scale)
    if kernel == "efficient":
        bias = None if attn_mask is None else attn_mask.expand(q.size(0), q.size(1), q.size(2), k.size(2))
        return _EfficientAttention.apply(q, k, v, bias, dropout_p, is_causal, scale)
    return aten._scaled_dot_product_attention_math(q, k, v, attn_mask, dropout_p, is_causal, None,
                                                    scale=scale, enable_gqa=enable_gqa)[0]


# -- 0. fake vs real ------------------------------------------------------------------------------
@contextmanager
def full_batch_masks():
    """transformers' causal-mask skip, answered as for a real full batch (item 0)."""
    from transformers import masking_utils

    from torch._subclasses.fake_tensor import FakeTensor

    causal, bidirectional = masking_utils._ignore_causal_mask_sdpa, masking_utils._ignore_bidirectional_mask_sdpa
    packed = masking_utils.find_packed_sequence_indices

    def ignore_causal_mask(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size=None):
        full = padding_mask is None or isinstance(padding_mask, FakeTensor)  # (the trace never pads)
        if full and (q_length == 1 or kv_length == q_length) and (
                local_attention_size is None or kv_length < local_attention_size):
            return True
        return causal(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size)

    def ignore_bidirectional_mask(padding_mask, kv_length, local_attention_size=None):
        if isinstance(padding_mask, FakeTensor):
            padding_mask = None
        return bidirectional(padding_mask, kv_length, local_attention_size)

    masking_utils._ignore_causal_mask_sdpa = ignore_causal_mask
    masking_utils._ignore_bidirectional_mask_sdpa = ignore_bidirectional_mask
    masking_utils.find_packed_sequence_indices = lambda position_ids: None  # one sequence per row
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa = causal
        masking_utils._ignore_bidirectional_mask_sdpa = bidirectional
        masking_utils.find_packed_sequence_indices = packed


# -- 2b. dropout ---------------------------------------------------------------------------------
def cuda_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it in training: the fused kernel, a bool mask saved (item 2b)."""
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input.mul_(0) if inplace else input * 0
    out = torch.native_dropout(input, p, True)[0]
    return input.copy_(out) if inplace else out


# -- 1. autocast op lists -----------------------------------------------------------------------
def _fp32(x):
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in HALF else x


def _lower(x, dtype):
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x


# aten/src/ATen/autocast_mode.cpp, CUDA: ops run in fp32 (inputs cast), that CPU autocast leaves alone
_FP32_CAST = {
    F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm,
    torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.Tensor.__rpow__,
    torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log, torch.log1p, torch.Tensor.log1p,
    torch.log2, torch.log10, torch.expm1, torch.rsqrt, torch.Tensor.rsqrt, torch.reciprocal,
    torch.Tensor.reciprocal, torch.acos, torch.asin, torch.cosh, torch.sinh, torch.tan, torch.erfinv,
    F.softplus, torch.logsumexp, torch.Tensor.logsumexp, F.cosine_similarity, torch.dist, torch.cdist,
    torch.renorm, F.binary_cross_entropy_with_logits,
}
# CUDA: fp32 output (dtype=float32 passed), no input copy unless the kernel needs one
# (value: the position of their dtype argument, to tell whether the caller gave one)
_FP32_OUTPUT = {
    F.softmax: 3, F.log_softmax: 3, torch.softmax: 2, torch.Tensor.softmax: 2, torch.log_softmax: 2,
    torch.Tensor.log_softmax: 2, torch.sum: 3, torch.Tensor.sum: 3, torch.cumsum: 2, torch.Tensor.cumsum: 2,
    torch.prod: 3, torch.Tensor.prod: 3, torch.cumprod: 2, torch.Tensor.cumprod: 2,
}
# CUDA: lower precision; CPU autocast does not list them
_LOWER = {torch.einsum, torch.mv, torch.Tensor.mv, torch.addmv, torch.addr, torch.chain_matmul}


class CudaAutocast(TorchFunctionMode):
    """CUDA's autocast policy for the calls CPU autocast treats differently, and CUDA's attention
    and dropout kernels (always, autocast or not)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            return cuda_sdpa(*args, **kwargs)
        if func is F.dropout or func is torch.dropout:
            return cuda_dropout(*args, **kwargs)
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        if func in _FP32_CAST:
            return func(*[_fp32(a) for a in args], **{k: _fp32(v) for k, v in kwargs.items()})
        if func in _FP32_OUTPUT and args and isinstance(args[0], torch.Tensor) and args[0].dtype in HALF:
            if kwargs.get("dtype") is None and len(args) <= _FP32_OUTPUT[func]:
                kwargs["dtype"] = torch.float32
            return func(*args, **kwargs)
        if func in _LOWER:
            dt = torch.get_autocast_dtype("cpu")
            return func(*[_lower(a, dt) if not isinstance(a, (list, tuple)) else [_lower(x, dt) for x in a]
                          for a in args], **kwargs)
        return func(*args, **kwargs)


@contextmanager
def cuda_like():
    """Run the enclosed step as CUDA would (items 1 and 2 of the module docstring)."""
    original = torch.is_autocast_enabled

    def is_autocast_enabled(device_type=None):
        return original("cpu") if device_type in (None, "cuda") else original(device_type)

    torch.is_autocast_enabled = is_autocast_enabled
    try:
        with CudaAutocast():
            yield
    finally:
        torch.is_autocast_enabled = original


# -- 5. GradScaler --------------------------------------------------------------------------------
class TraceGradScaler(torch.amp.GradScaler):
    """GradScaler whose step does not read found_inf back (fake tensors have no values)."""

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)
