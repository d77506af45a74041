"""The recommendation rules (rules/advice.toml): one generic runner for every rule's own test
cases, meta-tests over the rules file, and the expression evaluator's safety."""
from __future__ import annotations

import pytest

from autoft.advisor.rules_engine import (ACCUMULATING, EFFECTS, STAGES, RuleError, case_facts, compile_expr,
                                         load_rules, parse_rules, placeholders, render)
from autoft.rules import load_toml

RULES = load_rules()
RAW = load_toml("advice.toml")
CASES = [(r.id, i, case) for r in RULES.rules for i, case in enumerate(r.cases)]


# -- the generic runner: every rule's cases ---------------------------------------------------------

@pytest.mark.parametrize("rule_id,n,case", CASES, ids=[f"{rid}-case{n}" for rid, n, _ in CASES])
def test_rule_case(rule_id: str, n: int, case: dict) -> None:
    rule = RULES.get(rule_id)
    facts = case_facts(case)
    assert set(facts) <= set(RULES.facts), f"{rule_id} case {n} uses undocumented facts {set(facts) - set(RULES.facts)}"
    assert rule.fires(facts) is case["fires"], f"{rule_id}: when = {rule.when!r} on {facts}"
    expect = case.get("expect") or {}
    if "because" in expect:
        assert expect["because"] in rule.reason(facts)["because"]
    for key, value in expect.items():
        if key != "because":
            assert rule.then.get(key) == value


# -- meta-tests -------------------------------------------------------------------------------------

def test_ids_unique_and_well_formed() -> None:
    ids = [r["id"] for r in RAW["rule"]]
    assert len(ids) == len(set(ids))
    for rid in ids:
        prefix, _, num = rid.partition("-")
        assert prefix.isupper() and num.isdigit() and len(num) == 3, rid


@pytest.mark.parametrize("rule", RULES.rules, ids=lambda r: r.id)
def test_rule_is_complete(rule) -> None:
    assert rule.because.strip() and rule.source.strip()
    fires = [c for c in rule.cases if c["fires"]]
    misses = [c for c in rule.cases if not c["fires"]]
    assert fires, f"{rule.id} has no firing case"
    # `when = "true"` defaults cannot have a non-firing case; every other rule must have one.
    if rule.when.strip() != "true":
        assert misses, f"{rule.id} has no non-firing case"
    for key in rule.then:
        assert key in EFFECTS
    assert rule.stage in STAGES


def test_every_fact_used_is_documented() -> None:
    for rule in RULES.rules:
        assert rule.names <= set(RULES.facts), rule.id
        assert placeholders(rule.because) <= set(RULES.facts), rule.id
    for fact in RULES.facts.values():
        assert fact.doc.strip() and fact.type in ("str", "number", "bool", "list")


def test_every_effect_is_used_or_documented() -> None:
    used = {k for r in RULES.rules for k in r.then}
    # every effect the engine knows is exercised by at least one rule, so none is dead code
    assert used == set(EFFECTS)


def test_defaults_come_last_in_their_stage() -> None:
    """First firing rule wins: an unconditional rule must follow every rule that sets the same effect."""
    for stage in STAGES:
        rules = [r for r in RULES.rules if r.stage == stage]
        for i, r in enumerate(rules):
            if r.when.strip() != "true":
                continue
            for later in rules[i + 1:]:
                shared = set(r.then) & set(later.then) - ACCUMULATING
                assert not shared, f"{later.id} can never set {shared}: {r.id} (when = true) comes first"


def test_readme_lists_every_effect() -> None:
    from autoft.rules import RULES_DIR

    text = (RULES_DIR / "README.md").read_text()
    for key in EFFECTS:
        assert f"`{key}`" in text, key


