"""One training configuration, trained with a plain PyTorch loop: `Trial`.

The successive-halving search and the final fine-tune both drive a `Trial`:

    trial = Trial("path/to/model", bundle, task="classification", technique="lora",
                  hparams={"learning_rate": 3e-4, "lora_r": 16}, batch_size=16, seq_len=128)
    trial.train(100)                     # 100 optimizer steps (micro-batches x grad_accum each)
    trial.evaluate("validation")         # {"loss", "accuracy", "macro_f1", ...}
    trial.save_checkpoint(dir)           # promoted? later: Trial.load_checkpoint(dir, bundle)
    trial.train(200)                     #  ... continues where it stopped
    trial.save_model(out_dir)            # PEFT adapter or full safetensors + tokenizer
    trial.close()                        # frees the model, optimizer and GPU memory

The loop reads top to bottom (torchtune-recipe style, not HF Trainer): micro-batch forward,
loss / grad_accum, backward, clip, optimizer step, scheduler step. Losses stay on the device and
are only read back (one sync) every `log_every` optimizer steps and at the end of `train()`.
"""
from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from autoft.errors import AutoftError

# The hparams keys a Trial understands (a technique ignores those that do not apply to it).
HPARAM_KEYS = ("learning_rate", "weight_decay", "warmup_ratio", "warmup_steps", "lora_r",
               "lora_alpha", "lora_dropout", "freeze_layers", "layer_decay")
LR_SCHEDULES = ("constant", "linear", "cosine")
CHECKPOINT_FORMAT = 1


