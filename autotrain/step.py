"""One optimizer step of autoft's training loop, shared by `Trial.train` and the memory tracer.

    loss = optimizer_step(model, micro_batches, optimizer=opt, scheduler=sched, scaler=scaler,
                          params=trainable, clip_norm=1.0, grad_accum=4, autocast=ctx)

`Trial.train` feeds it real batches on the real device; `autotrain/trace.py` feeds it fake tensors
(shapes and dtypes, no storage) to count every allocation of the same code. Whatever changes the
step's memory (a cast, a clone, when gradients are freed) must change here, so both see it.

The Trial's model preparation (checkpointing, the technique, fp32 trainable weights) and its
optimizer are also here (`prepare_model`, `make_optimizer`), for the tracer to build the same run.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterable

import torch


def optimizer_step(model, micro_batches: Iterable[dict], *, optimizer, scheduler, scaler, params,
                   clip_norm: float, grad_accum: int,
                   autocast: Callable[[], AbstractContextManager],
                   loss_fn: Callable[[dict], torch.Tensor] | None = None,
                   micro_step: Callable[[bool], AbstractContextManager] | None = None) -> torch.Tensor:
    """Forward and backward over the micro-batches (loss / grad_accum each, gradients accumulate),
    clip, optimizer step, scheduler step, gradients freed. Returns the summed loss of the
    micro-batches (a 0-d tensor on the device, not synchronised).

    `micro_batches` yields the model's keyword arguments (input_ids, attention_mask, labels), each
    already on the device; `autocast()` returns the autocast context of the run; `scaler` is a
    GradScaler (fp16) or None; `loss_fn(batch)` the micro-batch's mean loss (default
    `model(**batch).loss`; the Trial's own adds class weights and multi-label); `micro_step(last)`
    the context of one micro-batch's forward and backward (DDP: no gradient sync but the last)."""
    loss_fn = loss_fn or (lambda b: model(**b).loss)
    step_loss = None
    for k, batch in enumerate(micro_batches):
        with micro_step(k == grad_accum - 1) if micro_step else nullcontext():
            with autocast():
                loss = loss_fn(batch)
            scaled = loss / grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
        step_loss = loss.detach().float() if step_loss is None else step_loss + loss.detach().float()
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, clip_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def prepare_model(model, info, tech_config, task: str, gradient_checkpointing: bool,
                  after_apply: Callable | None = None):
    """Turn a loaded model into the trained one, as `Trial.__init__` does (it calls this): no KV
    cache, the technique applied (it turns non-reentrant gradient checkpointing on when asked), and
    every trainable weight an fp32 master (a LoRA head copied from a bf16 base, for instance; the
    forward runs in bf16/fp16 through autocast). `after_apply(model)` runs between the technique
    and the fp32 cast (the tracer uses it). Returns (model, trainable parameters)."""
    model.config.use_cache = False  # no KV cache while training (generate() turns it on)
    model = info.module.apply(model, tech_config, task, gradient_checkpointing)
    if after_apply is not None:
        after_apply(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return model, params


def make_optimizer(groups: list[dict], name: str, lr: float, device_type: str):
    """The Trial's optimizer: torch AdamW, fused (one kernel per parameter, no per-step
    temporaries) on CUDA and on the CPU, or bitsandbytes' 8-bit AdamW / paged 8-bit AdamW.
    On this project's CPU (one thread) the fused step of MiniLM's 22.3M weights takes 0.028 s,
    the default (foreach) implementation's 0.138 s; a whole MiniLM full fine-tune step (16 x 24
    tokens, two threads, forward + backward + clipping + AdamW) takes 0.21-0.28 s fused against
    0.38 s. Sharded (FSDP2, DTensor) weights on the CPU keep the foreach step."""
    if name == "adamw":
        fused = device_type == "cuda" or (device_type == "cpu" and not _sharded(groups))
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged-adamw-8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=lr)


def _sharded(groups: list[dict]) -> bool:
    """Whether any weight is a DTensor (FSDP2's shards)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for g in groups for p in g["params"])
