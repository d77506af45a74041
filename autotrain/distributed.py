"""One of several data-parallel training processes: `DistributedTrial`, the Trial's loop with the
model wrapped in DDP or sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

    init_process_group("cpu")                      # in each process torch.distributed.run started
    Trial = trial_class("fsdp")                    # DistributedTrial with its strategy
    trial = Trial.from_spec(spec, bundle, hparams, ...)   # the same arguments as one Trial

What changes against one process (the Trial's "distributed hooks"):
  - data: every process takes the same slice of the seeded stream for each micro-batch and trains
    on its share (rank r: examples r*b .. r*b+b-1), so N processes with micro-batch b and
    accumulation a see exactly the micro-batches one process sees with accumulation a*N;
  - gradients: DDP all-reduces them (no sync but at the last micro-batch: `no_sync`); FSDP
    reduce-scatters them into each process's shard;
  - the logged loss is averaged over the processes; evaluation runs on every process (FSDP
    needs them all for its all-gathers) and rank 0's metrics are broadcast, so that every process
    takes the same early-stopping decision;
  - checkpoints and the saved model are gathered to full tensors and written by rank 0, in the
    one-process format: a distributed run resumes from a search checkpoint and vice versa;
  - out of memory is not backed off (one process alone cannot halve its micro-batch): it ends
    the run with the micro-batch to pass instead.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist

from autoft.autotrain.schedule import smaller_micro_batch
from autoft.autotrain.trainer import Trial
from autoft.errors import AutoftError

__all__ = ["DistributedTrial", "trial_class", "init_process_group", "shard_model"]


def init_process_group(device_kind: str, timeout_s: float = 1800) -> tuple[int, int, int]:
    """Join the process group torch.distributed.run set up (RANK, WORLD_SIZE, MASTER_ADDR in the
    environment): NCCL on GPUs, gloo on the CPU. Returns (rank, world size, local rank)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), local


