"""autoft: what to fine-tune, how, and whether it fits, before any GPU time is spent.

Keep this module light: `autoft --help` must not import torch, transformers or textual.
"""
import os as _os

__version__ = "0.1.0"

# In a source checkout advisor/, autotrain/ and rules/ sit beside this folder (the repository
# layout); in an installed wheel they sit inside it. Searching the checkout's root too makes
# `import autoft.advisor` work the same way in both, also when running from the checkout.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "advisor")) and _os.path.isfile(
    _os.path.join(_root, "advisor", "__init__.py")
):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
