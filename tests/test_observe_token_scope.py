"""`observe --url` sends HF_TOKEN only to a Space of the token's own user or orgs (whoami asked of a Hub endpoint
this test starts on 127.0.0.1 via HF_ENDPOINT), or to any dashboard when --send-token says so."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.observe.sources import trackio as T


@pytest.fixture
def hub(monkeypatch):
    seen = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            body = None
            if self.path.startswith("/api/whoami"):
                body = json.dumps({"type": "user", "name": "alice_b", "orgs": [{"name": "acme.lab"}]}).encode()
            elif self.path.startswith("/api/spaces"):
                owner = "alice_b" if "author=alice_b" in self.path else "acme.lab"
                names = {"alice_b": ["my-dash"], "acme.lab": ["board"]}[owner]
                body = json.dumps([{"id": f"{owner}/{n}"} for n in names]).encode()
            if body is not None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(T, "_OWNED", {})
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "ENDPOINT", f"http://127.0.0.1:{srv.server_address[1]}", raising=False)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False, raising=False)
    yield seen
    srv.shutdown()
    srv.server_close()


def test_token_only_to_own_spaces(hub):
    own = T.TrackioRemoteSource("alice_b/my-dash")
    org = T.TrackioRemoteSource("https://acme-lab-board.hf.space/")
    other = T.TrackioRemoteSource("mallory/dash")
    local = T.TrackioRemoteSource("http://127.0.0.1:7860/")
    assert own._headers().get("Authorization", "").startswith("Bearer hf_")
    assert org._headers().get("Authorization", "").startswith("Bearer hf_")
    assert other._headers() == {} and local._headers() == {}
    assert any(p.startswith("/api/whoami") for p, _ in hub)  # asked once, cached
    # a name prefix is not ownership: alice_b-evil's Space shares alice_b's prefix
    assert T.TrackioRemoteSource("https://alice-b-evil-x.hf.space/")._headers() == {}
    asked = T.TrackioRemoteSource("mallory/dash", send_token=True)
    assert asked._headers().get("Authorization", "").startswith("Bearer hf_")


def test_no_whoami_no_token(monkeypatch):
    monkeypatch.setattr(T, "_OWNED", {"hf_tok": set()})  # the Hub could not be asked (offline)
    monkeypatch.setenv("HF_TOKEN", "hf_tok")
    assert T.TrackioRemoteSource("alice/dash")._headers() == {}
    assert T.space_host("Alice_B/My.Dash") == "alice-b-my-dash.hf.space"
