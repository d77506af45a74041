"""Reading raw tables from files, folders, `datasets` save_to_disk folders and the Hub.

A reader returns columns, not records: `Table = dict[column name -> list of values]`, every list
the same length. Columns are what CSV and Parquet give for free, and they let the normaliser pull
the two or three columns it needs without building a dict per row (sst2's 67k rows read in about
0.1 s with the stdlib `csv` module; pandas takes 4x as long and pyarrow's CSV reader 2x, import
included; see benchmarks/bench_data_profile.py).

Heavy libraries (pyarrow, datasets) are imported inside the function that needs them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoft.errors import DataError

Table = dict[str, list]
ARROW_MIN_BYTES = 4 * 1024 * 1024      # CSV/TSV files at least this big go through pyarrow

# file suffix -> format name
FORMATS: dict[str, str] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl",
    ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
}
SUPPORTED = "CSV (.csv), TSV (.tsv), JSON (.json), JSONL (.jsonl), Parquet (.parquet), a folder " \
            "with train/validation/test files, a datasets save_to_disk folder, or a Hub dataset id"

# file stem or split name -> canonical split
SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "development": "validation", "eval": "validation",
    "test": "test", "testing": "test",
}
_SPLIT_RE = re.compile(r"^(" + "|".join(sorted(SPLIT_NAMES, key=len, reverse=True)) + r")(?:[-_.].*)?$")
# Hub ids are `name` or `owner/name`; anything else that does not exist is a missing path.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class RawData:
    splits: dict[str, Table]           # canonical split name -> table
    format: str                        # csv, tsv, json, jsonl, parquet, folder(...), save_to_disk, hub
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.splits.values():
            seen.update(dict.fromkeys(t))
        return list(seen)


def split_of(name: str) -> str | None:
    """Canonical split for a file stem or split name (`dev` -> validation), or None."""
    m = _SPLIT_RE.match(name.lower())
    return SPLIT_NAMES[m.group(1)] if m else None


def read_source(source: str | os.PathLike) -> RawData:
    """Read any supported source into raw tables, one per split found."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        fmt = _format_of(path)
        return RawData({"train": read_file(path, fmt)}, fmt)
    if path.exists():
        raise DataError(f"{text} is neither a file nor a folder", "pass a data file or a folder")
    if _looks_like_hub_id(text):
        return _read_hub(text)
    raise DataError(f"no file or folder at {text}",
                    "check the path (relative paths start where you run autoft)")


def _looks_like_hub_id(text: str) -> bool:
    return (bool(_HUB_ID_RE.match(text)) and Path(text).suffix.lower() not in FORMATS
            and not text.startswith((".", "~")))


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"unknown data format {path.suffix or '(no suffix)'!r} for {path}",
                        f"use one of: {SUPPORTED}")
    return fmt


