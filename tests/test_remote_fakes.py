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
class Stream:
    """A streamed answer (server-sent events): chunks written as the iterator yields them."""

    chunks: Any


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

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = _do

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
        if isinstance(payload, Stream):  # written outside the lock, chunk by chunk, then the connection closes
            self._send_stream(h, status, payload, headers)
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._send(h, status, data, headers, head=req.method == "HEAD")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        h.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}  # send_response adds Date
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not head:
            h.wfile.write(data)

    @staticmethod
    def _send_stream(h: BaseHTTPRequestHandler, status: int, stream: "Stream", headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()  # HTTP/1.0 without Content-Length: the body ends when the connection closes
        try:
            for chunk in stream.chunks:
                h.wfile.write(chunk)
                h.wfile.flush()
        except OSError:
            pass  # the client went away

    def route(self, req: Request) -> tuple[int, Any, dict[str, str]]:  # pragma: no cover - abstract
        raise NotImplementedError


def _hf_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


def _git_oid(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class HFJobsFake(FakeServer):
    """The Hub as huggingface_hub calls it: ``/api/whoami-v2``, the jobs API
    (``/api/jobs/{ns}[/{id}[/logs|/cancel]]``) and model repos — ``POST /api/repos/create``,
    ``GET /api/models/{repo}/revision/{rev}``, ``GET /api/models/{repo}/tree/{rev}`` (recursive),
    ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular": no LFS, no xet), ``POST
    /api/models/{repo}/commit/{rev}`` (NDJSON, base64 contents) and ``HEAD|GET /{repo}/resolve/{rev}/{path}``.

    With ``executor`` set (see ``JobExecutor``), a submitted job really runs: its command is a subprocess with
    the job's environment, its secrets and ``HF_ENDPOINT`` pointing back at this server; stdout lines become the
    job's logs (streamed to ``follow`` readers as they appear) and the exit code its final stage."""

    token = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7"
    namespace = "alice"
    keepalive_s = 30.0  # a running job's log stream sends ": keep-alive" after this long without a line (the Hub: 30 s)

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, list[str]] = {}
        self.log_times: dict[str, list[float]] = {}
        self.repos: dict[str, Repo] = {}
        self.executor: Any = None
        self.procs: dict[str, Any] = {}
        self._secret_values: dict[str, dict[str, str]] = {}
        self._ids = itertools.count(1)
        self._log_cv = threading.Condition(self.lock)

    def close(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        super().close()

    def set_stage(self, job_id: str, stage: str, *, started: bool = True, message: str | None = None) -> None:
        job = self.jobs[job_id]
        job["status"] = {"stage": stage, "message": message}
        if started and not job.get("startedAt"):
            job["startedAt"] = _hf_time(time.time() - 60 if self.executor is None else time.time())
        if stage in ("COMPLETED", "ERROR", "CANCELED", "DELETED"):
            job["finishedAt"] = _hf_time(time.time())

    # -- jobs really executed
    def _start(self, jid: str, spec: dict[str, Any]) -> None:
        import subprocess

        env = {**self.executor.env(jid), **{k: str(v) for k, v in (spec.get("environment") or {}).items()},
               **self._secret_values.get(jid, {}), "HF_ENDPOINT": self.url}
        argv = [*spec["command"], *(spec.get("arguments") or [])]
        proc = subprocess.Popen(argv, env=env, cwd=self.executor.workdir(jid), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[jid] = proc
        self.set_stage(jid, "RUNNING")

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                with self._log_cv:
                    self.logs[jid].append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self.log_times[jid].append(time.time())
                    self._log_cv.notify_all()
            rc = proc.wait()
            with self._log_cv:
                if self.jobs[jid]["status"]["stage"] == "RUNNING":
                    self.set_stage(jid, "COMPLETED" if rc == 0 else "ERROR",
                                   message=None if rc == 0 else f"exit code {rc}")
                self._log_cv.notify_all()

        threading.Thread(target=pump, daemon=True).start()

    def _log_events(self, jid: str) -> Stream:
        def event(i: int, line: str, ts: float) -> bytes:
            return f"data: {json.dumps({'timestamp': _hf_time(ts), 'data': line})}\n\n".encode()

        def chunks():
            base = time.time() - 30
            yield event(0, "===== Job started =====", base)
            i = 0
            while True:
                keepalive = False
                with self._log_cv:
                    lines, times = self.logs[jid][i:], self.log_times[jid][i:]
                    if not lines:
                        if self.jobs[jid]["status"]["stage"] != "RUNNING" or jid not in self.procs:
                            return  # the job ended and every line it printed was sent
                        keepalive = not self._log_cv.wait(self.keepalive_s)
                if keepalive:  # like the Hub: the stream stays open while the job runs
                    yield b": keep-alive\n\n"
                    continue
                for k, line in enumerate(lines):
                    ts = times[k] if k < len(times) else base + i + k + 1
                    yield event(i + k + 1, line, ts)
                i += len(lines)

        return Stream(chunks())

    # -- routes
    def route(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.path == "/api/whoami-v2" and req.method == "GET":
            return 200, {"type": "user", "name": self.namespace, "id": "u1"}, {}
        if req.path.startswith("/api/jobs/"):
            return self._jobs(req)
        return self._repos(req)

    def _jobs(self, req: Request) -> tuple[int, Any, dict[str, str]]:
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
            self.log_times[jid] = []
            self._secret_values[jid] = {k: str(v) for k, v in (spec.get("secrets") or {}).items()}
            if self.executor is not None:
                self._start(jid, spec)
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
            proc = self.procs.get(job_id)
            if proc is not None and proc.poll() is None:
                import os
                import signal

                os.killpg(proc.pid, signal.SIGTERM)
            self.set_stage(job_id, "CANCELED", started=False)
            return 200, {}, {}
        if action == "logs" and req.method == "GET":
            if job_id in self.procs:
                return 200, self._log_events(job_id), {"Content-Type": "text/event-stream"}
            base = time.time() - 30
            events = "".join(f"data: {json.dumps({'timestamp': _hf_time(base + i), 'data': line})}\n\n"
                             for i, line in enumerate(["===== Job started =====", *self.logs[job_id]]))
            return 200, events.encode(), {"Content-Type": "text/event-stream"}
        return 405, {"error": "method"}, {}

    def _repos(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        import base64

        if req.path == "/api/repos/create" and req.method == "POST":
            b = req.body or {}
            if b.get("type") not in (None, "model"):
                return 400, {"error": "only model repos here"}, {}
            repo_id = f"{b.get('organization') or self.namespace}/{b['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
            self.repos[repo_id] = Repo(repo_id, private=bool(b.get("private")) or b.get("visibility") == "private")
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree|preupload|commit)/([^/]+)(/.*)?)?", req.path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            what, rev = m.group(2) or "revision", m.group(3) or "main"
            if rev not in ("main", repo.sha):
                return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
            if what == "revision" and req.method == "GET":
                return 200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(repo.files)]}, {}
            if what == "tree" and req.method == "GET":
                prefix = (m.group(4) or "").strip("/")
                entries = [{"type": "file", "oid": _git_oid(data), "size": len(data), "path": p}
                           for p, data in sorted(repo.files.items()) if not prefix or p.startswith(prefix + "/")]
                return 200, entries, {}
            if what == "preupload" and req.method == "POST":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": _git_oid(repo.files[f["path"]]) if f["path"] in repo.files else None}
                         for f in req.body["files"]]
                return 200, {"files": files, "commitOid": repo.sha}, {}
            if what == "commit" and req.method == "POST":
                lines = [json.loads(x) for x in str(req.body).splitlines() if x.strip()] \
                    if isinstance(req.body, str) else [req.body]
                for item in lines:
                    v = item.get("value") or {}
                    if item.get("key") == "file":
                        repo.files[v["path"]] = base64.b64decode(v["content"]) if v.get("encoding") == "base64" \
                            else str(v["content"]).encode()
                    elif item.get("key") == "deletedFile":
                        repo.files.pop(v["path"], None)
                    elif item.get("key") == "lfsFile":
                        return 400, {"error": "this loopback Hub takes regular files only"}, {}
                import hashlib

                repo.commits.append(hashlib.sha1(f"{repo.repo_id}{len(repo.commits)}{time.time()}".encode())
                                    .hexdigest())
                return 200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{repo.sha}", "commitOid": repo.sha,
                             "pullRequestUrl": None}, {}
            return 405, {"error": "method"}, {}
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", req.path)
        if m and req.method in ("GET", "HEAD"):
            repo = self.repos.get(m.group(1))
            if repo is None:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if m.group(2) not in ("main", repo.sha):
                return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
            from urllib.parse import unquote

            path = unquote(m.group(3))
            if path not in repo.files:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            data = repo.files[path]
            return 200, data, {"Content-Type": "application/octet-stream", "X-Repo-Commit": repo.sha,
                               "ETag": f'"{_git_oid(data)}"'}
        return 404, {"error": "not found"}, {}


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
