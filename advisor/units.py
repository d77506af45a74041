"""Memory sizes with units. A number always carries its unit."""
from __future__ import annotations

import re

from autoft.errors import AutoftError

GIB = 1024**3
MIB = 1024**2

_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, default_unit: str = "gib") -> int:
    """'24GiB' -> bytes. A bare number is read in `default_unit` (GiB). GB is 10^9, GiB 2^30."""
    if isinstance(text, (int, float)):
        return int(float(text) * _UNITS[default_unit])
    m = _SIZE_RE.match(str(text))
    unit = (m.group(2) or default_unit).lower() if m else ""
    if not m or unit not in _UNITS:
        raise AutoftError(
            f"cannot read the memory size {text!r}",
            "write a number with a unit, such as 24GiB, 16GB or 80G",
        )
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise AutoftError(f"memory size {text!r} must be positive", "give a size such as 24GiB")
    return int(value)


def gib(n_bytes: float) -> float:
    return n_bytes / GIB


def fmt_gib(n_bytes: float, digits: int = 2) -> str:
    return f"{n_bytes / GIB:.{digits}f} GiB"


def fmt_params(n: float) -> str:
    """22_700_000 -> '22.7M', 7_240_000_000 -> '7.24B'."""
    if n >= 1e9:
        return f"{n / 1e9:.3g}B"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}K"