class TrialDiverged(RuntimeError):
    """The training loss turned NaN or infinite: this configuration failed (not a bug, not fatal).

    `step` is the optimizer step at which it was seen, `loss` the value read back."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"training loss became {loss} at optimizer step {step}")


class Trial:
    """One configuration (model + technique + hyperparameters) being trained.

    Arguments:
        model_source: Hub id (offline-safe), a local model folder, or a `.gguf` file.
        bundle: a DataBundle (duck-typed: `.task`, `.splits` {"train","validation","test"} -> list
            of records, `.label_names`). Classification records are {"text", "label"}; generation
            records are {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}.
        task: "classification" or "generation".
        technique: "full", "freeze", "lora" or "qlora" (see `autoft.autotrain.techniques`).
        hparams: learning_rate (default 2e-5 full, 1e-4 freeze, 2e-4 lora/qlora), weight_decay
            (0.0), warmup_steps / warmup_ratio (ratio needs total_steps), lora_r, lora_alpha,
            lora_dropout, freeze_layers (bottom layers kept frozen), layer_decay (freeze, 0.8-1.0).
            Keys that do not apply to the technique are ignored; unknown keys are an error.
        batch_size: micro-batch size; grad_accum: micro-batches per optimizer step.
        seq_len: truncation length in tokens.
        precision: "fp32" (the only choice on CPU), "bf16" or "fp16" (CUDA autocast; fp16 uses a
            GradScaler). For qlora it is also the 4-bit compute dtype.
        gradient_checkpointing: recompute activations in backward.
        device: "cpu", "cuda" or "cuda:N".
        seed: seeds torch, the model's new weights (head, LoRA) and the data order.
        lr_schedule: "constant" (after warmup; the search) or "linear"/"cosine" decay to 0 at
            total_steps (the final run; total_steps required).
        decay_start: optimizer step where the decay begins (default: the end of warmup). The final
            run that continues the search's winner starts its decay there: constant learning rate
            in the search, then decay (a warmup-stable-decay schedule).
        total_steps: planned optimizer steps (for decay and warmup_ratio).
        warmup_steps: linear warmup steps (hparams' warmup_steps/warmup_ratio take precedence).
        label_names: class names in id order (default: bundle.label_names).
        trust_remote_code: passed to transformers (off by default).
        max_eval_examples: cap on examples per evaluate() call (None: the whole split).
        optimizer: "adamw" (torch, fused on CUDA), "adamw-8bit" or "paged-adamw-8bit" (bnb).
        packing: generation only: pack examples into seq_len blocks instead of length grouping.
        log_every: read the loss back (one device sync) every this many optimizer steps.

    Attributes: `model`, `tokenizer`, `steps_done` (optimizer steps so far), `samples_seen`,
    `tokens_seen` (non-pad tokens), `batch_size`, `grad_accum`, `history` (the logged step
    dicts, kept across checkpoints), `args` (constructor arguments, saved in trial.json).
    """

    def __init__(self, model_source: str | os.PathLike, bundle: Any, *, task: str, technique: str,
                 hparams: dict | None = None, batch_size: int = 8, grad_accum: int = 1,
                 seq_len: int = 128, precision: str = "fp32", gradient_checkpointing: bool = False,
                 device: str = "cpu", seed: int = 0, lr_schedule: str = "constant",
                 total_steps: int | None = None, warmup_steps: int = 0, decay_start: int | None = None,
                 label_names: list[str] | None = None, trust_remote_code: bool = False,
                 max_eval_examples: int | None = None, optimizer: str = "adamw",
                 packing: bool = False, log_every: int = 10):
        from autoft.autotrain import tasks
        from autoft.autotrain.models import load_model_and_tokenizer
        from autoft.autotrain.techniques import get_technique, make_config

        hparams = dict(hparams or {})
        # Everything needed to rebuild this Trial from a checkpoint (no data, no objects).
        self.args = dict(model_source=str(model_source), task=task, technique=technique,
                         hparams=hparams, batch_size=batch_size, grad_accum=grad_accum,
                         seq_len=seq_len, precision=precision,
                         gradient_checkpointing=gradient_checkpointing, device=device, seed=seed,
                         lr_schedule=lr_schedule, total_steps=total_steps,
                         warmup_steps=warmup_steps, decay_start=decay_start, label_names=label_names,
                         trust_remote_code=trust_remote_code, max_eval_examples=max_eval_examples,
                         optimizer=optimizer, packing=packing, log_every=log_every)
        # -- validate arguments (one-line errors, before any model is loaded) --
        unknown = sorted(set(hparams) - set(HPARAM_KEYS))
        if unknown:
            raise AutoftError(f"unknown hyperparameter(s) {', '.join(unknown)}",
                              "use " + ", ".join(HPARAM_KEYS))
        if task not in ("classification", "generation"):
            raise AutoftError(f"unknown task {task!r}", "use classification or generation")
        if lr_schedule not in LR_SCHEDULES:
            raise AutoftError(f"unknown learning-rate schedule {lr_schedule!r}", "use constant, linear or cosine")
        if lr_schedule != "constant" and not total_steps:
            raise AutoftError(f"the {lr_schedule} schedule needs total_steps", "pass total_steps")
        if batch_size < 1 or grad_accum < 1 or seq_len < 8:
            raise AutoftError("batch_size and grad_accum must be at least 1 and seq_len at least 8")
        if precision not in ("fp32", "bf16", "fp16"):
            raise AutoftError(f"unknown precision {precision!r}", "use fp32, bf16 or fp16")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AutoftError("device cuda was asked for but no CUDA GPU is visible", "use --gpu cpu")
        if self.device.type == "cpu" and precision != "fp32":
            raise AutoftError(f"precision {precision} needs a CUDA GPU", "use fp32 on the CPU")
        if optimizer not in ("adamw", "adamw-8bit", "paged-adamw-8bit"):
            raise AutoftError(f"unknown optimizer {optimizer!r}", "use adamw, adamw-8bit or paged-adamw-8bit")
        self.info = get_technique(technique)
        self.tech_config = make_config(technique, hparams)
        self.task, self.technique, self.hparams = task, technique, hparams
        self.batch_size, self.grad_accum, self.seq_len = batch_size, grad_accum, seq_len
        self.precision, self.seed, self.log_every = precision, seed, max(1, log_every)
        self.max_eval_examples, self.bundle = max_eval_examples, bundle
        self.lr = float(hparams.get("learning_rate", self.info.default_lr))
        self.weight_decay = float(hparams.get("weight_decay", 0.0))
        if not (math.isfinite(self.lr) and self.lr > 0):  # (a huge finite one diverges honestly)
            raise AutoftError(f"learning rate must be positive, got {self.lr}", "use e.g. 2e-5 .. 1e-3")
        if "warmup_steps" in hparams:
            warmup_steps = int(hparams["warmup_steps"])
        elif "warmup_ratio" in hparams and total_steps:
            warmup_steps = int(round(float(hparams["warmup_ratio"]) * total_steps))
        self.warmup_steps, self.total_steps, self.lr_schedule = int(warmup_steps), total_steps, lr_schedule
        self.decay_start = max(self.warmup_steps, int(decay_start or 0))
        self.label_names = list(label_names or getattr(bundle, "label_names", None) or []) if task == "classification" else []
        if task == "classification" and len(self.label_names) < 2:
            raise AutoftError("classification needs at least 2 label names", "check the data's label column")

        # -- model: load, apply the technique (seeded: new head and LoRA weights) --
        torch.manual_seed(seed)  # (autoft's own randomness - data order - uses private RNGs)
        model, self.tokenizer = load_model_and_tokenizer(
            model_source, task, technique, label_names=self.label_names or None,
            precision=precision, device=str(self.device), trust_remote_code=trust_remote_code)
        model.config.use_cache = False  # no KV cache while training (generate() turns it on)
        if gradient_checkpointing and technique != "qlora":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if technique == "qlora":
            model = self.info.module.apply(model, self.tech_config, task, gradient_checkpointing)
        else:
            model = self.info.module.apply(model, self.tech_config, task)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Trainable weights are fp32 masters whatever the base is stored in (a LoRA head copied
        # from a bf16 base, for instance); the forward runs in bf16/fp16 through autocast.
        for p in self.params:
            if p.dtype != torch.float32:
                p.data = p.data.float()
        if not self.params:
            raise AutoftError(f"technique {technique} left nothing to train", "check its settings")

        # -- optimizer and schedule --
        groups = self.info.module.trainable_parameter_groups(model, self.tech_config, self.lr, self.weight_decay)
        self.optimizer = self._make_optimizer(groups, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.clip_norm = self.info.clip_norm

        # -- data: tokenise the training split once; a seeded endless stream of indices --
        self._encoded: dict[str, list[dict]] = {}
        train = self._encode("train")
        if task == "generation" and packing:
            train = self._encoded["train"] = tasks.pack(train, seq_len, seed)
        self.stream = tasks.ExampleStream([len(e["input_ids"]) for e in train], seed,
                                          group_by_length=not packing)
        self.steps_done, self.samples_seen, self.tokens_seen = 0, 0, 0
        self.history: list[dict] = []
        self.merged = False
        model.train()  # once; evaluate() puts it back

    # -- construction helpers --------------------------------------------------------------------
    def _make_optimizer(self, groups: list[dict], name: str):
        if name == "adamw":
            fused = self.device.type == "cuda"
            return torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)
        import bitsandbytes as bnb
        cls = bnb.optim.PagedAdamW8bit if name == "paged-adamw-8bit" else bnb.optim.AdamW8bit
        return cls(groups, lr=self.lr)

    def _lr_factor(self, step: int) -> float:
        """Multiplier of the base LR at optimizer step `step`: linear warmup, then constant
        (search) or constant until decay_start and linear/cosine decay to 0 at total_steps (final
        run)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.lr_schedule == "constant" or step < self.decay_start:
            return 1.0
        span = max(1, self.total_steps - self.decay_start)
        progress = min(1.0, (step - self.decay_start) / span)
        if self.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _encode(self, split: str) -> list[dict]:
        """Tokenised examples of a split (cached)."""
        from autoft.autotrain import tasks

        if split not in self._encoded:
            records = (getattr(self.bundle, "splits", None) or {}).get(split)
            if records is None:
                raise AutoftError(f"the data has no {split} split", "give the data a " + split + " split")
            if self.task == "classification":
                enc = tasks.encode_classification(records, self.tokenizer, self.seq_len, self.label_names)
            else:
                enc = tasks.encode_generation(records, self.tokenizer, self.seq_len)
            self._encoded[split] = enc
        return self._encoded[split]

    def _to_device(self, batch: dict) -> dict:
        nb = self.device.type == "cuda"
        return {k: batch[k].to(self.device, non_blocking=nb) for k in ("input_ids", "attention_mask", "labels")}

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- training ------------------------------------------------------------------------------
    def train(self, steps: int, on_step: Callable[[dict], None] | None = None) -> dict:
        """Train `steps` more optimizer steps, cycling epochs with a seeded order.

        `on_step` is called every `log_every` steps and at the last one with {step, loss, lr,
        epoch, samples, tokens, seconds}. Returns {steps_done (total so far), steps (this call),
        train_loss (mean over this call's steps), samples, tokens, seconds, epoch,
        peak_memory_bytes (CUDA only, else None)}.
        Raises `TrialDiverged` on a NaN/inf loss; lets `torch.OutOfMemoryError` propagate (call
        `set_micro_batch` and train again: the interrupted optimizer step is redone)."""
        from autoft.autotrain.step import optimizer_step
        from autoft.autotrain.tasks import collate

        if self.model is None:
            raise RuntimeError("this Trial is closed")
        if self.merged:
            raise RuntimeError("the adapter was merged by save_model(merge=True); the Trial cannot train further")
        if steps <= 0:
            return {"steps_done": self.steps_done, "steps": 0, "train_loss": None, "samples": 0,
                    "tokens": 0, "seconds": 0.0, "epoch": self.stream.epoch, "peak_memory_bytes": None}
        model, opt, sched, scaler = self.model, self.optimizer, self.scheduler, self.scaler
        train = self._encoded["train"]
        pad = self.tokenizer.pad_token_id
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        losses = torch.zeros(steps, device=self.device)  # stays on the device: no per-step sync
        t0, samples, tokens, last_read = time.perf_counter(), 0, 0, 0
        for s in range(steps):
            step_start = self.stream.position
            counts = [0, 0]  # samples, tokens of this step

            def micro_batches():
                for _ in range(self.grad_accum):
                    idx = self.stream.take(self.batch_size)
                    batch = collate((train[i] for i in idx), pad, self.task)
                    counts[0] += len(idx)
                    counts[1] += batch["num_tokens"]
                    yield self._to_device(batch)

            try:
                # the step itself is shared with the memory tracer (autotrain/step.py)
                step_loss = optimizer_step(model, micro_batches(), optimizer=opt, scheduler=sched, scaler=scaler,
                                           params=self.params, clip_norm=self.clip_norm,
                                           grad_accum=self.grad_accum, autocast=self._autocast)
            except torch.OutOfMemoryError:
                # Undo the half-done step so that a retry with a smaller micro-batch redoes it.
                opt.zero_grad(set_to_none=True)
                self.stream.position = step_start
                self.stream._epoch = -1
                raise
            step_samples, step_tokens = counts
            losses[s] = step_loss / self.grad_accum
            self.steps_done += 1
            samples += step_samples
            tokens += step_tokens
            self.samples_seen += step_samples
            self.tokens_seen += step_tokens
            if self.steps_done % self.log_every == 0 or s == steps - 1:
                window = losses[last_read:s + 1]
                mean = window.mean().item()  # the one sync per log_every steps
                last_read = s + 1
                if not math.isfinite(mean):
                    raise TrialDiverged(self.steps_done, mean)
                rec = {"step": self.steps_done, "loss": mean, "lr": sched.get_last_lr()[0],
                       "epoch": round(self.stream.epoch, 4), "samples": self.samples_seen,
                       "tokens": self.tokens_seen, "seconds": time.perf_counter() - t0}
                self.history.append(rec)
                if on_step is not None:
                    on_step(rec)
        seconds = time.perf_counter() - t0
        mean_loss = losses.mean().item()
        if not math.isfinite(mean_loss):
            raise TrialDiverged(self.steps_done, mean_loss)
        return {"steps_done": self.steps_done, "steps": steps, "train_loss": mean_loss,
                "samples": samples, "tokens": tokens, "seconds": seconds,
                "epoch": self.stream.epoch,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None}

    def set_micro_batch(self, batch_size: int, grad_accum: int) -> None:
        """Change the micro-batch and accumulation (e.g. halve / double after an OOM). The
        effective batch batch_size x grad_accum must stay the same; the data order is unchanged."""
        if batch_size < 1 or grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")
        if batch_size * grad_accum != self.batch_size * self.grad_accum:
            raise ValueError(f"effective batch would change from {self.batch_size * self.grad_accum} "
                             f"to {batch_size * grad_accum}")
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.args.update(batch_size=batch_size, grad_accum=grad_accum)
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_batches(self, split: str, max_examples: int | None):
        from autoft.autotrain.tasks import collate

        enc = self._encode(split)
        limit = max_examples if max_examples is not None else self.max_eval_examples
        if limit is not None:
            enc = enc[:limit]
        # Sorted by length: less padding, same metrics (order does not matter for them).
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]["input_ids"]))
        # Classification logits are tiny: twice the training micro-batch. Generation logits
        # (batch x seq x vocab) are what runs out of memory at eval time: the training micro-batch.
        bs = max(1, 2 * self.batch_size if self.task == "classification" else self.batch_size)
        for k in range(0, len(order), bs):
            idx = order[k:k + bs]
            yield idx, collate((enc[i] for i in idx), self.tokenizer.pad_token_id, self.task)

    @torch.no_grad()
    def evaluate(self, split: str = "validation", max_examples: int | None = None) -> dict:
        """Metrics on a split (no gradients, model back to train mode afterwards).
        Classification: {loss, accuracy, macro_f1, per_class {label: {precision, recall, f1,
        support}}, confusion_matrix (rows true, cols predicted), labels, examples}.
        Generation: {eval_loss, perplexity, tokens, examples}."""
        from autoft.autotrain import evaluate as ev

        model = self.model
        model.eval()
        try:
            if self.task == "classification":
                loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
                preds, trues, n = [], [], 0
                for _, batch in self._eval_batches(split, max_examples):
                    b = self._to_device(batch)
                    with self._autocast():
                        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                    logits = logits.float()
                    loss_sum += torch.nn.functional.cross_entropy(logits, b["labels"], reduction="sum")
                    preds.append(logits.argmax(-1))
                    trues.append(batch["labels"])
                    n += len(batch["labels"])
                if n == 0:
                    raise AutoftError(f"the {split} split is empty", "give it some examples")
                y_pred = torch.cat(preds).cpu().tolist()
                y_true = torch.cat(trues).tolist()
                out = ev.classification_metrics(y_true, y_pred, self.label_names)
                out["loss"] = (loss_sum / n).item()
                return out
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            n_tok, n = 0, 0
            for _, batch in self._eval_batches(split, max_examples):
                b = self._to_device(batch)
                with self._autocast():
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                # Token-weighted: sum of per-token losses over response tokens (shifted). One
                # row at a time in fp32, so a large vocabulary needs no fp32 copy of all logits.
                for i in range(logits.size(0)):
                    loss_sum += torch.nn.functional.cross_entropy(
                        logits[i, :-1].float(), b["labels"][i, 1:], ignore_index=-100, reduction="sum")
                n_tok += int((batch["labels"][:, 1:] != -100).sum())
                n += batch["input_ids"].size(0)
            if n_tok == 0:
                raise AutoftError(f"the {split} split has no response tokens to evaluate",
                                  "check that examples have responses and seq_len leaves room for them")
            mean = (loss_sum / n_tok).item()
            return {"eval_loss": mean, "perplexity": ev.perplexity(mean), "tokens": n_tok, "examples": n}
        finally:
            model.train()

    def baseline_eval(self, split: str = "test") -> dict:
        """What not fine-tuning gives. Classification: the majority class of the train split
        predicted for every example of `split` (same keys as evaluate(), loss None).
        Generation: the base model's eval_loss/perplexity on `split` - call it BEFORE training
        (raises if steps_done > 0)."""
        from autoft.autotrain import evaluate as ev

        if self.task == "classification":
            index = {n: i for i, n in enumerate(self.label_names)}
            train_labels = [index[str(r["label"])] for r in self.bundle.splits["train"]]
            enc = self._encode(split)
            if self.max_eval_examples is not None:
                enc = enc[:self.max_eval_examples]
            return ev.majority_baseline(train_labels, [e["label"] for e in enc], self.label_names)
        if self.steps_done > 0:
            raise RuntimeError("baseline_eval() for generation measures the base model: call it before train()")
        return self.evaluate(split)

    @torch.no_grad()
    def generate_samples(self, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy generations for user prompts, formatted like training (chat template or the
        prompt template); returns only the new text. Generation task only."""
        from autoft.autotrain.tasks import prompt_ids

        if self.task != "generation":
            raise RuntimeError("generate_samples() is for the generation task")
        model, tok = self.model, self.tokenizer
        model.eval()
        out = []
        try:
            for text in prompts:
                ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": text}])], device=self.device)
                with self._autocast():
                    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
        finally:
            model.train()
        return out

    # -- checkpoints and outputs ---------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Everything needed to continue: trainable weights only (safetensors), optimizer,
        scheduler, RNG states, data position, steps_done, and the Trial's arguments (trial.json).
        Writes into `path` (created; files inside are replaced)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self._trainable_state(), str(path / "trainable.safetensors"))
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
        }
        torch.save(state, path / "training_state.pt")
        meta = {"format": CHECKPOINT_FORMAT, "args": self.args, "steps_done": self.steps_done,
                "stream_position": self.stream.position, "samples_seen": self.samples_seen,
                "tokens_seen": self.tokens_seen, "history": self.history}
        # Written last: a checkpoint without trial.json is incomplete (a kill mid-save).
        tmp = path / "trial.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(path / "trial.json")
        return path

    def restore(self, path: str | os.PathLike) -> None:
        """Load a checkpoint written by save_checkpoint into this (freshly built, same
        configuration) Trial; training then continues exactly where it stopped."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "trial.json").is_file():
            raise AutoftError(f"{path} is not a complete checkpoint (no trial.json)", "re-run that trial")
        meta = json.loads((path / "trial.json").read_text())
        weights = load_file(str(path / "trainable.safetensors"), device=str(self.device))
        named = dict(self.model.named_parameters())
        missing = [n for n, p in named.items() if p.requires_grad and n not in weights]
        if missing or any(n not in named for n in weights):
            raise AutoftError(f"checkpoint {path} does not match this configuration",
                              "restore it with the arguments saved in its trial.json")
        with torch.no_grad():
            for n, t in weights.items():
                named[n].copy_(t)
        state = torch.load(path / "training_state.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.steps_done = meta["steps_done"]
        self.stream.position = meta["stream_position"]
        self.samples_seen, self.tokens_seen = meta["samples_seen"], meta["tokens_seen"]
        self.history = list(meta["history"])

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike, bundle: Any, **overrides) -> "Trial":
        """Rebuild the Trial described by `path`/trial.json with `bundle` (overrides replace
        constructor arguments, e.g. device, total_steps, lr_schedule) and restore its state."""
        path = Path(path)
        if not (path / "trial.json").is_file():
            raise AutoftError(f"{path} is not a complete checkpoint (no trial.json)", "re-run that trial")
        args = json.loads((path / "trial.json").read_text())["args"]
        args.update(overrides)
        source = args.pop("model_source")
        trial = cls(source, bundle, **args)
        trial.restore(path)
        return trial

    def save_model(self, out_dir: str | os.PathLike, merge: bool = False) -> Path:
        """The trained model in Hugging Face format, tokenizer and label mapping (id2label) too.
        lora/qlora: a PEFT adapter (`PeftModel.from_pretrained(base, out_dir)` loads it), or with
        merge=True merged full weights (qlora: the base is reloaded in the compute dtype, not
        4-bit, and the adapter merged into it). full/freeze: save_pretrained (safetensors).
        After merge=True of a lora Trial, the Trial cannot train further."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if self.info.peft and merge:
            if self.technique == "qlora":
                model = self._dequantized_merged()
            else:
                model = model.merge_and_unload()
                self.model, self.merged = model, True
            model.save_pretrained(out, safe_serialization=True)
        elif self.info.peft:
            if self.args["model_source"].lower().endswith(".gguf"):  # name the file, not its folder
                for cfg in model.peft_config.values():
                    cfg.base_model_name_or_path = self.args["model_source"]
            model.save_pretrained(out, safe_serialization=True)
            if self.task == "classification":  # the adapter has no config.json: keep the mapping
                (out / "labels.json").write_text(json.dumps(
                    {"id2label": dict(enumerate(self.label_names)),
                     "label2id": {n: i for i, n in enumerate(self.label_names)}}, indent=1))
        else:
            model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return out

    def _dequantized_merged(self):
        """QLoRA merge: reload the base in the compute dtype (not 4-bit), load the trained
        adapter and head into it, merge. The adapter was trained against the NF4 weights, so the
        merged model differs from the 4-bit one by the quantisation error (the usual QLoRA merge)."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        from autoft.autotrain.models import load_model_and_tokenizer
        from autoft.autotrain.techniques import lora

        dtype_precision = self.precision
        base, _ = load_model_and_tokenizer(self.args["model_source"], self.task, "lora",
                                           label_names=self.label_names or None,
                                           precision=dtype_precision, device=str(self.device),
                                           trust_remote_code=self.args["trust_remote_code"])
        peft_model = get_peft_model(base, lora.peft_config(base, self.tech_config, self.task))
        set_peft_model_state_dict(peft_model, get_peft_model_state_dict(self.model))
        return peft_model.merge_and_unload()

    def close(self) -> None:
        """Drop the model, optimizer and data; gc.collect() and empty the CUDA cache."""
        for name in ("model", "optimizer", "scheduler", "scaler", "params"):
            setattr(self, name, None)
        self._encoded = {}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- facts ---------------------------------------------------------------------------------
    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        seen, trainable, total = set(), 0, 0
        for p in self.model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 2 NF4 values/byte
            total += n
            trainable += n if p.requires_grad else 0
        return trainable, total
