"""Hugging Face Jobs through ``huggingface_hub``'s jobs API (``run_job``, ``inspect_job``, ``fetch_job_logs``,
``cancel_job``, ``list_jobs``). The Hub URL is ``remote.hf.endpoint``, else ``$HF_ENDPOINT``, else
https://huggingface.co; the token is ``$HF_TOKEN`` (``remote.hf.token_env``), else the one saved by
``hf auth login``. It reaches the job only as a secret (``secrets={"HF_TOKEN": …}``), never in its env.

Endpoints used (all under ``{endpoint}/api``): ``GET whoami-v2`` (the namespace, when none is configured),
``POST jobs/{ns}``, ``GET jobs/{ns}?label=k=v`` (idempotency lookup), ``GET jobs/{ns}/{id}``,
``GET jobs/{ns}/{id}/logs`` (server-sent events), ``POST jobs/{ns}/{id}/cancel``.

Idempotency: HF Jobs takes no idempotency header, so the key travels as the label ``carl-key`` and every try
of a submit first lists the namespace's jobs with that label: a retry (or a second ``jobs submit`` with the same
``--idempotency-key``) finds the job instead of starting another. Stages map: SCHEDULING → queued, RUNNING →
running, COMPLETED → completed, ERROR → failed, CANCELED/DELETED → stopped.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, TypeVar

from engine.errors import CredentialError, NetworkError, RemoteSubmitFailed, RunNotFound
from engine.remote.base import (
    JobHandle, JobPlan, JobStatus, RemoteBadResponse, RemoteState, RetryPolicy, Retryable, guard_hf_token,
    mask_auth, require_token, with_retries,
)
from engine.remote.config import HFSettings

T = TypeVar("T")
DEFAULT_ENDPOINT = "https://huggingface.co"
IDEMPOTENCY_LABEL = "carl-key"

STAGE_MAP = {
    "SCHEDULING": JobStatus.QUEUED, "RUNNING": JobStatus.RUNNING, "COMPLETED": JobStatus.COMPLETED,
    "ERROR": JobStatus.FAILED, "CANCELED": JobStatus.STOPPED, "DELETED": JobStatus.STOPPED,
}


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def resolve_endpoint(settings: HFSettings) -> str:
    return (settings.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _translate(fn: Callable[[], T], what: str) -> T:
    """Run one huggingface_hub call, mapping its exceptions onto carl's (transient ones to Retryable)."""
    import httpcore2
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        return fn()
    except OfflineModeIsEnabled:
        raise NetworkError("hf: HF_HUB_OFFLINE is set, so huggingface_hub refuses to reach the Hub",
                           hint="Unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to submit or watch HF Jobs.",
                           context={"backend": "hf", "operation": what}) from None
    except LocalTokenNotFoundError:
        raise CredentialError("hf: no credential: $HF_TOKEN is not set", hint="export HF_TOKEN=… (or `hf auth login`).",
                              context={"backend": "hf", "env_var": "HF_TOKEN"}) from None
    except HfHubHTTPError as exc:
        resp = getattr(exc, "response", None)
        code = getattr(resp, "status_code", None)
        if code == 429:
            from engine.remote.base import parse_retry_after

            raise Retryable("HTTP 429 Too Many Requests", parse_retry_after(resp.headers.get("retry-after")), 429) from None
        if code is not None and code >= 500:
            raise Retryable(f"HTTP {code}", status=code) from None
        if code in (401, 403):
            raise CredentialError(f"hf: the Hub refused the token (HTTP {code}) during {what}",
                                  hint="Check $HF_TOKEN: it needs write access to the job's namespace.",
                                  context={"backend": "hf", "status": code, "operation": what}) from None
        if code == 404:
            raise RunNotFound(f"hf: not found (HTTP 404) during {what}", hint="Check the job id and namespace.",
                              context={"backend": "hf", "operation": what}) from None
        cls = RemoteSubmitFailed if what == "submit" else RemoteBadResponse
        first = str(exc).splitlines()[0] if str(exc) else f"HTTP {code}"
        raise cls(f"hf: {what} refused: {first}", context={"backend": "hf", "status": code, "operation": what}) from None
    except (httpx2.TimeoutException, httpcore2.TimeoutException) as exc:
        raise Retryable(f"timeout ({type(exc).__name__})") from None
    except httpx2.TransportError as exc:
        raise Retryable(f"connection failed ({type(exc).__name__})") from None
    except (ValueError, KeyError, TypeError) as exc:  # malformed JSON or a JobInfo missing fields
        cls = RemoteSubmitFailed if what == "submit" else RemoteBadResponse
        raise cls(f"hf: {what}: the Hub's answer was not a job ({type(exc).__name__})",
                  context={"backend": "hf", "operation": what}) from None


