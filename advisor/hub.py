"""Hugging Face Hub metadata for a model: parameter count, config.json, languages, licence, downloads.

    model_info("org/name") -> dict | None        # cached on disk; offline-safe
    spec_from_info(info) -> ModelSpec | None      # the architecture from the fetched config.json
    refresh_catalog_entry(spec) -> ModelSpec      # merge Hub facts (downloads, gated, licence)

Offline (HF_HUB_OFFLINE=1, AUTOFT_OFFLINE=1, or a connection that failed once in this process) it
answers from the disk cache at once and never waits on a network timeout. huggingface_hub is
imported only when going online (it costs a few hundred ms). The token, when there is one, comes
from huggingface_hub itself (HF_TOKEN or `hf auth login`); it is never logged or written to the cache.

Cache: $AUTOFT_CACHE/hub/<org>--<name>.json (default ~/.cache/autoft/hub), one JSON file per model,
fresh for AUTOFT_HUB_TTL seconds (default 7 days); a stale entry is still used when the Hub cannot
be reached.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from autoft.advisor.spec import ModelSpec

TIMEOUT_S = 3.0  # per request; a Hub that does not answer in 3 s is treated as unreachable
DEFAULT_TTL_S = 7 * 24 * 3600
EXPAND = ["safetensors", "cardData", "config", "downloads", "gated", "tags", "pipeline_tag", "library_name"]
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Why this process stopped going online (a failed connection), or None.
_unreachable: str | None = None

# Hub tags that say which domain a model is for.
_DOMAIN_TAGS = {"biology": "biomedical", "medical": "biomedical", "biomedical": "biomedical", "clinical": "biomedical",
                "chemistry": "scientific", "science": "scientific", "scientific": "scientific",
                "finance": "finance", "financial": "finance", "legal": "legal", "law": "legal", "code": "code"}


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """True when the user asked for offline mode or the Hub failed to answer earlier in this process."""
    return _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE") or _true("AUTOFT_OFFLINE") or _unreachable is not None


def offline_reason() -> str | None:
    if _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if _true("AUTOFT_OFFLINE"):
        return "AUTOFT_OFFLINE is set"
    return _unreachable


def reset_connectivity() -> None:
    """Forget an earlier connection failure (tests, or a long-running TUI after the network returns)."""
    global _unreachable
    _unreachable = None


def cache_root() -> Path:
    """autoft's cache folder: $AUTOFT_CACHE, default ~/.cache/autoft (Hub metadata, the parsed
    model table, converted GGUF models)."""
    root = os.environ.get("AUTOFT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "autoft"


def cache_dir() -> Path:
    return cache_root() / "hub"


def _cache_file(repo_id: str) -> Path:
    return cache_dir() / (repo_id.replace("/", "--") + ".json")


def _ttl() -> float:
    try:
        return float(os.environ.get("AUTOFT_HUB_TTL", DEFAULT_TTL_S))
    except ValueError:
        return DEFAULT_TTL_S


def cached_info(repo_id: str, max_age_s: float | None = None) -> dict | None:
    """The cached answer for repo_id (any age unless max_age_s), or None."""
    if not _REPO_RE.match(repo_id or ""):
        return None
    try:
        with open(_cache_file(repo_id), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("id") != repo_id:
        return None
    if max_age_s is not None and time.time() - float(info.get("fetched_at", 0)) > max_age_s:
        return None
    info["source"] = "cache"
    return info


def _write_cache(info: dict) -> None:
    path = _cache_file(info["id"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError:
        pass  # a read-only home only loses the cache


def _is_connection_error(err: BaseException) -> bool:
    name = type(err).__name__
    if name in ("OfflineModeIsEnabled", "ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException",
                "ConnectionError", "Timeout", "ProxyError", "NetworkError", "RemoteProtocolError"):
        return True
    return isinstance(err, (OSError, TimeoutError)) and not name.endswith("NotFoundError")


def _fetch(repo_id: str) -> dict | None:
    """Ask the Hub. Returns the info dict, None when the repo does not exist; raises on network errors."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.utils import build_hf_headers, get_session

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub's import
    api = HfApi(endpoint=endpoint)
    try:
        m = api.model_info(repo_id, expand=EXPAND, timeout=TIMEOUT_S)
    except RepositoryNotFoundError:
        return None
    card = m.card_data.to_dict() if m.card_data is not None else {}
    langs = card.get("language") or []
    if isinstance(langs, str):
        langs = [langs]
    licence = card.get("license") or next((t.split(":", 1)[1] for t in (m.tags or []) if t.startswith("license:")),
                                          "unknown")
    info = {
        "id": m.id or repo_id,
        "params": int(m.safetensors.total) if m.safetensors is not None and m.safetensors.total else None,
        "languages": [str(x) for x in langs],
        "licence": str(licence),
        "downloads": int(m.downloads) if m.downloads is not None else None,
        "gated": bool(m.gated),  # False, or "auto"/"manual"
        "tags": list(m.tags or []),
        "pipeline_tag": m.pipeline_tag,
        "library_name": m.library_name,
        "config": None,
        "fetched_at": time.time(),
    }
    # The API's `config` holds only a few keys; the architecture needs the repo's config.json.
    url = hf_hub_url(repo_id, "config.json", revision=m.sha or None, endpoint=endpoint)
    try:
        r = get_session().get(url, headers=build_hf_headers(), timeout=TIMEOUT_S, follow_redirects=True)
        if r.status_code == 200:
            info["config"] = r.json()
    except Exception:  # gated (401/403), no config.json, a broken JSON, a dropped connection: no config
        pass
    if info["config"] is None and isinstance(m.config, dict) and m.config.get("hidden_size"):
        info["config"] = m.config
    return info


