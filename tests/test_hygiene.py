"""The advisor core answers instantly because it never imports torch, transformers or textual.
Checked in a fresh interpreter, through sys.modules, so nothing this test process imported leaks in."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "textual", "peft", "bitsandbytes", "datasets", "huggingface_hub")
ROOT = Path(__file__).resolve().parents[1]


def _heavy_modules_after(code: str) -> list[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _advisor_modules() -> list[str]:
    import autoft.advisor as adv

    return sorted(f"autoft.advisor.{m.name}" for m in pkgutil.iter_modules(adv.__path__))


def test_advisor_modules_are_found():
    mods = _advisor_modules()
    assert "autoft.advisor.spec" in mods and "autoft.advisor.question" in mods


@pytest.mark.parametrize("module", _advisor_modules())
def test_advisor_core_imports_no_heavy_library(module):
    assert _heavy_modules_after(f"import {module}") == []


def test_help_imports_no_heavy_library():
    code = "from autoft.cli import build_parser\nbuild_parser().format_help()\n" + "\n".join(
        f"from autoft.cli import _load\n_load({name!r})" for name in ("run", "advise", "estimate", "probe", "tui"))
    assert _heavy_modules_after(code) == []


def test_autoft_help_as_a_process_imports_no_heavy_library():
    code = ("import sys, runpy\nsys.argv=['autoft','--help']\n"
            "try:\n    runpy.run_module('autoft', run_name='__main__')\nexcept SystemExit:\n    pass")
    assert _heavy_modules_after(code) == []


def test_data_layer_and_schedule_import_no_torch():
    mods = [m for m in ("autoft.autotrain.data", "autoft.autotrain.schedule")
            if (ROOT / "autotrain" / (m.split(".")[-1])).exists() or (ROOT / "autotrain" / (m.split(".")[-1] + ".py")).exists()]
    for m in mods:
        assert [x for x in _heavy_modules_after(f"import {m}") if x.split(".")[0] in ("torch", "transformers", "textual")] == [], m


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["advisor", "autotrain"])
def test_the_core_imports_neither_the_cli_nor_the_tui(folder):
    """The core is what the front ends call, never the other way round (harlequin's thin shell)."""
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in files for m in _imports(p)
           if m.startswith(("autoft.cli", "autoft.tui"))}
    assert not bad, sorted(bad)
