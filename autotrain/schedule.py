"""Successive-halving schedule and configuration sampling: pure functions, no torch.

Synchronous successive halving (Jamieson & Talwalkar 2016): start n configurations with a small
budget of `min_steps` optimizer steps, keep the best 1/eta of them, give the survivors eta times
the budget, repeat. Rung i runs floor(n / eta^i) configurations until each has trained
min_steps * eta^i steps in total (survivors *continue* from their checkpoint, so a rung only adds
the difference). The schedule stops when one configuration remains or when the next rung would
pass `max_steps`.

Semantics match scikit-learn's `HalvingRandomSearchCV` (factor=eta, min_resources=min_steps,
max_resources=max_steps, aggressive_elimination=False): the same number of rungs and the same
budgets (`n_resources_`). One documented difference: scikit-learn keeps ceil(n / eta) candidates
per rung, we keep floor(n / eta^i) as in the paper, so a rung here holds the same number of
trials as scikit-learn's or one fewer (equal whenever eta^i divides n). The tests use
scikit-learn as the oracle for both facts.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from autoft.errors import AutoftError


@dataclass(frozen=True)
class Rung:
    """One rung of a synchronous successive-halving schedule."""

    index: int
    n_trials: int  # configurations that train in this rung
    budget_steps: int  # cumulative optimizer steps each of them has trained by the end of the rung
    prev_budget_steps: int = 0  # cumulative steps at the start of the rung (0 for rung 0)

    @property
    def new_steps(self) -> int:
        """Steps each trial trains in this rung (continuing from its checkpoint)."""
        return self.budget_steps - self.prev_budget_steps

    @property
    def cost_steps(self) -> int:
        """Optimizer steps this rung costs in all."""
        return self.n_trials * self.new_steps


def survivors(n: int, eta: int = 3) -> int:
    """How many of n trials go on to the next rung: floor(n / eta), at least 1 when n >= 1."""
    if n < 1:
        return 0
    return max(1, n // eta)


def successive_halving(n_configs: int, eta: int = 3, min_steps: int = 100,
                       max_steps: int | None = None) -> list[Rung]:
    """Rungs of synchronous successive halving for `n_configs` configurations.

    Rung i: floor(n_configs / eta^i) trials, each trained to min_steps * eta^i steps in total.
    Stops when one trial is left or the next rung's budget would exceed `max_steps`.
    """
    if n_configs < 1:
        raise AutoftError(f"the search needs at least 1 configuration, got {n_configs}",
                          "pass --search-trials 1 or more")
    if eta < 2:
        raise AutoftError(f"the reduction factor must be at least 2, got {eta}", "pass --eta 2 or more (3 is usual)")
    if min_steps < 1:
        raise AutoftError(f"the first rung needs at least 1 step, got {min_steps}", "pass --min-steps 1 or more")
    if max_steps is not None and max_steps < min_steps:
        raise AutoftError(f"--max-steps ({max_steps}) is below --min-steps ({min_steps})",
                          "raise --max-steps or lower --min-steps")
    rungs: list[Rung] = []
    prev = 0
    i = 0
    while True:
        n_i = n_configs // eta**i
        budget = min_steps * eta**i
        if n_i < 1 or (max_steps is not None and budget > max_steps):
            break
        rungs.append(Rung(index=i, n_trials=n_i, budget_steps=budget, prev_budget_steps=prev))
        if n_i == 1:
            break
        prev = budget
        i += 1
    return rungs


def total_cost_steps(rungs: list[Rung]) -> int:
    """Optimizer steps the whole schedule costs, with survivors continuing from checkpoints."""
    return sum(r.cost_steps for r in rungs)


# The final run continues the search's winner from its last checkpoint: constant learning rate in
# the search, then linear decay to 0 (a warmup-stable-decay schedule). A decay over the last 20% of
# the steps matches a cosine schedule of the same length (Hagele et al. 2024, "Scaling Laws and
# Compute-Optimal Training Beyond Fixed Training Durations", arXiv:2405.18392), so no search rung
# may train past 80% of the final run's steps.
MIN_DECAY_FRACTION = 0.2


def search_step_cap(final_steps: int) -> int:
    """The most steps a search trial may train when the winner continues into a final run of
    `final_steps` steps: the rest, at least MIN_DECAY_FRACTION of them, is the decay."""
    return max(0, math.floor(final_steps * (1 - MIN_DECAY_FRACTION)))


def continued_cost_steps(rungs: list[Rung], final_steps: int) -> int:
    """Optimizer steps of search plus final run when the final run continues the winner (which
    trained rungs[-1].budget_steps of its steps in the search)."""
    if not rungs:
        return final_steps
    return total_cost_steps(rungs) + max(0, final_steps - rungs[-1].budget_steps)


# ---------------------------------------------------------------------------------------------
# Sampling configurations
# ---------------------------------------------------------------------------------------------

# Defaults for every hyperparameter the trainer reads; the search overwrites the sampled ones.
DEFAULT_HPARAMS: dict = {
    "learning_rate": 2e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.06,  # fraction of the run's steps; search turns it into warmup_steps
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "freeze_layers": None,
    "layer_decay": 1.0,
}

# The DEFAULT_HPARAMS keys each technique reads besides learning rate, weight decay and warmup
# (the fields of its config dataclass in autotrain/techniques/; a test keeps the two in step).
# Configurations carry only these, so that reports and trials.jsonl show what was trained.
TECHNIQUE_KNOBS: dict[str, tuple[str, ...]] = {
    "full": ("layer_decay",),
    "freeze": ("freeze_layers", "layer_decay"),
    "lora": ("lora_r", "lora_alpha", "lora_dropout"),
    "qlora": ("lora_r", "lora_alpha", "lora_dropout"),
}
COMMON_KNOBS = ("learning_rate", "weight_decay", "warmup_ratio")


def for_technique(config: dict, technique: str) -> dict:
    """`config` without the DEFAULT_HPARAMS knobs that `technique` does not use (an unknown
    technique keeps everything; keys outside DEFAULT_HPARAMS are kept)."""
    if technique not in TECHNIQUE_KNOBS:
        return dict(config)
    keep = set(COMMON_KNOBS) | set(TECHNIQUE_KNOBS[technique])
    return {k: v for k, v in config.items() if k in keep or k not in DEFAULT_HPARAMS}


# Secondary knobs in order of how much they usually matter, by technique. At most two are
# searched next to the learning rate (which dominates every sensitivity study). The model's own
# dropout (`model_dropout`, Trial sets every dropout probability of the config) is in a search
# space only where the advisor's rules put it (SEARCH-003: small data, full/freeze), and then it
# leads: the rule says overfitting is the risk to search against.
SECONDARY_PRIORITY: dict[str, tuple[str, ...]] = {
    "lora": ("lora_r", "lora_dropout", "weight_decay", "warmup_ratio", "model_dropout"),
    "qlora": ("lora_r", "lora_dropout", "weight_decay", "warmup_ratio", "model_dropout"),
    "freeze": ("model_dropout", "layer_decay", "freeze_layers", "weight_decay", "warmup_ratio"),
    "full": ("model_dropout", "weight_decay", "warmup_ratio", "layer_decay"),
}

# Names other tools (and the advisor) use for the same knobs.
ALIASES = {"lr": "learning_rate", "lora_rank": "lora_r", "rank": "lora_r", "dropout": "lora_dropout",
           "warmup": "warmup_ratio", "layerwise_lr_decay": "layer_decay", "lr_decay": "layer_decay",
           "hidden_dropout": "model_dropout"}


@dataclass(frozen=True)
class Dim:
    """One searched dimension: a numeric range (log or linear) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    is_int: bool = False