def _block_class_names(model) -> set[str]:
    """The transformer block classes of a (peft-wrapped) Hugging Face model: its _no_split_modules."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or [])


def shard_model(model, device_kind: str, precision: str):
    """FSDP2 full shard: each transformer block, the input embedding and (untied) output layer
    as units, the rest as the root (what advisor/sharding.py models). 16-bit training gathers the
    fp32 masters in the compute dtype and reduces gradients in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_kind, (dist.get_world_size(),))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    blocks = _block_class_names(model)
    depth = {m: name.count(".") for name, m in model.named_modules()}
    units = [m for m in model.modules() if type(m).__name__ in blocks and m is not model]
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = emb is not None and out is not None and out.weight is emb.weight
    if not tied:  # tied weights must stay in one unit: the root
        units += [m for m in (emb, out) if m is not None and m not in units]
    for m in sorted(units, key=lambda m: -depth.get(m, 0)):  # children before their parents
        fully_shard(m, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def _full(options_cls, **kw):
    return options_cls(full_state_dict=True, **kw)


class DistributedTrial(Trial):
    """A Trial as one of the processes of a DDP or FSDP run (see the module docstring)."""

    strategy = "ddp"

    # -- construction -----------------------------------------------------------------------------
    def _distribute(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.strategy == "fsdp":
            if self.info.quantized or self.precision == "fp16":
                raise AutoftError(f"FSDP cannot train {self.technique} in {self.precision}",
                                  "use --strategy ddp (or bf16, or LoRA instead of QLoRA)")
            shard_model(self.model, self.device.type, self.precision)
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            return
        cuda = self.device.type == "cuda"
        # gradients as views into DDP's buckets: no second copy of them (advisor/sharding.py)
        self.train_module = DDP(self.model, device_ids=[self.device.index or 0] if cuda else None,
                                gradient_as_bucket_view=True)

    def _micro_step(self, last: bool):
        if self.strategy == "ddp" and not last:
            return self.train_module.no_sync()  # accumulate locally, all-reduce once per step
        return nullcontext()

    def _global_mean(self, value: torch.Tensor) -> torch.Tensor:
        v = value.detach().clone().float()
        dist.all_reduce(v)  # (gloo has no AVG)
        return v / self.world_size

    def _back_off(self, err: BaseException) -> None:
        """No back-off: the processes would disagree on the micro-batch. One line with the fix."""
        bs, acc = (smaller_micro_batch(self.batch_size, self.grad_accum) if self.batch_size > 1
                   else (1, self.grad_accum))
        fix = (f"pass --batch-size {bs} --gradient-accumulation-steps {acc} (the same effective batch)"
               if self.batch_size > 1 else "use --strategy fsdp, more GPUs, or a shorter --seq-len")
        raise AutoftError(f"out of memory at micro-batch {self.batch_size} on rank {self.rank}", fix) from err

    # -- evaluation: every process runs it, rank 0's result counts ---------------------------------
    def evaluate(self, split: str = "validation", max_examples: int | None = None) -> dict:
        return self._from_rank0(super().evaluate(split, max_examples))

    def generate_samples(self, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
        # every process generates (FSDP all-gathers in each forward); identical weights and greedy
        # decoding give identical lengths, and rank 0's texts are the ones kept
        return self._from_rank0(super().generate_samples(prompts, max_new_tokens))

    def _from_rank0(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- checkpoints: full tensors, written by rank 0, in the one-process format -----------------
    def _names(self) -> list[str]:
        """Parameter names in the optimizer's order (what its index-keyed state dict counts)."""
        name_of = {id(p): n for n, p in self.model.named_parameters()}
        return [name_of[id(p)] for g in self.optimizer.param_groups for p in g["params"]]

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.strategy == "ddp":
            return super()._trainable_state()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=_full(StateDictOptions, cpu_offload=True,
                                                            ignore_frozen_params=True))
        return {k: v.contiguous() for k, v in sd.items()}  # empty on ranks other than 0

    def _training_state(self) -> dict:
        if self.strategy == "ddp":  # the optimizer is whole on every process
            state = super()._training_state()
        else:
            cuda = self.device.type == "cuda"
            state = {"optimizer": self._full_optimizer_state(), "scheduler": self.scheduler.state_dict(),
                     "scaler": None, "rng": {"torch": torch.get_rng_state(),
                                             "cuda": torch.cuda.get_rng_state_all() if cuda else None}}
        ranks = [None] * self.world_size
        dist.all_gather_object(ranks, torch.get_rng_state())  # each process's dropout stream
        state["rng"]["ranks"] = ranks
        return state

    def _full_optimizer_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        osd = get_optimizer_state_dict(self.model, self.optimizer,
                                       options=_full(StateDictOptions, cpu_offload=True))
        if self.rank != 0:
            return {}
        index = {n: i for i, n in enumerate(self._names())}
        return {"state": {index[n]: v for n, v in osd["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}

    def save_checkpoint(self, path):
        weights, state = self._trainable_state(), self._training_state()  # collective
        if self.rank == 0:
            self._write_checkpoint(path, weights, state)
        dist.barrier()
        return path

    def _load_trainable(self, weights: dict) -> None:
        if self.strategy == "ddp":
            return super()._load_trainable(weights)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.model, weights, options=_full(StateDictOptions, strict=False))

    def _load_optimizer(self, state: dict) -> None:
        if self.strategy == "ddp":
            return super()._load_optimizer(state)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = self._names()
        osd = {"state": {names[i]: v for i, v in state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, osd, options=_full(StateDictOptions))

    def _load_rng(self, rng: dict) -> None:
        super()._load_rng(rng)
        ranks = rng.get("ranks")
        if ranks and len(ranks) == self.world_size:
            torch.set_rng_state(ranks[self.rank].cpu())

    # -- the trained model: rank 0 writes it ------------------------------------------------------
    def save_model(self, out_dir, merge: bool = False, state_dict: dict | None = None):
        if self.strategy == "fsdp":
            if merge:
                raise AutoftError("--merge with FSDP: the adapter is sharded across the processes",
                                  "drop --merge and merge afterwards (PeftModel.merge_and_unload), or use --strategy ddp")
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state_dict = get_model_state_dict(self.model, options=_full(StateDictOptions, cpu_offload=True))
        if self.rank == 0:
            super().save_model(out_dir, merge=merge, state_dict=state_dict)
        dist.barrier()
        return out_dir


def trial_class(strategy: str) -> type[DistributedTrial]:
    """DistributedTrial with its strategy; FSDP on GPUs loads the model on the CPU, then shards
    it onto the GPU (a whole copy would not fit one GPU: that is why FSDP was chosen)."""
    if strategy not in ("ddp", "fsdp"):
        raise AutoftError(f"unknown strategy {strategy!r}", "use ddp or fsdp")
    load = "cpu" if strategy == "fsdp" else None
    return type(f"{strategy.upper()}Trial", (DistributedTrial,), {"strategy": strategy, "load_device": load})