def read_file(path: Path, fmt: str) -> Table:
    if not os.access(path, os.R_OK):
        raise DataError(f"cannot read {path}: permission denied", "check the file's permissions (chmod +r)")
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt in ("csv", "tsv"):
        table = _read_delimited_arrow(path, "\t" if fmt == "tsv" else ",")
        if table is not None:
            return table
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}", "check the path and permissions") from None
    text = _decode(data, path)
    if fmt in ("csv", "tsv"):
        return _read_delimited(text, path, "\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return _records_to_table(_parse_jsonl(text, path), path)
    return _read_json(text, path)


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 only (a BOM is allowed); name the byte and line of the first bad byte."""
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + skip
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{path} is not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line})",
            f"re-encode it, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}",
        ) from None


def _read_delimited(text: str, path: Path, delimiter: str) -> Table:
    sep_name = "tab" if delimiter == "\t" else "comma"
    # TSV files (GLUE style) often hold bare quote characters: try RFC-4180 quoting first and,
    # for TSV only, fall back to no quoting when that gives ragged rows.
    quotings = (csv.QUOTE_MINIMAL, csv.QUOTE_NONE) if delimiter == "\t" else (csv.QUOTE_MINIMAL,)
    # the csv module's default 128 KiB field limit would reject long documents
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    for i, quoting in enumerate(quotings):
        last = i == len(quotings) - 1
        try:
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
            rows = [r for r in reader if r]
        except csv.Error as e:
            if not last:
                continue
            raise DataError(f"{path} is not valid {sep_name}-separated text at line {reader.line_num}: {e}",
                            "fix that line (fields holding the separator or quotes must be quoted)") from None
        if not rows:
            raise DataError(f"{path} is empty", "add a header line (e.g. text,label) and rows")
        header = [h.strip() for h in rows[0]]
        n = len(header)
        bad = next((j for j, r in enumerate(rows) if len(r) != n), None)
        if bad is None:
            break
        if not last:
            continue
        line = _line_of_row(text, delimiter, quoting, bad)
        raise DataError(
            f"line {line} of {path} has {len(rows[bad])} fields but the header has {n}",
            "quote fields that contain the separator, or fix that line")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path} has duplicate column names: {', '.join(dup)}", "rename them in the header")
    body = rows[1:]
    if not body:
        return {h: [] for h in header}
    return {h: list(col) for h, col in zip(header, zip(*body))}


def _read_delimited_arrow(path: Path, delimiter: str) -> Table | None:
    """Large CSV/TSV files through pyarrow's multi-threaded reader: 4x faster than the stdlib once
    imported (sst2 train: 0.045 s vs 0.17 s), but the import costs ~0.15 s, so only for big files
    or when pyarrow is loaded anyway. Any problem returns None and the stdlib reader runs, so bad
    files still get its precise messages (byte offsets, line numbers)."""
    import sys
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size < ARROW_MIN_BYTES and not (size >= 256 * 1024 and "pyarrow.csv" in sys.modules):
        return None
    try:
        import pyarrow as pa
        import pyarrow.csv as pc
        with path.open(encoding="utf-8-sig", newline="") as f:      # header only, to type all columns str
            header = next(csv.reader(f, delimiter=delimiter))
        names = [h.strip() for h in header]
        if not names or len(set(names)) != len(names):
            return None
        table = pc.read_csv(
            path, read_options=pc.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pc.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pc.ConvertOptions(column_types={n: pa.string() for n in names},
                                              strings_can_be_null=False, quoted_strings_can_be_null=False))
        return table.to_pydict()
    except Exception:       # ragged rows, bad bytes, odd quoting: the stdlib reader explains
        return None


def _line_of_row(text: str, delimiter: str, quoting: int, index: int) -> int:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    j = -1
    for r in reader:
        if r:
            j += 1
            if j == index:
                return reader.line_num
    return reader.line_num


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    records = []
    loads = json.loads
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line {n} of {path} is not valid JSON ({e.msg} at column {e.colno})",
                            "fix or remove that line; each line must be one JSON object") from None
        if not isinstance(rec, dict):
            raise DataError(f"line {n} of {path} is a JSON {type(rec).__name__}, not an object",
                            'write one object per line, e.g. {"text": "...", "label": "..."}')
        records.append(rec)
    return records


def _read_json(text: str, path: Path) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":          # JSON Lines saved as .json
            return _records_to_table(_parse_jsonl(text, path), path)
        raise DataError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
                        "fix the file, or save it as JSON Lines (.jsonl, one object per line)") from None
    if isinstance(data, dict):
        values = list(data.values())
        if len(values) == 1 and isinstance(values[0], list):       # {"data": [...]}
            data = values[0]
        elif values and all(isinstance(v, list) and not (v and isinstance(v[0], dict)) for v in values):
            # column-oriented JSON: {"text": [...], "label": [...]}
            if len({len(v) for v in values}) != 1:
                raise DataError(f"{path} holds columns of different lengths",
                                "make every column the same length")
            return {k: list(v) for k, v in data.items()}
        elif values and all(isinstance(v, list) for v in values):
            raise DataError(f"{path} holds several lists of records ({', '.join(data)})",
                            "save one list per file (train.json, validation.json, test.json) in one folder")
    if not isinstance(data, list):
        raise DataError(f"{path} holds a JSON {type(data).__name__}, not a list of records",
                        'write a list of objects, e.g. [{"text": "...", "label": "..."}]')
    bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"record {bad + 1} of {path} is a JSON {type(data[bad]).__name__}, not an object",
                        'write a list of objects, e.g. [{"text": "...", "label": "..."}]')
    return _records_to_table(data, path)


def _records_to_table(records: list[dict], path: Any) -> Table:
    cols: dict[str, None] = {}
    for r in records:
        if r.keys() - cols.keys():
            cols.update(dict.fromkeys(r))
    return {c: [r.get(c) for r in records] for c in cols}


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError("reading Parquet needs pyarrow", "pip install pyarrow") from None
    try:
        return pq.read_table(path).to_pydict()
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"cannot read {path} as Parquet: {str(e).splitlines()[0]}",
                        "check that it is a Parquet file (or give it the right suffix)") from None


def _read_folder(path: Path) -> RawData:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_save_to_disk(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    if not files and (path / "data").is_dir():          # Hub layout: data/train-00000-of-00001.parquet
        return _read_folder(path / "data")
    by_split: dict[str, list[Path]] = {}
    for p in files:
        s = split_of(p.stem)
        if s:
            by_split.setdefault(s, []).append(p)
    if not by_split and len(files) == 1:
        raw = RawData({"train": read_file(files[0], _format_of(files[0]))}, _format_of(files[0]))
        raw.notes.append(f"read the folder's only data file, {files[0].name}, as train")
        return raw
    if "train" not in by_split:
        found = ", ".join(p.name for p in files) or "no data files"
        raise DataError(f"folder {path} has no train file (found: {found})",
                        "name the files train.csv, validation.csv and test.csv (any supported format), "
                        "or pass the file itself")
    splits: dict[str, Table] = {}
    fmts = set()
    for s, ps in by_split.items():
        tables = [read_file(p, _format_of(p)) for p in ps]
        fmts.update(_format_of(p) for p in ps)
        splits[s] = _concat(tables, ps)
    return RawData(splits, "folder(" + ",".join(sorted(fmts)) + ")",
                   [f"read {s} from {', '.join(p.name for p in by_split[s])}"
                    for s in ("train", "validation", "test") if s in by_split])


def _concat(tables: list[Table], paths: list[Path]) -> Table:
    if len(tables) == 1:
        return tables[0]
    cols: dict[str, None] = {}
    for t in tables:
        cols.update(dict.fromkeys(t))
    out: Table = {c: [] for c in cols}
    for t in tables:
        n = len(next(iter(t.values()), []))
        for c in cols:
            out[c].extend(t.get(c, [None] * n))
    return out


def _dataset_table(ds: Any) -> Table:
    """A Dataset's columns; ClassLabel ids become their names (what the user calls the classes)."""
    table = ds.to_dict()
    for name, feat in getattr(ds, "features", {}).items():
        if type(feat).__name__ == "ClassLabel" and name in table:
            table[name] = [feat.int2str(v) if isinstance(v, int) and v >= 0 else None for v in table[name]]
    return table


def _from_datasets(obj: Any, where: str) -> dict[str, Table]:
    """Dataset or DatasetDict -> canonical split tables (unknown split names are skipped)."""
    if isinstance(obj, dict):                          # DatasetDict is a dict of Datasets
        splits: dict[str, Table] = {}
        for name in obj.keys():
            s = split_of(name)
            if s and s not in splits:
                splits[s] = _dataset_table(obj[name])
        if "train" not in splits:
            raise DataError(f"{where} has no train split (splits: {', '.join(obj.keys())})",
                            "save a DatasetDict with a 'train' split, or pass the files themselves")
        return splits
    return {"train": _dataset_table(obj)}


def _read_save_to_disk(path: Path) -> RawData:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{path} is a datasets save_to_disk folder but datasets is not installed",
                        "pip install datasets") from None
    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot load the datasets folder {path}: {why}",
                        "re-save it with Dataset.save_to_disk, or export CSV/JSONL files") from None
    return RawData(_from_datasets(obj, str(path)), "save_to_disk")


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _read_hub(repo_id: str) -> RawData:
    if _offline():
        raise DataError(f"{repo_id} is not a local file or folder, and the Hub dataset {repo_id} cannot "
                        "be reached offline (HF_HUB_OFFLINE=1)",
                        "pass a local path (a file or a folder with train/validation/test files)")
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DataError("loading a Hub dataset needs the datasets library", "pip install datasets") from None
    try:
        obj = datasets.load_dataset(repo_id)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{repo_id} is not a local path and loading it as a Hub dataset failed: {msg}",
                        "check the id and your network, or pass a local path") from None
    return RawData(_from_datasets(obj, repo_id), "hub")
