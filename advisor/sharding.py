"""Per-GPU memory of data-parallel training over N processes: DDP (a full replica on each GPU)
and FSDP (full shard). A thin layer over `memory.estimate`, which stays the one-GPU estimator;
pure functions, no torch.

    per_gpu_estimate(spec, setup, world=4, strategy="fsdp") -> Estimate   (bytes per GPU, by term)
    max_batch_size(spec, setup, world, strategy, memory_bytes)  -> largest micro-batch per GPU
    fsdp_refusal(setup) -> str | None                          why FSDP cannot train this setup

DDP (torch.nn.parallel.DistributedDataParallel, as autoft's trainer wraps it): every GPU holds the
whole one-GPU footprint for its own micro-batch. DDP's reducer keeps the gradients in buckets;
the trainer passes gradient_as_bucket_view=True, so the gradients *are* the buckets (PyTorch
docs: the saving "will be equal to the total gradients size"); without it the buckets are a
second copy of every gradient. Plus NCCL's communication buffers.

FSDP (torch.distributed.fsdp.fully_shard, FSDP2, "full shard" = ZeRO-3): parameters, gradients
and optimizer states are split over the N processes (Rajbhandari et al. 2020, ZeRO, eq. in §5;
Zhao et al. 2023, PyTorch FSDP). What is not divided:
  - activations and logits of the GPU's own micro-batch (as on one GPU);
  - the all-gathered units: autoft shards each transformer block, the input embedding and the
    output layer (when untied) as units, and the rest (final norm, head) as the root. A unit's
    parameters exist unsharded, in the compute dtype, while it runs; FSDP2 prefetches the next
    block's all-gather (forward and backward), and the root stays gathered from forward to the
    end of backward (fully_shard's default for the root: reshard_after_forward=None);
  - the unsharded gradients of the unit in backward, in the compute dtype plus their fp32 copy
    for the reduce-scatter (MixedPrecisionPolicy(reduce_dtype=float32)).
The trainer's FSDP mixed precision casts the fp32 masters to 16 bit for the all-gather
(MixedPrecisionPolicy(param_dtype=bfloat16)), so there is no per-GPU autocast copy of the
weights: the trainable term is the fp32 masters / N.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from autoft.advisor import memory
from autoft.advisor.spec import STRATEGIES, Estimate, ModelSpec, TrainSetup
from autoft.advisor.units import GIB


TERMS_DDP = memory.TERMS[:-1] + ("gradient_buckets", "communication_buffers", "allocator_margin")
TERMS_FSDP = memory.TERMS[:-1] + ("gathered_units", "unit_gradients", "communication_buffers", "allocator_margin")


@dataclass(frozen=True)
class ShardingConstants:
    # NCCL's own device buffers per GPU: NCCL_BUFFSIZE (4 MiB by default, NCCL docs, "Environment
    # Variables") for each protocol, channel and peer direction; with the 16-32 channels NCCL opens
    # on NVLink machines that is a few hundred MiB. An assumption, not a measurement; 0 on the CPU
    # (gloo's buffers are RAM and small).
    comm_buffer_bytes: float = 0.25 * GIB
    # autoft's trainer: DistributedDataParallel(gradient_as_bucket_view=True)
    ddp_bucket_view: bool = True
    # FSDP2 all-gathers the next unit while the current one computes (one unit ahead)
    prefetch_units: int = 1


SHARDING = ShardingConstants()


def fsdp_refusal(setup: TrainSetup) -> str | None:
    """Why FSDP cannot train `setup` in autoft, or None when it can."""
    if setup.technique == "qlora":
        return ("QLoRA with FSDP is not supported: bitsandbytes' 4-bit weights shard only with FSDP1 and "
                "bnb_4bit_quant_storage set to the compute dtype (peft docs, 'Use PEFT QLoRA and FSDP'); "
                "autoft shards with FSDP2")
    if setup.precision == "fp16" and setup.device != "cpu":
        return "FSDP with fp16 needs a sharded gradient scaler, which FSDP2 does not have; use bf16 or DDP"
    return None


def _units(spec: ModelSpec, setup: TrainSetup) -> dict[str, float]:
    """Parameter counts of the FSDP units autoft makes: one transformer block (`block`, its
    trainable part `block_train`), the input embedding and output layer when they are separate
    units (untied), and the root (everything else)."""
    h, L = spec.hidden_size, spec.num_layers
    block = sum(i * o for _, i, o in memory.layer_linears(spec)) + 2 * h  # linears + two norms
    lora = memory.lora_params(spec, setup) / L if setup.technique in ("lora", "qlora") else 0
    total = memory.effective_params(spec, setup)
    emb = spec.vocab_size * h
    # the LM head exists for generation; tied, it shares the embedding's weight (one root unit)
    head_separate = setup.task == "generation" and not spec.tied_embeddings
    embed_unit = emb if not spec.tied_embeddings else 0
    out_unit = emb if head_separate else 0
    root = max(0.0, total - L * block - embed_unit - out_unit)
    if setup.technique == "full":
        train = {"block": block, "embed": embed_unit, "out": out_unit}
    elif setup.technique == "freeze":
        train = {"block": block, "embed": 0, "out": 0}  # the top blocks train, embeddings do not
    else:
        train = {"block": lora, "embed": 0, "out": 0}
    return {"block": block + lora, "embed": embed_unit, "out": out_unit, "root": root,
            "block_train": train["block"], "max_unit": max(block + lora, embed_unit, out_unit),
            "max_unit_train": max(train.values())}


def per_gpu_estimate(spec: ModelSpec, setup: TrainSetup, world: int, strategy: str = "ddp",
                     constants: memory.Constants | None = None, dtype_policy: str | None = None,
                     sharding: ShardingConstants | None = None) -> Estimate:
    """Predicted peak memory of one of `world` processes training `setup` (its micro-batch is
    per process) with `strategy`, by term (bytes). world 1 is `memory.estimate`."""
    c, s = constants or memory.CONSTANTS, sharding or SHARDING
    base = memory.estimate(spec, setup, c, dtype_policy)
    if world <= 1:
        return base
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    bd = {k: float(v) for k, v in base.breakdown_bytes.items()}
    on_cpu = setup.device == "cpu"
    comm = 0.0 if on_cpu else s.comm_buffer_bytes
    notes = list(base.notes)
    if strategy == "ddp":
        buckets = 0.0 if s.ddp_bucket_view else bd["gradients"]
        out = {k: bd[k] for k in memory.TERMS[:-1]}
        out.update(gradient_buckets=buckets, communication_buffers=comm)
        notes.append(f"DDP over {world} processes: a full replica on each; gradients all-reduced "
                     + ("in place (gradient_as_bucket_view)" if s.ddp_bucket_view else "through a bucket copy"))
        static = sum(out[k] for k in ("frozen_weights", "trainable_weights", "gradients", "optimizer_states"))
        dynamic = out["activations"] + out["logits_and_loss"]
    else:
        refusal = fsdp_refusal(setup)
        if refusal:
            notes.append(refusal)
        policy = memory.TRAINING_DTYPES[dtype_policy or ("fp32" if on_cpu else setup.precision)]
        mixed = policy.autocast_copy > 0
        master = bd["trainable_weights"]
        if setup.technique in ("full", "freeze") and mixed:
            master *= policy.weight / (policy.weight + policy.autocast_copy)  # no autocast copies
        u = _units(spec, setup)
        g = 4 if on_cpu else 2  # bytes of a gathered parameter: the 16-bit compute dtype
        reduce = 0 if g == 4 or not mixed else 4  # fp32 copy of the unit's gradient to reduce-scatter
        block = u["block"] * g
        if setup.technique == "qlora":  # 4-bit blocks travel packed (dequantised one weight at a time)
            lin = sum(i * o for _, i, o in memory.layer_linears(spec))
            block = lin * c.nf4_bytes_per_param + (u["block"] - lin) * g
        largest = max(block, u["embed"] * g, u["out"] * g)
        gathered = u["root"] * g + largest + s.prefetch_units * block
        unit_grads = u["max_unit_train"] * (g + reduce)
        out = {"frozen_weights": bd["frozen_weights"] / world, "trainable_weights": master / world,
               "gradients": bd["gradients"] / world, "optimizer_states": bd["optimizer_states"] / world,
               "activations": bd["activations"], "logits_and_loss": bd["logits_and_loss"],
               "cuda_context": bd["cuda_context"], "gathered_units": gathered, "unit_gradients": unit_grads,
               "communication_buffers": comm}
        notes.append(f"FSDP full shard over {world} processes: weights, gradients and optimizer states / {world}; "
                     f"one block ({u['block'] / 1e6:.0f}M parameters) computed and one prefetched, the largest unit "
                     f"{u['max_unit'] / 1e6:.0f}M, root {u['root'] / 1e6:.0f}M kept gathered, in {g}-byte dtype")
        static = sum(out[k] for k in ("frozen_weights", "trainable_weights", "gradients", "optimizer_states"))
        dynamic = out["activations"] + out["logits_and_loss"] + gathered + unit_grads
    out["allocator_margin"] = c.allocator_dynamic_frac * dynamic + c.allocator_static_frac * static
    ints = {k: int(round(v)) for k, v in out.items()}
    return Estimate(peak_bytes=sum(ints.values()), breakdown_bytes=ints, notes=notes)


def max_batch_size(spec: ModelSpec, setup: TrainSetup, world: int, strategy: str, memory_bytes: int,
                   safety: float = 0.9, limit: int = 1024, constants: memory.Constants | None = None) -> int:
    """Largest micro-batch per process whose per-GPU peak is at most safety x memory (0 when not
    even 1 fits); doubling, then bisection (the peak grows with the batch)."""
    if world <= 1:
        return memory.max_batch_size(spec, setup, memory_bytes, safety=safety, limit=limit, constants=constants)
    budget = safety * memory_bytes

    def fits(bs: int) -> bool:
        return per_gpu_estimate(spec, replace(setup, batch_size=bs), world, strategy, constants).peak_bytes <= budget

    if not fits(1):
        return 0
    lo = 1
    while lo < limit and fits(min(2 * lo, limit)):
        lo = min(2 * lo, limit)
    hi = min(2 * lo, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
