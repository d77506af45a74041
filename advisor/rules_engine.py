"""A small rules engine: recommendation rules are data rows (rules/advice.toml), not code.

Each rule has an `id`, a `when` expression over named facts, a `then` table of effects, a `because`
sentence shown to the user (with `{fact}` placeholders), a `source`, and its own test `cases`.
The expression language is a safe subset of Python expressions, checked at load time with `ast`
and compiled to closures (never `eval`):

    comparisons (== != < <= > >=, chained), in / not in, and / or / not, + - * / // %,
    numbers (1e9, 0.5), strings, lists, true/false/none, and fact names.

An unknown fact (None) makes every ordering comparison and `in` false (so `data_size < 1000` does
not fire when the data size is unknown); `==`/`!=` compare with none normally.

Rules run in four stages (docs in rules/README.md); a rule's stage follows from its effects:
  model      one candidate model:         reject, score
  setup      one (model, technique) pair: precision, optimizer, lr_range, lora_*, batch targets, ...
  technique  one model, after fit checks: forbid_technique, prefer_technique
  strategy   one (model, technique) pair on several GPUs/processes, after the per-GPU fit checks:
             strategy (ddp or fsdp)
"""
from __future__ import annotations

import ast
import math
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from autoft.advisor.spec import OPTIMIZERS, PRECISIONS, TECHNIQUES
from autoft.errors import AutoftError

STAGES = ("model", "setup", "technique", "strategy")


class RuleError(AutoftError):
    """A rules file that cannot be loaded (bad expression, unknown fact or effect)."""


# -- effect kinds: each validates a value from TOML and says which stage it belongs to -----------

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_range(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v) and v[0] <= v[1]


def _check_num_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_num(x) for x in v)


def _check_techniques(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(t in TECHNIQUES for t in v)


# name -> (stage or "any", validator, one-line doc). The engine knows no other effect.
EFFECTS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "reject": ("model", lambda v: v is True, "drop this candidate model (true)"),
    "score": ("model", _is_num, "add this number to the candidate model's rank score"),
    "precision": ("setup", lambda v: v in PRECISIONS, "bf16 | fp16 | fp32"),
    "optimizer": ("setup", lambda v: v in OPTIMIZERS, "adamw | adamw-8bit | paged-adamw-8bit"),
    "gradient_checkpointing": ("setup", lambda v: isinstance(v, bool),
                               "start with checkpointing on/off (it is turned on anyway when "
                               "needed to fit)"),
    "effective_batch": ("setup", lambda v: _check_range(v) and v[0] >= 1,
                        "[lo, hi] examples per optimizer step to reach with accumulation"),
    "speed_margin": ("setup", lambda v: _is_num(v) and 0 <= v < 1,
                     "pick micro-batch and checkpointing by predicted examples per second; another "
                     "setting must be predicted this share faster than the largest micro-batch "
                     "without checkpointing"),
    "max_micro_batch": ("setup", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                        "cap on the micro-batch even when more fits"),
    "lr_range": ("setup", lambda v: _check_range(v) and v[0] > 0, "[lo, hi] learning rate to search"),
    "lora_r": ("setup", lambda v: isinstance(v, int) and v >= 1, "LoRA rank"),
    "lora_alpha_ratio": ("setup", lambda v: _is_num(v) and v > 0, "LoRA alpha = ratio x rank"),
    "lora_dropout": ("setup", lambda v: _is_num(v) and 0 <= v < 1, "LoRA dropout"),
    "lora_targets": ("setup", lambda v: v == "all-linear" or (
        isinstance(v, list) and v and all(isinstance(x, str) for x in v)),
        "module names LoRA adapts, or \"all-linear\""),
    "freeze_fraction": ("setup", lambda v: _is_num(v) and 0 <= v < 1,
                        "freeze: share of the bottom layers kept frozen"),
    "search_lora_rank": ("setup", _check_num_list, "LoRA ranks the search tries (choices)"),
    "search_lora_dropout": ("setup", _check_num_list, "LoRA dropouts the search tries (choices)"),
    "search_weight_decay": ("setup", _check_range, "[lo, hi] weight decay to search"),
    "search_warmup_ratio": ("setup", _check_range, "[lo, hi] warmup ratio to search"),
    "search_layer_decay": ("setup", _check_range, "[lo, hi] layer-wise learning-rate decay to search"),
    "search_model_dropout": ("setup", lambda v: _check_num_list(v) and all(0 <= x < 1 for x in v),
                             "the model's own dropout probabilities the search tries (choices)"),
    "class_weights": ("setup", lambda v: v in ("balanced", "none"),
                      "classification loss weighting: balanced | none"),
    "metric": ("setup", lambda v: v in ("accuracy", "macro_f1", "micro_f1", "loss", "eval_loss"),
               "validation metric the search ranks by: accuracy | macro_f1 | micro_f1 | loss | eval_loss"),
    "forbid_technique": ("technique", _check_techniques, "techniques never chosen for this model"),
    "prefer_technique": ("technique", _check_techniques,
                         "techniques to try first, in order (the first that fits wins)"),
    "strategy": ("strategy", lambda v: v in ("ddp", "fsdp"),
                 "ddp (a full replica per GPU) | fsdp (weights, gradients and optimizer states sharded)"),
    "warn": ("any", lambda v: v is True, "show `because` as a warning (true)"),
}