def parse_dim(name: str, spec) -> Dim | None:
    """Read one entry of a recommendation's `search_space`.

    Accepted shapes: {"low"/"min", "high"/"max", "log"?}, {"choices"/"values": [...]},
    a [low, high] pair (the learning rate only, log scale), a list of choices, or a single value
    (fixed: returns None and the value becomes the default).
    """
    name = ALIASES.get(name, name)
    if isinstance(spec, dict):
        if "choices" in spec or "values" in spec:
            ch = tuple(spec.get("choices", spec.get("values")))
            return Dim(name, choices=ch) if len(ch) > 1 else None
        low = spec.get("low", spec.get("min"))
        high = spec.get("high", spec.get("max"))
        if low is None or high is None:
            return None
        log = bool(spec.get("log", name == "learning_rate"))
        is_int = isinstance(low, int) and isinstance(high, int) and not log
        return Dim(name, float(low), float(high), log=log, is_int=is_int) if high > low else None
    if isinstance(spec, (list, tuple)):
        # the advisor's shape: a [low, high] pair of floats is a range (log for the learning
        # rate), any other list (e.g. LoRA ranks [8, 16, 64]) is a set of choices
        if len(spec) == 2 and any(isinstance(v, float) for v in spec) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
            low, high = sorted(float(v) for v in spec)
            return Dim(name, low, high, log=name == "learning_rate") if high > low else None
        return Dim(name, choices=tuple(spec)) if len(spec) > 1 else None
    return None


def _fixed_values(search_space: dict) -> dict:
    out = {}
    for k, v in search_space.items():
        k = ALIASES.get(k, k)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) == 1:
            out[k] = v[0]
        elif isinstance(v, dict) and len(v.get("choices", v.get("values", [0, 0]))) == 1:
            out[k] = list(v.get("choices", v.get("values")))[0]
    return out


