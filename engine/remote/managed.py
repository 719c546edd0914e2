"""A managed carl endpoint: any HTTPS service that speaks this small API (bearer token auth).

    POST /runs                 body: the run (below), header Idempotency-Key → {"id", "status", …}
                               the same key again must return the same run (one job)
    GET  /runs/{id}            → {"id", "status", "message"?, "started_at"?, "ended_at"?, "cost_per_hour"?}
    GET  /runs/{id}/logs?offset=N → {"lines": [...], "next_offset": M}   (or text/plain, one line per line)
    POST /runs/{id}/cancel     → {"id", "status"}
    GET  /runs                 → {"runs": [{"id", "status", …}, …]}   (or a bare list)

Run body: ``{"name", "image", "command", "env", "flavor", "gpu_count", "hours", "timeout_s", "labels",
"secrets"}``. Before anything is sent, :func:`engine.remote.base.guard_hf_token` refuses a body that carries a
Hugging Face token anywhere but ``secrets`` (``carl.remote.hf_token_leak``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from engine.errors import ConfigError
from engine.remote.base import (
    JobHandle, JobPlan, JobStatus, RemoteState, RetryPolicy, expect_dict, guard_hf_token, http_json, mask_auth,
    require_token,
)
from engine.remote.config import ManagedSettings

STATUS_MAP = {
    "queued": JobStatus.QUEUED, "pending": JobStatus.QUEUED, "scheduled": JobStatus.QUEUED,
    "scheduling": JobStatus.QUEUED, "starting": JobStatus.QUEUED, "created": JobStatus.QUEUED,
    "running": JobStatus.RUNNING, "started": JobStatus.RUNNING,
    "completed": JobStatus.COMPLETED, "succeeded": JobStatus.COMPLETED, "success": JobStatus.COMPLETED,
    "done": JobStatus.COMPLETED, "finished": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED, "error": JobStatus.FAILED, "errored": JobStatus.FAILED,
    "cancelled": JobStatus.STOPPED, "canceled": JobStatus.STOPPED, "stopped": JobStatus.STOPPED,
    "cancelling": JobStatus.STOPPED, "canceling": JobStatus.STOPPED,
}


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def state_from(data: dict[str, Any], base_url: str) -> RemoteState:
    raw = str(data.get("status", "")).lower()
    rid = str(data["id"])
    cph = data.get("cost_per_hour")
    return RemoteState(remote_id=rid, status=STATUS_MAP.get(raw, JobStatus.UNKNOWN), raw_status=raw or None,
                       message=data.get("message"), started_at=_ts(data.get("started_at")),
                       ended_at=_ts(data.get("ended_at")), url=data.get("url") or f"{base_url}/runs/{rid}",
                       cost_per_hour=float(cph) if isinstance(cph, (int, float)) else None)


class ManagedClient:
    backend = "managed"

    def __init__(self, settings: ManagedSettings, policy: RetryPolicy, *, poll_interval_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep):
        if not settings.url:
            raise ConfigError("remote.managed.url is not set", hint="Add remote: {managed: {url: https://…}} to "
                              "carl.yaml.", context={"field": "remote.managed.url"})
        self.settings = settings
        self.base_url = settings.url.rstrip("/")
        self.policy = policy
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._client = None

    # -- plumbing
    def _token(self) -> str:
        return require_token(self.settings.token_env, self.backend)

    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(follow_redirects=True)
        return self._client

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json", "User-Agent": "carl"}
        h.update(extra or {})
        return h

    def _call(self, method: str, path: str, what: str, *, body: Any = None, headers: dict[str, str] | None = None,
              expect: str = "json", params: dict[str, Any] | None = None) -> Any:
        return http_json(self._http(), method, f"{self.base_url}{path}", policy=self.policy, backend=self.backend,
                         what=what, json_body=body, headers=self._headers(headers), params=params, expect=expect,
                         sleep=self._sleep)

    # -- API
    def body(self, plan: JobPlan, *, mask: bool = False) -> dict[str, Any]:
        secrets: dict[str, str] = {}
        if self.settings.send_hf_token and "HF_TOKEN" in plan.secret_names:
            secrets["HF_TOKEN"] = "***" if mask else require_token("HF_TOKEN", self.backend)
        return {"name": plan.name, "image": plan.image, "command": list(plan.command), "env": dict(plan.env),
                "flavor": plan.flavor, "gpu_count": plan.gpu_count, "hours": plan.hours, "timeout_s": plan.timeout_s,
                "labels": {"carl": "1", "carl-idempotency-key": plan.idempotency_key}, "secrets": secrets}

    def preview(self, plan: JobPlan) -> dict[str, Any]:
        body = self.body(plan, mask=True)
        headers = {"Authorization": "Bearer ***", "Idempotency-Key": plan.idempotency_key,
                   "Content-Type": "application/json"}
        return {"method": "POST", "url": f"{self.base_url}/runs", "headers": mask_auth(headers), "json": body}

    def submit(self, plan: JobPlan) -> JobHandle:
        body = self.body(plan)
        guard_hf_token(body, self.backend)
        data = self._call("POST", "/runs", "submit", body=body, headers={"Idempotency-Key": plan.idempotency_key})
        data = expect_dict(data, self.backend, "submit", "id")
        return JobHandle(backend=self.backend, remote_id=str(data["id"]), state=state_from(data, self.base_url),
                         request=self.preview(plan), deduplicated=bool(data.get("deduplicated", False)))

    def status(self, remote_id: str) -> RemoteState:
        data = self._call("GET", f"/runs/{remote_id}", "status")
        return state_from(expect_dict(data, self.backend, "status", "id"), self.base_url)

    def _log_page(self, remote_id: str, offset: int) -> tuple[list[str], int]:
        data = self._call("GET", f"/runs/{remote_id}/logs", "logs", expect="text", params={"offset": offset})
        import json

        try:
            parsed = json.loads(data) if data.strip()[:1] in ("{", "[") else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("lines"), list):
            lines = [str(x) for x in parsed["lines"]]
            return lines, int(parsed.get("next_offset", offset + len(lines)))
        lines = data.splitlines()
        return lines, offset + len(lines)

    def logs(self, remote_id: str, follow: bool = False) -> Iterator[str]:
        offset = 0
        while True:
            lines, offset = self._log_page(remote_id, offset)
            yield from lines
            if not follow:
                return
            if not lines:
                if self.status(remote_id).status.terminal:
                    lines, offset = self._log_page(remote_id, offset)  # whatever landed before the end
                    yield from lines
                    return
                self._sleep(self.poll_interval_s)

    def stop(self, remote_id: str) -> RemoteState:
        data = self._call("POST", f"/runs/{remote_id}/cancel", "stop", body={})
        if isinstance(data, dict) and "id" in data:
            return state_from(data, self.base_url)
        return self.status(remote_id)

    def list(self) -> list[RemoteState]:
        data = self._call("GET", "/runs", "list")
        runs = data.get("runs") if isinstance(data, dict) else data
        if not isinstance(runs, list):
            expect_dict(None, self.backend, "list", "runs")
        return [state_from(r, self.base_url) for r in runs if isinstance(r, dict) and "id" in r]