# -- the engine --------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,facts,want", [
    ("data_size < 1000", {"data_size": 500}, True),
    ("data_size < 1000", {"data_size": None}, False),  # unknown never satisfies an ordering
    ("not data_size < 1000", {}, True),
    ("data_size == none", {}, True),
    ('"de" in languages', {"languages": ["en", "de"]}, True),
    ('"de" not in languages', {"languages": ["en"]}, True),
    ('language in ["de", "fr"]', {"language": "en"}, False),
    ("params_b * 2.5 <= memory_gib", {"params_b": 7.0, "memory_gib": 15.0}, False),
    ("1 < x <= 3", {"x": 3}, True),
    ("1 < x <= 3", {"x": 4}, False),
    ("a or b and not c", {"a": False, "b": True, "c": False}, True),
    ("-x > -5", {"x": 4}, True),
    ("x % 2 == 0 and x // 2 == 3", {"x": 6}, True),
    ("true", {}, True),
    ("x + 1 > 2", {}, False),  # arithmetic on unknown stays unknown
])
def test_expressions(expr: str, facts: dict, want: bool) -> None:
    fn, _ = compile_expr(expr)
    assert bool(fn(facts)) is want


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')",
    "x.__class__",
    "open('f')",
    "[i for i in x]",
    "lambda: 1",
    "x if y else z",
    "x[0]",
    "x is None",
    "x ** 2",
    "f'{x}'",
    "x = 1",
    "x and",
])
def test_unsafe_or_unsupported_expressions_fail_at_load(expr: str) -> None:
    with pytest.raises(RuleError):
        compile_expr(expr)


def _one_rule(**over) -> dict:
    rule = {"id": "T-001", "when": "data_size < 10", "then": {"precision": "bf16"}, "because": "b",
            "source": "s", "cases": []}
    rule.update(over)
    return {"facts": {"data_size": {"type": "number", "doc": "d"}}, "rule": [rule]}


@pytest.mark.parametrize("over,msg", [
    ({"when": "mystery > 1"}, "unknown fact"),
    ({"then": {"colour": "red"}}, "unknown effect"),
    ({"then": {"precision": "fp8"}}, "bad value"),
    ({"then": {"lr_range": [1e-3, 1e-5]}}, "bad value"),
    ({"then": {"precision": "bf16", "score": 1}}, "different stages"),
    ({"because": "about {mystery}"}, "not a fact"),
    ({"extra": 1}, "unknown keys"),
])
def test_bad_rules_are_refused(over: dict, msg: str) -> None:
    with pytest.raises(RuleError, match=msg):
        parse_rules(_one_rule(**over))


def test_missing_key_and_duplicate_id() -> None:
    data = _one_rule()
    del data["rule"][0]["source"]
    with pytest.raises(RuleError, match="no `source`"):
        parse_rules(data)
    data = _one_rule()
    data["rule"].append(dict(data["rule"][0]))
    with pytest.raises(RuleError, match="duplicate"):
        parse_rules(data)


def test_fact_limited_to_its_stage() -> None:
    data = _one_rule(when="fits_lora")
    data["facts"]["fits_lora"] = {"type": "bool", "doc": "d", "stages": ["technique"]}
    with pytest.raises(RuleError, match="unknown fact"):  # precision is a setup-stage effect
        parse_rules(data)


def test_first_firing_rule_wins_and_scores_add() -> None:
    data = {
        "facts": {"x": {"type": "number", "doc": "d"}},
        "rule": [
            {"id": "A-001", "when": "x > 5", "then": {"precision": "fp16"}, "because": "a", "source": "s"},
            {"id": "A-002", "when": "true", "then": {"precision": "bf16"}, "because": "b", "source": "s"},
            {"id": "B-001", "when": "x > 1", "then": {"score": 2}, "because": "c", "source": "s"},
            {"id": "B-002", "when": "x > 2", "then": {"score": -0.5}, "because": "d", "source": "s"},
        ],
    }
    rs = parse_rules(data)
    out = rs.run("setup", {"x": 9})
    assert out.values["precision"] == "fp16" and out.by["precision"].rule.id == "A-001"
    assert rs.run("setup", {"x": 1}).values["precision"] == "bf16"
    assert rs.run("model", {"x": 3}).score == 1.5
    assert rs.run("model", {"x": 0}).score == 0


def test_render_fills_facts_and_formats_numbers() -> None:
    text = render("{data_size} examples, {params_b:.1f}B, {gpu_name}, {languages}",
                  {"data_size": 12000, "params_b": 7.24, "languages": ["en", "de"]})
    assert text == "12,000 examples, 7.2B, unknown, en, de"


def test_reason_carries_the_facts_it_read() -> None:
    r = RULES.get("TECH-001").reason({"data_size": 800, "params": 7e9, "params_b": 7.0, "task": "x"})
    assert r["rule"] == "TECH-001" and "800" in r["because"]
    assert r["facts"] == {"data_size": 800, "params": 7e9, "params_b": 7.0}
