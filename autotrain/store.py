"""Persistence of the search: one JSON line per finished trial-rung in `trials.jsonl`.

Why JSONL and not SQLite: a run has tens of records, written by one process; an append of one
line followed by fsync is atomic enough (a power cut can at worst leave a truncated last line,
which `load` skips), the file is readable with `cat`/`jq`/pandas, it is the output the user keeps
anyway, and it needs no schema migrations. SQLite would buy concurrent writers, which synchronous
successive halving in one process does not have.

A record: {"trial": 3, "rung": 1, "config": {...}, "steps": 300, "metric": 0.81,
"metric_name": "accuracy", "higher_is_better": true, "eval": {...}, "seconds": 41.2,
"status": "ok" | "oom-retried" | "failed-nan" | "failed-oom", "batch_size": 8, "grad_accum": 2,
"checkpoint": "checkpoints/trial-03/rung-1" | null, "started_at": 1795752000.0, "finished_at": 1795752041.2
(Unix seconds), "time": "2026-11-22T04:00:00Z"}; the ray backend adds "worker" (host:pid),
"ray_trial_id" and "ray_checkpoint" (where Ray's storage keeps that checkpoint).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

OK_STATUSES = ("ok", "oom-retried")
FAILED_STATUSES = ("failed-nan", "failed-oom")


class TrialStore:
    """Append-only log of finished trial-rungs, reloaded on `--resume`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict] = self.load(self.path)

    @staticmethod
    def load(path: str | os.PathLike) -> list[dict]:
        path = Path(path)
        if not path.exists():
            return []
        out = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    # a line cut short by a crash mid-write: that trial-rung did not finish
                    continue
        return out

    def append(self, record: dict) -> dict:
        record = dict(record)
        record.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        line = json.dumps(record, sort_keys=True, default=_json_default)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a crash may have left a truncated last line without "\n": start on a fresh line
        needs_nl = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if needs_nl else "") + line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        return record

    def get(self, trial: int, rung: int) -> dict | None:
        """The record of one trial-rung (the last one written, if a crash duplicated it)."""
        found = None
        for r in self.records:
            if r.get("trial") == trial and r.get("rung") == rung:
                found = r
        return found

    def finished(self) -> set[tuple[int, int]]:
        return {(r["trial"], r["rung"]) for r in self.records if "trial" in r and "rung" in r}

    def search_seconds(self) -> float:
        return float(sum(r.get("seconds") or 0.0 for r in self.records))


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _json_default(o):
    try:
        import numpy as np  # noqa: PLC0415

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temp file, fsync, rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