def search_dims(search_space: dict, technique: str = "lora", max_secondary: int = 2) -> list[Dim]:
    """The learning rate plus up to `max_secondary` secondary knobs present in `search_space`."""
    parsed = {}
    for k, v in (search_space or {}).items():
        d = parse_dim(k, v)
        if d is not None:
            parsed[d.name] = d
    if "learning_rate" not in parsed:
        raise AutoftError("the search space has no learning-rate range",
                          "give search_space.learning_rate as {low, high} in the recommendation")
    dims = [parsed["learning_rate"]]
    for name in SECONDARY_PRIORITY.get(technique, SECONDARY_PRIORITY["full"]):
        if len(dims) > max_secondary:
            break
        if name in parsed:
            dims.append(parsed[name])
    return dims


def _stratified(rng: random.Random, n: int) -> list[float]:
    """n points in [0, 1), one in each of n equal strata, shuffled (Latin hypercube in 1-D):
    still uniform per point, but with small n no region of the range is left empty."""
    pts = [(i + rng.random()) / n for i in range(n)]
    rng.shuffle(pts)
    return pts


def _value(dim: Dim, u: float):
    if dim.choices is not None:
        return dim.choices[min(int(u * len(dim.choices)), len(dim.choices) - 1)]
    if dim.log:
        v = math.exp(math.log(dim.low) + u * (math.log(dim.high) - math.log(dim.low)))
    else:
        v = dim.low + u * (dim.high - dim.low)
    if dim.is_int:
        return int(round(v))
    return float(f"{v:.3g}")  # 3 significant digits: readable configs, no false precision


def sample_configs(search_space: dict, n: int, seed: int = 0, technique: str = "lora",
                   max_secondary: int = 2, base: dict | None = None) -> list[dict]:
    """n hyperparameter dicts sampled from `search_space`, reproducible for a seed.

    The learning rate is log-uniform (stratified so that n points cover its range); up to two
    secondary knobs (by technique priority) are sampled the same way, independently shuffled.
    Every dict has the keys of DEFAULT_HPARAMS that the technique uses (`for_technique`; values
    from `base` where given, e.g. the recommendation's LoRA rank or frozen layers); LoRA alpha
    follows a sampled rank (alpha = 2r).
    """
    if n < 1:
        raise AutoftError(f"need at least 1 configuration, got {n}", "pass --search-trials 1 or more")
    rng = random.Random(f"autoft-search-{seed}")
    dims = search_dims(search_space, technique, max_secondary)
    base = {**DEFAULT_HPARAMS, **(base or {}), **_fixed_values(search_space or {})}
    columns = {d.name: [_value(d, u) for u in _stratified(rng, n)] for d in dims}
    configs = []
    for i in range(n):
        cfg = dict(base)
        for name, vals in columns.items():
            cfg[name] = vals[i]
        if "lora_r" in columns:
            cfg["lora_alpha"] = 2 * int(cfg["lora_r"])
        configs.append(for_technique(cfg, technique))
    return configs


def trial_hparams(config: dict, warmup: int) -> dict:
    """The Trial's hyperparameters for a configuration: its warmup as steps, not a ratio (a ratio
    of which run? the search's rungs and the final run differ in length)."""
    hparams = {k: v for k, v in config.items() if k != "warmup_ratio"}
    hparams["warmup_steps"] = int(warmup)
    return hparams


def smaller_micro_batch(bs: int, accum: int) -> tuple[int, int]:
    """After an out-of-memory error: about half the micro-batch with the same effective batch
    bs x accum (the largest divisor of it not above bs // 2)."""
    eff = bs * accum
    for d in range(max(1, bs // 2), 0, -1):
        if eff % d == 0:
            return d, eff // d
    return 1, eff


def warmup_steps(warmup_ratio: float, total_steps: int, cap: int | None = None) -> int:
    """Warmup in optimizer steps for a run of `total_steps`; kept below `cap` when given (the
    search keeps warmup inside the first rung)."""
    w = int(round(max(0.0, warmup_ratio) * total_steps))
    if cap is not None:
        w = min(w, max(0, cap - 1))
    return w


def parse_duration(text: str | int | float | None) -> float | None:
    """'30m', '2h', '90s', '1h30m' or a number of seconds -> seconds (None stays None)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    try:
        return float(s)
    except ValueError:
        pass
    total, num = 0.0, ""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    for ch in s:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        else:
            raise AutoftError(f"cannot read the duration {text!r}", "write it like 30m, 2h, 1h30m or 90s")
    if num:
        raise AutoftError(f"cannot read the duration {text!r}", "give a unit: 30m, 2h, 1h30m or 90s")
    return total