def state_from(job: Any) -> RemoteState:
    stage = str(getattr(job.status.stage, "value", job.status.stage))
    return RemoteState(remote_id=job.id, status=STAGE_MAP.get(stage, JobStatus.UNKNOWN), raw_status=stage,
                       message=job.status.message,
                       started_at=job.started_at.timestamp() if job.started_at else None,
                       ended_at=job.finished_at.timestamp() if job.finished_at else None, url=job.url)


class HFJobsClient:
    backend = "hf"

    def __init__(self, settings: HFSettings, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.policy = policy
        self.endpoint = resolve_endpoint(settings)
        self._sleep = sleep
        self._api_obj = None
        self._ns: str | None = settings.namespace

    def _token(self) -> str:
        return require_token(self.settings.token_env, self.backend, fallback=_saved_token)

    def _api(self):
        if self._api_obj is None:
            from huggingface_hub import HfApi

            self._api_obj = HfApi(endpoint=self.endpoint, token=self._token(), library_name="carl")
        return self._api_obj

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(lambda: _translate(fn, what), self.policy, what=what, backend=self.backend,
                            sleep=self._sleep)

    def namespace(self) -> str:
        if self._ns is None:
            who = self._retry("whoami", lambda: self._api().whoami())
            self._ns = str(who["name"])
        return self._ns

    def spec(self, plan: JobPlan, *, mask: bool) -> dict[str, Any]:
        """The job spec huggingface_hub sends for ``plan`` (secrets masked when ``mask``)."""
        secrets = {"HF_TOKEN": "***" if mask else self._token()} if "HF_TOKEN" in plan.secret_names else {}
        spec: dict[str, Any] = {"command": list(plan.command), "arguments": [], "environment": dict(plan.env),
                                "flavor": plan.flavor, "timeoutSeconds": plan.timeout_s,
                                "labels": {"carl": "1", IDEMPOTENCY_LABEL: plan.idempotency_key, "name": plan.name},
                                "dockerImage": plan.image}
        if secrets:
            spec["secrets"] = secrets
        return spec

    def preview(self, plan: JobPlan) -> dict[str, Any]:
        ns = self.settings.namespace or "{namespace of the token's user}"
        return {"method": "POST", "url": f"{self.endpoint}/api/jobs/{ns}",
                "headers": mask_auth({"Authorization": "Bearer ***"}), "json": self.spec(plan, mask=True)}

    def submit(self, plan: JobPlan) -> JobHandle:
        spec = self.spec(plan, mask=False)
        guard_hf_token(spec, self.backend)
        api, ns = self._api(), self.namespace()

        def attempt() -> tuple[Any, bool]:
            found = list(api.list_jobs(labels={IDEMPOTENCY_LABEL: plan.idempotency_key}, namespace=ns))
            if found:
                return found[0], True
            job = api.run_job(image=plan.image, command=list(plan.command), env=dict(plan.env),
                              secrets=spec.get("secrets"), flavor=plan.flavor, timeout=plan.timeout_s,
                              name=plan.name, labels={"carl": "1", IDEMPOTENCY_LABEL: plan.idempotency_key},
                              namespace=ns)
            return job, False

        job, dedup = self._retry("submit", attempt)
        return JobHandle(backend=self.backend, remote_id=job.id, state=state_from(job), request=self.preview(plan),
                         deduplicated=dedup)

    def status(self, remote_id: str) -> RemoteState:
        api, ns = self._api(), self.namespace()
        return state_from(self._retry("status", lambda: api.inspect_job(job_id=remote_id, namespace=ns)))

    def logs(self, remote_id: str, follow: bool = False) -> Iterator[str]:
        api, ns = self._api(), self.namespace()
        it = iter(_translate(lambda: api.fetch_job_logs(job_id=remote_id, namespace=ns, follow=follow), "logs"))
        sentinel = object()
        while True:
            try:
                line = _translate(lambda: next(it, sentinel), "logs")
            except Retryable as exc:
                raise NetworkError(f"hf: the log stream failed: {exc.reason}",
                                   context={"backend": "hf", "remote_id": remote_id}) from None
            if line is sentinel:
                return
            yield str(line)

    def stop(self, remote_id: str) -> RemoteState:
        api, ns = self._api(), self.namespace()
        self._retry("stop", lambda: api.cancel_job(job_id=remote_id, namespace=ns))
        return self.status(remote_id)

    def list(self) -> list[RemoteState]:
        api, ns = self._api(), self.namespace()
        jobs = self._retry("list", lambda: list(api.list_jobs(labels={"carl": "1"}, namespace=ns)))
        return [state_from(j) for j in jobs]
