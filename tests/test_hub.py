"""Hub metadata against a local HTTP server shaped like the Hub API (HF_ENDPOINT), and its disk cache.

The online calls run in a subprocess: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when it is
imported, and this test session is offline by default (conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

from autoft.advisor import hub
from autoft.advisor.catalog import find_in_catalog

REPO = "acme/tiny-german-bert"
GATED = "acme/gated-model"
SHA = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {  # a BERT-style config.json
    "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4,
    "num_attention_heads": 4, "intermediate_size": 1024, "vocab_size": 31102, "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
API = {  # shaped like GET /api/models/<id>?expand=... on huggingface.co
    "_id": "6650a0c0f0e0d0c0b0a09080", "id": REPO, "author": "acme", "sha": SHA, "downloads": 123456,
    "gated": False, "pipeline_tag": "fill-mask", "library_name": "transformers",
    "tags": ["transformers", "safetensors", "bert", "fill-mask", "legal", "de", "license:mit"],
    "cardData": {"language": ["de"], "license": "mit", "tags": ["legal"]},
    "config": {"architectures": ["BertForMaskedLM"], "model_type": "bert"},
    "safetensors": {"parameters": {"F32": 11_700_000}, "total": 11_700_000},
}


class _Hub(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        path = urlparse(self.path).path
        if path in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main"):
            return self._json(200, API)
        if path in (f"/{REPO}/resolve/{SHA}/config.json", f"/{REPO}/resolve/main/config.json"):
            return self._json(200, CONFIG)
        if path == f"/api/models/{GATED}":
            return self._json(200, {**API, "id": GATED, "gated": "manual", "cardData": {"license": "other"}})
        if path.startswith(f"/{GATED}/resolve/"):
            return self._json(401, {"error": "Access to model is restricted"}, {"X-Error-Code": "GatedRepo"})
        if path.startswith("/api/models/"):
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})

    do_HEAD = do_GET

    def _json(self, code, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Hub.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path))
    hub.reset_connectivity()
    yield tmp_path
    hub.reset_connectivity()


_SNIPPET = """
import json, sys
from autoft.advisor import hub
from autoft.advisor.catalog import resolve_model
from autoft.errors import AutoftError
info = hub.model_info(sys.argv[1])
spec, error = None, None
try:
    spec = resolve_model(sys.argv[1]) if info else None
except AutoftError as err:
    error = str(err)
print(json.dumps({"info": info, "spec": spec.to_dict() if spec else None, "offline": hub.offline_reason(),
                  "error": error}))
"""


def _online(repo: str, endpoint: str, cache, **env) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AUTOFT_OFFLINE")}
    e.update(HF_ENDPOINT=endpoint, AUTOFT_CACHE=str(cache), HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="hf_secret_test_token",
             **env)
    out = subprocess.run([sys.executable, "-c", _SNIPPET, repo], env=e, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_online_info_becomes_a_spec_and_is_cached(server, cache):
    srv, url = server
    res = _online(REPO, url, cache)
    info, spec = res["info"], res["spec"]
    assert info["source"] == "hub" and info["params"] == 11_700_000 and info["downloads"] == 123456
    assert info["languages"] == ["de"] and info["licence"] == "mit" and info["gated"] is False
    assert any(p.startswith(f"/api/models/{REPO}") for p in _Hub.requests)
    assert any(p.endswith("/config.json") for p in _Hub.requests)
    # The architecture comes from config.json, the facts from the API.
    assert spec["hidden_size"] == 256 and spec["num_layers"] == 4 and spec["family"] == "encoder"
    assert spec["params"] == 11_700_000 and spec["languages"] == ["de"] and spec["licence"] == "mit"
    assert spec["downloads"] == 123456 and "legal" in spec["domains"]
    # Written to the cache, without the token.
    f = cache / "hub" / "acme--tiny-german-bert.json"
    assert f.is_file()
    text = f.read_text()
    assert "hf_secret_test_token" not in text
    assert json.loads(text)["config"]["vocab_size"] == 31102


def test_cache_answers_when_the_server_is_gone(server, cache):
    srv, url = server
    _online(REPO, url, cache)
    srv.shutdown()
    srv.server_close()
    # Stale cache (TTL 0) forces a network try: it fails fast and the cache answers.
    t0 = time.monotonic()
    res = _online(REPO, url, cache, AUTOFT_HUB_TTL="0")
    assert res["info"]["source"] == "cache" and res["info"]["downloads"] == 123456
    assert res["spec"]["hidden_size"] == 256
    assert "could not be reached" in res["offline"]
    assert time.monotonic() - t0 < 30


def test_unknown_repo_is_none(server, cache):
    _, url = server
    res = _online("acme/does-not-exist", url, cache)
    assert res["info"] is None and res["offline"] is None  # a 404 is an answer, not an outage


def test_offline_uses_cache_and_never_the_network(server, cache, monkeypatch):
    srv, url = server
    _online(REPO, url, cache)
    n = len(_Hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("AUTOFT_HUB_TTL", "0")  # even stale, offline answers from the cache
    info = hub.model_info(REPO)
    assert info["source"] == "cache" and info["downloads"] == 123456
    assert hub.model_info("acme/never-fetched") is None
    assert len(_Hub.requests) == n  # not one request
    spec = hub.spec_from_info(info)
    assert spec.vocab_size == 31102 and spec.source == "cache"


def test_offline_without_cache_is_instant_none(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert hub.model_info("someone/something") is None
    assert time.perf_counter() - t0 < 0.5


def test_bad_repo_ids_are_none(cache):
    for bad in ["", "no-slash", "../../etc/passwd", "a/b/c", "/abs"]:
        assert hub.model_info(bad) is None


def test_refresh_catalog_entry_merges_downloads(cache, monkeypatch):
    spec = find_in_catalog("allenai/scibert_scivocab_uncased")
    assert spec.licence == "unknown" and spec.downloads is None
    entry = {"id": spec.id, "params": 110_000_000, "languages": ["en"], "licence": "apache-2.0",
             "downloads": 987, "gated": False, "tags": [], "config": None, "fetched_at": time.time()}
    (cache / "hub").mkdir(parents=True)
    (cache / "hub" / "allenai--scibert_scivocab_uncased.json").write_text(json.dumps(entry))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    new = hub.refresh_catalog_entry(spec)
    assert new.downloads == 987 and new.licence == "apache-2.0"
    assert new.hidden_size == spec.hidden_size and new.params == spec.params  # architecture kept
    # Nothing cached: unchanged.
    other = find_in_catalog("bert-base-uncased")
    assert hub.refresh_catalog_entry(other) == other


def test_cache_file_for_another_repo_is_ignored(cache):
    (cache / "hub").mkdir(parents=True)
    (cache / "hub" / "acme--x.json").write_text(json.dumps({"id": "acme/other"}))
    assert hub.cached_info("acme/x") is None
    (cache / "hub" / "acme--y.json").write_text("{not json")
    assert hub.cached_info("acme/y") is None


def test_gated_repo_without_access(server, cache):
    _, url = server
    res = _online(GATED, url, cache)
    assert res["info"]["gated"] is True and res["info"]["config"] is None and res["info"]["licence"] == "other"
    assert res["spec"] is None and "gated" in res["error"] and "hf auth login" in res["error"]
    assert res["offline"] is None