# Effects where every firing rule counts; for all others the first firing rule wins.
ACCUMULATING = {"score", "reject", "forbid_technique", "prefer_technique", "warn"}


# -- the expression compiler ----------------------------------------------------------------------

_CONSTS = {"true": True, "false": False, "none": None, "True": True, "False": False, "None": None}
_ORDER_OPS = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
              ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b}
_BIN_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
            ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b,
            ast.Mod: lambda a, b: a % b}

Facts = dict[str, Any]
Expr = Callable[[Facts], Any]


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    if isinstance(op, ast.Eq):
        return a == b
    if isinstance(op, ast.NotEq):
        return a != b
    if a is None or b is None:  # unknown fact: ordering and membership are false
        return False
    if isinstance(op, ast.In):
        return a in b
    if isinstance(op, ast.NotIn):
        return a not in b
    return _ORDER_OPS[type(op)](a, b)


def compile_expr(text: str, known_names: set[str] | None = None) -> tuple[Expr, set[str]]:
    """Compile one `when` expression; returns (function of facts, fact names it reads).

    Raises RuleError for syntax outside the subset, or (when known_names is given) an unknown name.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise RuleError(f"cannot parse {text!r}: {err.msg}", "write a Python-style boolean expression") from None
    names: set[str] = set()

    def bad(node: ast.AST) -> RuleError:
        what = type(node).__name__
        return RuleError(f"{text!r}: {what} is not allowed in a rule expression",
                         "use comparisons, and/or/not, in, arithmetic, numbers, strings, lists and fact names")

    def c(node: ast.AST) -> Expr:
        if isinstance(node, ast.BoolOp):
            parts = [c(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda f: all(p(f) for p in parts)
            return lambda f: any(p(f) for p in parts)
        if isinstance(node, ast.UnaryOp):
            inner = c(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda f: not inner(f)
            if isinstance(node.op, ast.USub):
                return lambda f: None if (v := inner(f)) is None else -v
            if isinstance(node.op, ast.UAdd):
                return inner
            raise bad(node.op)
        if isinstance(node, ast.Compare):
            left = c(node.left)
            pairs = [(op, c(r)) for op, r in zip(node.ops, node.comparators)]
            for op, _ in pairs:
                if not isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, *_ORDER_OPS)):
                    raise bad(op)  # `is`, `is not`

            def cmp(f: Facts) -> bool:
                a = left(f)
                for op, right in pairs:
                    b = right(f)
                    if not _compare(op, a, b):
                        return False
                    a = b
                return True
            return cmp
        if isinstance(node, ast.BinOp):
            fn = _BIN_OPS.get(type(node.op))
            if fn is None:
                raise bad(node.op)
            lf, rf = c(node.left), c(node.right)

            def binop(f: Facts) -> Any:
                a, b = lf(f), rf(f)
                return None if a is None or b is None else fn(a, b)
            return binop
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool)) and node.value is not None:
                raise bad(node)
            v = node.value
            return lambda f: v
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [c(e) for e in node.elts]
            return lambda f: [i(f) for i in items]
        if isinstance(node, ast.Name):
            if node.id in _CONSTS:
                v = _CONSTS[node.id]
                return lambda f: v
            if known_names is not None and node.id not in known_names:
                raise RuleError(f"{text!r}: unknown fact {node.id!r}",
                                "use a fact listed in [facts] of the rules file")
            names.add(node.id)
            key = node.id
            return lambda f: f.get(key)
        raise bad(node)

    return c(tree.body), names


# -- `because` text with {fact} placeholders --------------------------------------------------------

class _Formatter(string.Formatter):
    """{fact} and {fact:spec}; numbers without a spec print short (7.24e+09 -> 7.24e9 style is
    avoided: floats get 3 significant digits, ints thousands separators), None prints 'unknown'."""

    def format_field(self, value: Any, spec: str) -> str:
        if value is None:
            return "unknown"
        if spec:
            return format(value, spec)
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
                return f"{value:.3g}"
            return f"{value:.3g}" if not value.is_integer() else f"{int(value):,}"
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return str(value)


_FMT = _Formatter()


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in _FMT.parse(text) if name}


def render(text: str, facts: Facts) -> str:
    return _FMT.vformat(text, (), _Missing(facts))


class _Missing(dict):
    def __init__(self, facts: Facts):
        super().__init__(facts)

    def __missing__(self, key: str) -> None:
        return None


# -- rules --------------------------------------------------------------------------------------

@dataclass
class Rule:
    id: str
    when: str
    then: dict[str, Any]
    because: str
    source: str
    stage: str
    cases: list[dict] = field(default_factory=list)
    names: set[str] = field(default_factory=set)  # facts read by `when`
    test: Expr = field(default=lambda f: False, repr=False)

    def fires(self, facts: Facts) -> bool:
        try:
            return bool(self.test(facts))
        except TypeError as err:  # e.g. comparing a string with a number
            raise RuleError(f"rule {self.id}: {self.when!r} failed on the facts given: {err}",
                            "fix the rule's expression or the facts' types") from None

    def reason(self, facts: Facts) -> dict:
        """{rule, because, facts}: the sentence with its facts filled in, and the facts it read."""
        used = sorted(self.names | placeholders(self.because))
        return {"rule": self.id, "because": render(self.because, facts),
                "facts": {k: facts.get(k) for k in used}}


@dataclass
class Firing:
    rule: Rule
    facts: Facts

    def reason(self) -> dict:
        return self.rule.reason(self.facts)


@dataclass
class Outcome:
    """What the rules of one stage decided for one set of facts."""

    firings: list[Firing]
    values: dict[str, Any]  # single-valued effects: first firing rule wins
    by: dict[str, Firing]  # effect -> the firing that set it
    score: float = 0.0
    rejected: list[Firing] = field(default_factory=list)
    forbid: dict[str, Firing] = field(default_factory=dict)  # technique -> firing
    prefer: list[tuple[str, Firing]] = field(default_factory=list)
    warnings: list[Firing] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def reason_for(self, key: str) -> list[dict]:
        f = self.by.get(key)
        return [f.reason()] if f else []


@dataclass
class FactDoc:
    name: str
    type: str  # str | number | bool | list
    doc: str
    stages: tuple[str, ...] = STAGES


class RuleSet:
    def __init__(self, rules: list[Rule], facts: dict[str, FactDoc]):
        self.rules = rules
        self.facts = facts
        self._by_stage = {s: [r for r in rules if r.stage == s] for s in STAGES}

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def run(self, stage: str, facts: Facts) -> Outcome:
        out = Outcome(firings=[], values={}, by={})
        for rule in self._by_stage[stage]:
            if not rule.fires(facts):
                continue
            firing = Firing(rule, facts)
            out.firings.append(firing)
            for key, value in rule.then.items():
                if key not in ACCUMULATING:
                    if key not in out.values:  # first firing rule wins
                        out.values[key] = value
                        out.by[key] = firing
                elif key == "score":
                    out.score += value
                elif key == "reject":
                    out.rejected.append(firing)
                elif key == "warn":
                    out.warnings.append(firing)
                elif key == "forbid_technique":
                    for t in value:
                        out.forbid.setdefault(t, firing)
                elif key == "prefer_technique":
                    out.prefer.extend((t, firing) for t in value)
        return out


def _stage_of(rule_id: str, then: dict, explicit: str | None) -> str:
    stages = {EFFECTS[k][0] for k in then} - {"any"}
    if explicit is not None:
        if explicit not in STAGES:
            raise RuleError(f"rule {rule_id}: unknown stage {explicit!r}", "use " + ", ".join(STAGES))
        stages.add(explicit)
    if len(stages) > 1:
        raise RuleError(f"rule {rule_id}: effects {sorted(then)} belong to different stages {sorted(stages)}",
                        "split it into one rule per stage")
    if not stages:
        raise RuleError(f"rule {rule_id}: only `warn`, so its stage is unknown", "add stage = \"setup\" (or model, technique)")
    return stages.pop()


def parse_rules(data: dict, origin: str = "rules") -> RuleSet:
    """Validate and compile a parsed rules file ({facts: {...}, rule: [...]})."""
    facts: dict[str, FactDoc] = {}
    for name, d in (data.get("facts") or {}).items():
        if not isinstance(d, dict) or "doc" not in d or "type" not in d:
            raise RuleError(f"{origin}: fact {name!r} needs a type and a doc", "see rules/README.md")
        st = tuple(d.get("stages", STAGES))
        if any(s not in STAGES for s in st):
            raise RuleError(f"{origin}: fact {name!r} has an unknown stage in {st}", "use " + ", ".join(STAGES))
        facts[name] = FactDoc(name, d["type"], d["doc"], st)
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("rule") or []):
        rid = raw.get("id") or f"#{i + 1}"
        for key in ("id", "when", "then", "because", "source"):
            if key not in raw:
                raise RuleError(f"{origin}: rule {rid} has no `{key}`", "see rules/README.md")
        unknown = set(raw) - {"id", "when", "then", "because", "source", "cases", "stage"}
        if unknown:
            raise RuleError(f"{origin}: rule {rid} has unknown keys {sorted(unknown)}", "see rules/README.md")
        if rid in seen:
            raise RuleError(f"{origin}: duplicate rule id {rid}", "give every rule its own id")
        seen.add(rid)
        then = raw["then"]
        if not isinstance(then, dict) or not then:
            raise RuleError(f"{origin}: rule {rid}: `then` must be a non-empty table", "e.g. then = { precision = \"bf16\" }")
        for k, v in then.items():
            if k not in EFFECTS:
                raise RuleError(f"{origin}: rule {rid}: unknown effect {k!r}", "known effects: " + ", ".join(EFFECTS))
            if not EFFECTS[k][1](v):
                raise RuleError(f"{origin}: rule {rid}: bad value {v!r} for {k}", EFFECTS[k][2])
        stage = _stage_of(rid, then, raw.get("stage"))
        avail = {n for n, fd in facts.items() if stage in fd.stages}
        try:
            test, names = compile_expr(str(raw["when"]), avail)
        except RuleError as err:
            raise RuleError(f"{origin}: rule {rid} ({stage} stage): {err.what}", err.fix) from None
        for p in placeholders(raw["because"]):
            if p not in avail:
                raise RuleError(f"{origin}: rule {rid}: `because` uses {{{p}}}, not a fact of the {stage} stage",
                                "use a fact listed in [facts]")
        rules.append(Rule(id=rid, when=str(raw["when"]), then=dict(then), because=raw["because"],
                          source=raw["source"], stage=stage, cases=list(raw.get("cases") or []),
                          names=names, test=test))
    return RuleSet(rules, facts)


@lru_cache(maxsize=4)
def load_rules(name: str = "advice.toml") -> RuleSet:
    """The rules of rules/<name>, compiled once per process."""
    from autoft.rules import load_toml

    return parse_rules(load_toml(name), origin=f"rules/{name}")


def case_facts(case: dict) -> Facts:
    """A test case's facts (a TOML table; missing facts read as unknown)."""
    return dict(case.get("facts") or {})


def nice(x: float) -> float:
    """Round a float for display in facts (3 significant digits)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, -int(math.floor(math.log10(abs(x)))) + 2)
