"""RunPod pods through RunPod's REST API (``Authorization: Bearer $RUNPOD_API_KEY``; base URL configurable,
default https://rest.runpod.io/v1).

    POST   /pods              {"name", "imageName", "gpuTypeIds", "gpuCount", "cloudType", "containerDiskInGb",
                               "env", "dockerStartCmd"} → the pod {"id", "desiredStatus", "costPerHr", …}
    GET    /pods/{id}         → the pod
    GET    /pods?name=NAME    → [pods]   (used to make submits idempotent)
    POST   /pods/{id}/stop
    DELETE /pods/{id}

RunPod has no idempotency header, so the idempotency key is part of the pod's name
(``carl-<project>-<key[:12]>``) and every try of a submit first looks the name up: a retry after a 5xx that did
create the pod finds it instead of starting a second one. A Hugging Face token is never sent to RunPod: set
``remote.runpod.hf_token_secret`` to the name of a RunPod secret and the pod gets
``HF_TOKEN={{ RUNPOD_SECRET_<name> }}``. RunPod's REST API has no log endpoint: ``logs`` says so.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from engine.remote.base import (
    JobHandle, JobPlan, JobStatus, RemoteState, RemoteUnsupported, RetryPolicy, expect_dict, guard_hf_token,
    http_json, http_once, mask_auth, require_token, with_retries,
)
from engine.remote.config import RunPodSettings

STATUS_MAP = {
    "CREATED": JobStatus.QUEUED, "PROVISIONING": JobStatus.QUEUED, "STARTING": JobStatus.QUEUED,
    "RUNNING": JobStatus.RUNNING, "EXITED": JobStatus.COMPLETED, "TERMINATED": JobStatus.STOPPED,
}


def pod_name(plan: JobPlan) -> str:
    return f"{plan.name}-{plan.idempotency_key[:12]}"


def state_from(pod: dict[str, Any]) -> RemoteState:
    raw = str(pod.get("desiredStatus") or pod.get("status") or "").upper()
    status = STATUS_MAP.get(raw, JobStatus.UNKNOWN)
    if status is JobStatus.RUNNING and pod.get("runtime") is None and "runtime" in pod:
        status = JobStatus.QUEUED  # desired RUNNING, container not up yet
    cph = pod.get("costPerHr")
    return RemoteState(remote_id=str(pod["id"]), status=status, raw_status=raw or None,
                       message=pod.get("lastStatusChange"), url=f"https://www.runpod.io/console/pods/{pod['id']}",
                       cost_per_hour=float(cph) if isinstance(cph, (int, float)) else None)


class RunPodClient:
    backend = "runpod"

    def __init__(self, settings: RunPodSettings, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.policy = policy
        self._sleep = sleep
        self._client = None

    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(follow_redirects=True)
        return self._client

    def _headers(self) -> dict[str, str]:
        token = require_token(self.settings.token_env, self.backend)
        return {"Authorization": f"Bearer {token}", "Accept": "application/json", "User-Agent": "carl"}

    def _call(self, method: str, path: str, what: str, *, body: Any = None, params: dict[str, Any] | None = None,
              expect: str = "json") -> Any:
        return http_json(self._http(), method, f"{self.base_url}{path}", policy=self.policy, backend=self.backend,
                         what=what, json_body=body, headers=self._headers(), params=params, expect=expect,
                         sleep=self._sleep)

    def body(self, plan: JobPlan) -> dict[str, Any]:
        env = dict(plan.env)
        if self.settings.hf_token_secret and "HF_TOKEN" in plan.secret_names:
            env["HF_TOKEN"] = self._secret_ref()
        return {"name": pod_name(plan), "imageName": plan.image, "gpuTypeIds": [plan.flavor],
                "gpuCount": plan.gpu_count, "cloudType": self.settings.cloud_type,
                "containerDiskInGb": self.settings.container_disk_gb, "env": env,
                "dockerStartCmd": list(plan.command)}

    def _secret_ref(self) -> str:
        return "{{ RUNPOD_SECRET_%s }}" % self.settings.hf_token_secret

    def preview(self, plan: JobPlan) -> dict[str, Any]:
        return {"method": "POST", "url": f"{self.base_url}/pods",
                "headers": mask_auth({"Authorization": "Bearer ***", "Content-Type": "application/json"}),
                "json": self.body(plan)}

    def _find_by_name(self, name: str, headers: dict[str, str]) -> dict[str, Any] | None:
        pods = http_once(self._http(), "GET", f"{self.base_url}/pods", policy=self.policy, backend=self.backend,
                         what="submit", headers=headers, params={"name": name})
        if isinstance(pods, dict):
            pods = pods.get("pods", [])
        for pod in pods if isinstance(pods, list) else []:
            if isinstance(pod, dict) and pod.get("name") == name and "id" in pod:
                return pod
        return None

    def submit(self, plan: JobPlan) -> JobHandle:
        body = self.body(plan)
        checked = {**body, "env": {k: v for k, v in body["env"].items()
                                   if not (k == "HF_TOKEN" and v == self._secret_ref())}}
        guard_hf_token(checked, self.backend)  # the one HF_TOKEN allowed is the RunPod secret reference
        headers = self._headers()

        def attempt() -> tuple[dict[str, Any], bool]:
            existing = self._find_by_name(body["name"], headers)
            if existing is not None:
                return existing, True
            pod = http_once(self._http(), "POST", f"{self.base_url}/pods", policy=self.policy, backend=self.backend,
                            what="submit", json_body=body, headers=headers)
            return expect_dict(pod, self.backend, "submit", "id"), False

        pod, dedup = with_retries(attempt, self.policy, what="submit", backend=self.backend, sleep=self._sleep)
        return JobHandle(backend=self.backend, remote_id=str(pod["id"]), state=state_from(pod),
                         request=self.preview(plan), deduplicated=dedup)

    def status(self, remote_id: str) -> RemoteState:
        return state_from(expect_dict(self._call("GET", f"/pods/{remote_id}", "status"), self.backend, "status", "id"))

    def logs(self, remote_id: str, follow: bool = False) -> Iterator[str]:
        raise RemoteUnsupported("runpod: RunPod's REST API has no log endpoint",
                                hint="Open the pod's logs in the RunPod console, or have the job log to a trackio "
                                     "Space and watch it with `carl observe --url …`.",
                                context={"backend": self.backend, "remote_id": remote_id})

    def stop(self, remote_id: str) -> RemoteState:
        """Stop the pod, then delete it, so neither GPU time nor its disk keeps billing."""
        self._call("POST", f"/pods/{remote_id}/stop", "stop", body={}, expect="none")
        self._call("DELETE", f"/pods/{remote_id}", "stop", expect="none")
        return RemoteState(remote_id=remote_id, status=JobStatus.STOPPED, raw_status="TERMINATED",
                           ended_at=time.time())

    def list(self) -> list[RemoteState]:
        pods = self._call("GET", "/pods", "list")
        if isinstance(pods, dict):
            pods = pods.get("pods", [])
        return [state_from(p) for p in pods if isinstance(p, dict) and "id" in p]
