"""Counting a step's allocations by kind: MemTracker's accounting, lean.

`torch.distributed._tools.mem_tracker.MemTracker` counts every storage an operator creates, by
kind (parameter, gradient, optimizer state, activation, temporary), with weak references that
subtract it when freed. It also keeps per-module snapshots through module hooks, which doubled a
trace's time; `StepCounter` keeps the same accounting and only the whole step's peak:

- weights: parameters and buffers (registered up front); weight_copies: casts of parameters
  (autocast's 16-bit copies, which MemTracker counts as activations);
- gradients: a parameter's .grad (relabelled when autograd accumulates it);
- optimizer_states: created inside optimizer.step (and those existing at the start);
- activations: created in forward, or while checkpointing recomputes a layer in backward;
- temporaries: created in backward; inputs: the batch.

tests/test_trace.py checks that its peak equals MemTracker's on a small model.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

KINDS = ("weights", "weight_copies", "gradients", "optimizer_states", "activations", "temporaries", "inputs")
_to_copy = torch.ops.aten._to_copy.default


class StepCounter(TorchDispatchMode):
    """Bytes alive by kind, and the peak (its breakdown, phase and step), of what runs inside."""

    def __init__(self, round_to: int = 1):
        super().__init__()
        self.round_to = round_to  # the CUDA caching allocator counts requests rounded up to 512 B
        self.current = dict.fromkeys(KINDS, 0)
        self.peak, self.peak_by_kind, self.peak_phase, self.peak_step = 0, dict(self.current), "forward", 0
        self.phase_peaks: dict[str, dict[str, int]] = {}
        self.step_peaks: list[int] = []
        self.step = 0
        self.recomputing = False  # set while activation checkpointing recomputes a layer
        self._info: dict[int, list] = {}  # id(storage) -> [kind, bytes]
        self._in_opt = False
        self._handles: list = []

    # -- registration --------------------------------------------------------------------------
    def _add(self, t: torch.Tensor, kind: str) -> None:
        st = t.untyped_storage()
        key = id(st)
        info = self._info.get(key)
        if info is not None:
            if info[0] != kind and kind in ("gradients", "optimizer_states", "weights"):
                self.current[info[0]] -= info[1]  # relabel (a gradient first seen as a temporary)
                self.current[kind] += info[1]
                info[0] = kind
            return
        size = math.ceil(st.nbytes() / self.round_to) * self.round_to
        self._info[key] = [kind, size]
        self.current[kind] += size
        weakref.finalize(st, self._freed, key)

    def _freed(self, key: int) -> None:
        info = self._info.pop(key, None)
        if info is not None:
            self.current[info[0]] -= info[1]

    def track(self, model: torch.nn.Module, optimizer=None, inputs=()) -> None:
        """Register what exists before the step: weights (and gradients), optimizer states, inputs;
        and the hooks that label gradients and optimizer states."""
        for p in model.parameters():
            self._add(p, "weights")
            if p.grad is not None:
                self._add(p.grad, "gradients")
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(lambda q: self._add(q.grad, "gradients")))
        for b in model.buffers():
            self._add(b, "weights")
        if optimizer is not None:
            for state in optimizer.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        self._add(v, "optimizer_states")
        for t in inputs:
            self._add(t, "inputs")

    def grads_present(self, params) -> None:
        for p in params:
            if p.grad is not None:
                self._add(p.grad, "gradients")

    # -- the mode ------------------------------------------------------------------------------
    def __enter__(self):
        def pre(*_):
            self._in_opt = True

        def post(opt, *_):
            self._in_opt = False
            for state in opt.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        self._add(v, "optimizer_states")

        self._handles += [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return super().__exit__(*exc)

    def phase(self) -> str:
        if self._in_opt:
            return "optimizer"
        return "backward" if torch._C._current_graph_task_id() != -1 else "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        phase = self.phase()
        if func is _to_copy and args and isinstance(args[0], torch.nn.Parameter):
            kind = "weight_copies"
        elif phase == "optimizer":
            kind = "optimizer_states"
        elif phase == "backward" and not self.recomputing:
            kind = "temporaries"
        else:
            kind = "activations"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, kind)
        self._update(phase)
        return out

    def _update(self, phase: str) -> None:
        total = sum(self.current.values())
        while len(self.step_peaks) <= self.step:
            self.step_peaks.append(0)
        if total > self.step_peaks[self.step]:
            self.step_peaks[self.step] = total
        if total > self.phase_peaks.get(phase, {}).get("total", 0):
            self.phase_peaks[phase] = {**self.current, "total": total}
        if total > self.peak:
            self.peak, self.peak_by_kind = total, dict(self.current)
            self.peak_phase, self.peak_step = phase, self.step
