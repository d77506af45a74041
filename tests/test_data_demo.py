"""The built-in demo data (a CC BY 4.0 slice of banking77) and the demo model lookup."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from autoft.autotrain import demo
from autoft.autotrain.data import build_profile, load_data
from autoft.errors import AutoftError


def test_demo_data_loads_balanced_with_all_splits():
    path = demo.demo_data_path()
    assert (path / "README.md").read_text().count("CC BY 4.0") >= 1
    assert "Casanueva" in (path / "README.md").read_text()
    b = load_data(path)
    assert b.task == "classification" and len(b.label_names) == 10
    assert not any("cut" in n for n in b.notes), "all three splits ship with the demo"
    for split, per in (("train", 60), ("validation", 15), ("test", 30)):
        assert set(Counter(r["label"] for r in b.splits[split]).values()) == {per}
    p = build_profile(b)
    assert p.train_test_overlap == 0 and p.duplicates_train == 0 and p.language == "en"
    assert p.warnings == []


def test_demo_rows_come_from_banking77():
    src = Path("/work/shared/data/banking77")
    if not src.is_dir():
        pytest.skip("shared banking77 not present")
    source = load_data(src)
    pool = {(r["text"], r["label"]) for s in source.splits.values() for r in s}
    b = load_data(demo.demo_data_path())
    assert all((r["text"], r["label"]) in pool for s in b.splits.values() for r in s)


def test_make_demo_regenerates_the_same_files(tmp_path):
    src = Path("/work/shared/data/banking77")
    if not src.is_dir():
        pytest.skip("shared banking77 not present")
    script = Path(demo.__file__).parent / "demo_data" / "make_demo.py"
    # run a copy so the shipped files are not touched
    (tmp_path / "make_demo.py").write_text(script.read_text())
    subprocess.run([sys.executable, str(tmp_path / "make_demo.py"), str(src)], check=True, capture_output=True)
    for name in ("train.csv", "validation.csv", "test.csv"):
        assert (tmp_path / name).read_bytes() == (demo.demo_data_path() / name).read_bytes(), name


def test_demo_model_path_found_without_importing():
    if importlib.util.find_spec(demo.DEMO_MODEL_PACKAGE) is None:
        pytest.skip("demo model package not installed")
    folder = Path(demo.demo_model_path())
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert demo.DEMO_MODEL_PACKAGE not in sys.modules


def test_demo_model_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(demo, "DEMO_MODEL_PACKAGE", "no_such_package_autoft_test")
    with pytest.raises(AutoftError, match=r"demo model is not installed; pip install 'autoft\[demo\]'"):
        demo.demo_model_path()
