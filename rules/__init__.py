"""Data the advisor reads: model catalog, GPU table, recommendation rules (TOML files)."""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RULES_DIR = Path(__file__).resolve().parent


def load_toml(name: str) -> dict:
    """Read one TOML file of this folder, e.g. load_toml("gpus.toml")."""
    with open(RULES_DIR / name, "rb") as fh:
        return tomllib.load(fh)