def model_info(repo_id: str, *, allow_network: bool = True) -> dict | None:
    """Hub facts for repo_id: {id, params, languages, licence, downloads, gated, tags, config, source, ...}.

    A fresh cache entry answers without the network; offline, any cache entry answers; None when
    nothing is known. Never raises for network trouble and never waits more than one short timeout
    per process.
    """
    global _unreachable
    if not _REPO_RE.match(repo_id or ""):
        return None
    fresh = cached_info(repo_id, max_age_s=_ttl())
    if fresh is not None:
        return fresh
    if not allow_network or is_offline():
        return cached_info(repo_id)
    try:
        info = _fetch(repo_id)
    except Exception as err:  # never let the Hub break the advisor: answer from the cache
        if _is_connection_error(err):
            # Remember it, so that later calls in this process do not wait on the timeout again.
            _unreachable = f"the Hub could not be reached ({type(err).__name__})"
        return cached_info(repo_id)
    if info is None:
        return None
    _write_cache(info)
    info["source"] = "hub"
    return info


def _domains(tags: list[str]) -> list[str]:
    found = []
    for t in tags or []:
        d = _DOMAIN_TAGS.get(t.lower())
        if d and d not in found:
            found.append(d)
    return found or ["general"]


def spec_from_info(info: dict) -> ModelSpec | None:
    """A ModelSpec from model_info's answer (None when it has no usable config.json)."""
    from autoft.advisor.catalog import spec_from_config

    cfg = info.get("config")
    if not isinstance(cfg, dict):
        return None
    try:
        return spec_from_config(cfg, info["id"], source=info.get("source", "hub"), params=info.get("params"),
                                languages=list(info.get("languages") or ["unknown"]),
                                domains=_domains(info.get("tags", [])), licence=info.get("licence", "unknown"),
                                gated=bool(info.get("gated")), downloads=info.get("downloads"))
    except Exception:  # an odd config.json: treat it as unknown rather than crash the advisor
        return None


def refresh_catalog_entry(spec: ModelSpec, *, allow_network: bool = True) -> ModelSpec:
    """The catalog entry with Hub facts merged in (downloads; gated; licence/languages when the
    catalog did not know them). The architecture numbers stay the catalog's. Offline without a cache
    entry it returns the spec unchanged."""
    from dataclasses import replace

    info = model_info(spec.id, allow_network=allow_network)
    if info is None:
        return spec
    changes: dict = {}
    if info.get("downloads") is not None:
        changes["downloads"] = int(info["downloads"])
    if info.get("gated") is not None:
        changes["gated"] = bool(info["gated"])
    if spec.licence == "unknown" and info.get("licence") not in (None, "", "unknown"):
        changes["licence"] = info["licence"]
    if spec.languages in ([], ["unknown"]) and info.get("languages"):
        changes["languages"] = list(info["languages"])
    return replace(spec, **changes)
