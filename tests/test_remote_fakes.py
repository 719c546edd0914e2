"""Loopback HTTP servers that speak the subset of each remote API carl uses (HF Jobs, RunPod REST, the managed
endpoint), started by the tests on 127.0.0.1 — real clients, the real wire. Faults are injected per route:
an HTTP status (with headers/body), a slow answer (client timeout), or malformed JSON.

The tests at the bottom check the fakes themselves with plain httpx, so a test elsewhere that fails because a
fake misbehaves is caught here first.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from tests.platform_fake import PlatformMixin


@dataclass
class Fault:
    method: str
    path: str  # regex, matched against the path (no query)
    status: int = 500
    body: bytes = b'{"error": "injected"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a client with a shorter timeout times out)
    times: int = 1


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: Any


class FakeServer:
    """Base: a threaded HTTP/1.0 server; subclasses implement ``route``."""

    token = "test-token-0123456789"
    public_paths: tuple[str, ...] = ()  # answered without the bearer check

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def _do(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fault(self, method: str, path: str, **kw: Any) -> None:
        self.faults.append(Fault(method, path, **kw))

    def calls(self, method: str, path_re: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(path_re, r.path)]

    # -- plumbing
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        req = Request(h.command, parts.path, parse_qsl(parts.query), {k.lower(): v for k, v in h.headers.items()},
                      body)
        with self.lock:
            self.requests.append(req)
            fault = next((f for f in self.faults if f.times > 0 and f.method == req.method
                          and re.fullmatch(f.path, req.path)), None)
            if fault:
                fault.times -= 1
        if fault:
            if fault.delay:
                time.sleep(fault.delay)
            try:
                self._send(h, fault.status, fault.body, fault.headers)
            except OSError:
                pass  # the client gave up (timeout)
            return
        if h.headers.get("Authorization") != f"Bearer {self.token}" and req.path not in self.public_paths:
            self._send(h, 401, b'{"error": "unauthorized"}')
            return
        with self.lock:
            status, payload, headers = self.route(req)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._send(h, status, data, headers)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}  # send_response adds Date
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def route(self, req: Request) -> tuple[int, Any, dict[str, str]]:  # pragma: no cover - abstract
        raise NotImplementedError


def _hf_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


class HFJobsFake(FakeServer):
    """``/api/whoami-v2`` and ``/api/jobs/{ns}[/{id}[/logs|/cancel]]`` as huggingface_hub calls them."""

    token = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7"
    namespace = "alice"

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[str]] = {}
        self._ids = itertools.count(1)

    def set_stage(self, job_id: str, stage: str, *, started: bool = True) -> None:
        job = self.jobs[job_id]
        job["status"] = {"stage": stage, "message": None}
        if started and not job.get("startedAt"):
            job["startedAt"] = _hf_time(time.time() - 60)
        if stage in ("COMPLETED", "ERROR", "CANCELED", "DELETED"):
            job["finishedAt"] = _hf_time(time.time())

    def route(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.path == "/api/whoami-v2" and req.method == "GET":
            return 200, {"type": "user", "name": self.namespace, "id": "u1"}, {}
        m = re.fullmatch(r"/api/jobs/([^/]+)(?:/([^/]+))?(?:/(logs|cancel))?", req.path)
        if not m or m.group(1) != self.namespace:
            return 404, {"error": "not found"}, {}
        job_id, action = m.group(2), m.group(3)
        if job_id is None and req.method == "POST":
            spec = req.body
            jid = f"{next(self._ids):024x}"
            job = {"id": jid, "createdAt": _hf_time(time.time()), "dockerImage": spec.get("dockerImage"),
                   "command": spec["command"], "arguments": spec.get("arguments", []),
                   "environment": spec.get("environment", {}),
                   "secrets": {k: None for k in (spec.get("secrets") or {})},  # the Hub never echoes values
                   "flavor": spec["flavor"], "labels": spec.get("labels"),
                   "timeoutSeconds": spec.get("timeoutSeconds"),
                   "status": {"stage": "SCHEDULING", "message": None},
                   "owner": {"id": "u1", "name": self.namespace, "type": "user"}}
            self.jobs[jid] = job
            self.logs[jid] = []
            return 200, job, {}
        if job_id is None and req.method == "GET":
            wanted = [v.split("=", 1) for k, v in req.query if k == "label"]
            out = [j for j in self.jobs.values()
                   if all((j.get("labels") or {}).get(k) == v for k, v in wanted)]
            return 200, out, {}
        if job_id not in self.jobs:
            return 404, {"error": "job not found"}, {}
        if action is None and req.method == "GET":
            return 200, self.jobs[job_id], {}
        if action == "cancel" and req.method == "POST":
            self.set_stage(job_id, "CANCELED", started=False)
            return 200, {}, {}
        if action == "logs" and req.method == "GET":
            base = time.time() - 30
            events = "".join(f"data: {json.dumps({'timestamp': _hf_time(base + i), 'data': line})}\n\n"
                             for i, line in enumerate(["===== Job started =====", *self.logs[job_id]]))
            return 200, events.encode(), {"Content-Type": "text/event-stream"}
        return 405, {"error": "method"}, {}


class RunPodFake(FakeServer):
    """``/pods`` create/get/list(name)/stop/delete as RunPod's REST API (v1)."""

    token = "rpa_TESTKEY0123456789"

    def __init__(self) -> None:
        super().__init__()
        self.pods: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def route(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        m = re.fullmatch(r"/v1/pods(?:/([^/]+))?(?:/(stop))?", req.path)
        if not m:
            return 404, {"error": "not found"}, {}
        pid, action = m.group(1), m.group(2)
        if pid is None and req.method == "POST":
            b = req.body
            if not b.get("imageName") or not b.get("gpuTypeIds"):
                return 400, {"error": "imageName and gpuTypeIds are required"}, {}
            pid = f"pod{next(self._ids):04d}"
            self.pods[pid] = {"id": pid, "name": b["name"], "imageName": b["imageName"],
                              "gpuCount": b.get("gpuCount", 1), "desiredStatus": "RUNNING", "costPerHr": 1.64,
                              "env": b.get("env", {}), "dockerStartCmd": b.get("dockerStartCmd"), "runtime": None,
                              "machine": {"gpuTypeId": b["gpuTypeIds"][0]}}
            return 201, self.pods[pid], {}
        if pid is None and req.method == "GET":
            name = dict(req.query).get("name")
            return 200, [p for p in self.pods.values() if name is None or p["name"] == name], {}
        if pid not in self.pods:
            return 404, {"error": "pod not found"}, {}
        pod = self.pods[pid]
        if action == "stop" and req.method == "POST":
            pod["desiredStatus"] = "EXITED"
            return 200, pod, {}
        if req.method == "DELETE":
            pod["desiredStatus"] = "TERMINATED"
            return 204, b"", {}
        if req.method == "GET":
            return 200, pod, {}
        return 405, {"error": "method"}, {}


class ManagedFake(PlatformMixin, FakeServer):
    """POST /runs (Idempotency-Key), GET /runs[/{id}[/logs]], POST /runs/{id}/cancel; the platform's
    entitlements, JWKS, telemetry and ledger append (tests/platform_fake.py)."""

    token = "mgd_TESTTOKEN0123456789"

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, str] = {}
        self.logs: dict[str, list[str]] = {}
        self._ids = itertools.count(1)
        self.finish_after_logs: bool = False  # a follow reader sees the run end once it has read every line
        self.platform_init()

    def route(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.path.startswith(("/api/platform/", "/.well-known/")):
            return self.platform_route(req)
        m = re.fullmatch(r"/api/runs(?:/([^/]+))?(?:/(logs|cancel))?", req.path)
        if not m:
            return 404, {"error": "not found"}, {}
        rid, action = m.group(1), m.group(2)
        if rid is None and req.method == "POST":
            key = req.headers.get("idempotency-key")
            if not key:
                return 400, {"error": "Idempotency-Key required"}, {}
            if key in self.by_key:
                return 200, {**self.runs[self.by_key[key]], "deduplicated": True}, {}
            rid = f"run-{next(self._ids)}"
            self.runs[rid] = {"id": rid, "status": "queued", "flavor": req.body["flavor"], "body": req.body}
            self.by_key[key] = rid
            self.logs[rid] = []
            return 201, self.runs[rid], {}
        if rid is None and req.method == "GET":
            return 200, {"runs": list(self.runs.values())}, {}
        if rid not in self.runs:
            return 404, {"error": "run not found"}, {}
        run = self.runs[rid]
        if action == "cancel" and req.method == "POST":
            run["status"] = "cancelled"
            run["ended_at"] = time.time()
            return 200, run, {}
        if action == "logs" and req.method == "GET":
            offset = int(dict(req.query).get("offset", 0))
            lines = self.logs[rid][offset:]
            if self.finish_after_logs and not lines:
                run["status"] = "succeeded"
                run["ended_at"] = time.time()
            return 200, {"lines": lines, "next_offset": offset + len(lines)}, {}
        if req.method == "GET":
            return 200, run, {}
        return 405, {"error": "method"}, {}


# ------------------------------------------------------------------------------------------- fakes' own tests


def test_fake_checks_bearer_and_idempotency(managed):
    h = {"Authorization": f"Bearer {managed.token}", "Idempotency-Key": "k1"}
    r1 = httpx.post(f"{managed.url}/api/runs", json={"flavor": "x"}, headers=h)
    r2 = httpx.post(f"{managed.url}/api/runs", json={"flavor": "x"}, headers=h)
    assert r1.status_code == 201 and r2.status_code == 200
    assert r1.json()["id"] == r2.json()["id"] and len(managed.runs) == 1
    assert httpx.get(f"{managed.url}/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_fake_faults_fire_then_clear(managed):
    managed.fault("GET", r"/api/runs", status=503, times=1)
    h = {"Authorization": f"Bearer {managed.token}"}
    assert httpx.get(f"{managed.url}/api/runs", headers=h).status_code == 503
    assert httpx.get(f"{managed.url}/api/runs", headers=h).status_code == 200
