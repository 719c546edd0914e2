"""What every remote backend shares: the JobClient protocol, plans and handles, one JobStatus, retries with
exponential backoff and jitter, idempotency keys, credential lookup, and the Hugging Face token guard.

Retry rule (one place, every backend): a request is retried on HTTP 5xx, 429 and transport failures
(timeouts, refused/reset connections), at most ``max_attempts`` tries in all. The wait before retry ``n``
(n = 1, 2, …) is ``d = min(max_delay_s, base_delay_s · 2^(n-1))`` with "equal jitter": a uniform draw in
``[d/2, d]``. A 429 with ``Retry-After: S`` waits ``min(S, max_retry_after_s)`` instead. 401/403 are
credential errors and never retried; other 4xx are final. After the last try: ``carl.network`` (exit 4).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, TypeVar, runtime_checkable

from engine.errors import CARLError, CredentialError, HFTokenLeak, NetworkError, RemoteSubmitFailed, RunNotFound

if TYPE_CHECKING:  # pragma: no cover
    import httpx

    from engine.remote.config import RetrySettings

T = TypeVar("T")


# ------------------------------------------------------------------------------------------- errors
class RemoteBadResponse(CARLError):
    """The backend answered, but not with what its API promises (malformed JSON, missing fields)."""

    code = "carl.remote.bad_response"
    exit_code = 1
    default_hint = "The endpoint did not answer like the backend's API; check the base URL and retry."


class RemoteUnsupported(CARLError):
    code = "carl.remote.unsupported"
    exit_code = 2
    default_hint = "This backend's API does not offer that operation."


# ------------------------------------------------------------------------------------------- status
class JobStatus(str, Enum):
    """One status for every backend (each maps its own states onto these)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED)


@dataclass(frozen=True)
class JobPlan:
    """Everything a backend needs to start one job. Holds no secret values: ``secret_names`` only names the
    secrets each backend attaches at submit time from the environment."""

    backend: str
    name: str
    flavor: str
    hours: float
    image: str
    command: list[str]
    env: dict[str, str]
    idempotency_key: str
    gpu_count: int = 1
    secret_names: list[str] = field(default_factory=list)
    price_per_hour: float = 0.0
    estimated_usd: float = 0.0
    config_path: str | None = None

    @property
    def timeout_s(self) -> int:
        return max(60, int(round(self.hours * 3600)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RemoteState:
    """A backend's answer about one job, already mapped to carl's vocabulary."""

    remote_id: str
    status: JobStatus
    message: str | None = None
    started_at: float | None = None  # when it began running (unix seconds), if the backend says
    ended_at: float | None = None
    url: str | None = None
    cost_per_hour: float | None = None  # when the backend reports the real price
    raw_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass
class JobHandle:
    """What submit returns: the backend's id for the job (``remote_id``) and its first state."""

    backend: str
    remote_id: str
    state: RemoteState
    request: dict[str, Any] = field(default_factory=dict)  # the request as sent, secrets redacted
    deduplicated: bool = False  # the idempotency key matched a job that already existed


@runtime_checkable
class JobClient(Protocol):
    backend: str

    def preview(self, plan: JobPlan) -> dict[str, Any]:
        """The exact request submit would send (method, url, headers with secrets masked, body)."""

    def submit(self, plan: JobPlan) -> JobHandle: ...

    def status(self, remote_id: str) -> RemoteState: ...

    def logs(self, remote_id: str, follow: bool = False) -> Iterator[str]: ...

    def stop(self, remote_id: str) -> RemoteState: ...

    def list(self) -> list[RemoteState]: ...


# ------------------------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, s: "RetrySettings") -> "RetryPolicy":
        return cls(max_attempts=s.max_attempts, base_delay_s=s.base_delay_s, max_delay_s=s.max_delay_s,
                   max_retry_after_s=s.max_retry_after_s, timeout_s=s.timeout_s)

    def delay(self, retry: int, rng: random.Random | None = None, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based). See the module docstring."""
        if retry_after is not None:
            return max(0.0, min(float(retry_after), self.max_retry_after_s))
        d = min(self.max_delay_s, self.base_delay_s * (2 ** (retry - 1)))
        r = (rng or random).random()
        return d / 2 + r * d / 2


class Retryable(Exception):
    """Raised inside a retried call for a transient failure (5xx, 429, timeout, connection)."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (seconds from now)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def with_retries(call: Callable[[], T], policy: RetryPolicy, *, what: str, backend: str,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 on_retry: Callable[[int, Retryable, float], None] | None = None) -> T:
    """Run ``call`` until it returns, raises a non-retryable error, or ``policy.max_attempts`` tries failed
    with :class:`Retryable` (then ``carl.network``, exit 4, with every attempt's reason in the context)."""
    reasons: list[str] = []
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return call()
        except Retryable as exc:
            reasons.append(exc.reason)
            if attempt == policy.max_attempts:
                break
            wait = policy.delay(attempt, rng, exc.retry_after)
            if on_retry:
                on_retry(attempt, exc, wait)
            sleep(wait)
    raise NetworkError(f"{backend}: {what} failed after {policy.max_attempts} attempts: {reasons[-1]}",
                       hint="The backend kept failing or timing out; check its status page and the URL, then "
                            "retry (submits reuse their idempotency key, so a retry never starts a second job).",
                       context={"backend": backend, "operation": what, "attempts": policy.max_attempts,
                                "reasons": reasons})


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------- credentials
def require_token(env_var: str, backend: str, *, fallback: Callable[[], str | None] | None = None) -> str:
    """The token in ``$env_var`` (or ``fallback()``), else ``carl.credential`` (exit 3) naming the variable."""
    value = os.environ.get(env_var, "").strip()
    if not value and fallback is not None:
        value = (fallback() or "").strip()
    if not value:
        raise CredentialError(f"{backend}: no credential: ${env_var} is not set",
                              hint=f"export {env_var}=… (carl reads it from the environment and never stores it).",
                              context={"backend": backend, "env_var": env_var})
    return value


# ------------------------------------------------------------------------------------------- HTTP (httpx)
def http_once(client: "httpx.Client", method: str, url: str, *, policy: RetryPolicy, backend: str, what: str,
              json_body: Any = None, headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
              expect: str = "json") -> Any:
    """One try of an API call. ``expect``: "json" (the parsed body), "text" or "none".

    Transient failures raise :class:`Retryable`. 401/403 → ``carl.credential``; 404 → ``carl.run.not_found``;
    other 4xx → ``carl.remote.submit_failed`` for a submit, else ``carl.remote.bad_response``; malformed JSON
    likewise.
    """
    import httpx

    try:
        resp = client.request(method, url, json=json_body, headers=headers, params=params, timeout=policy.timeout_s)
    except httpx.TimeoutException as exc:
        raise Retryable(f"timeout ({type(exc).__name__}) after {policy.timeout_s:g}s") from None
    except httpx.TransportError as exc:
        raise Retryable(f"connection failed ({type(exc).__name__})") from None
    code = resp.status_code
    if code == 429:
        raise Retryable("HTTP 429 Too Many Requests", parse_retry_after(resp.headers.get("retry-after")), code)
    if code >= 500:
        raise Retryable(f"HTTP {code}", status=code)
    if code in (401, 403):
        raise CredentialError(f"{backend}: the credential was refused (HTTP {code}) during {what}",
                              hint="Check the token's value and permissions (a new one may be needed).",
                              context={"backend": backend, "status": code, "operation": what})
    if code == 404:
        raise RunNotFound(f"{backend}: not found (HTTP 404) during {what}", hint="Check the job id.",
                          context={"backend": backend, "url": url, "operation": what})
    if code >= 400:
        cls = RemoteSubmitFailed if what == "submit" else RemoteBadResponse
        raise cls(f"{backend}: {what} refused (HTTP {code}): {_short(resp.text)}",
                  context={"backend": backend, "status": code, "operation": what})
    if expect == "none":
        return None
    if expect == "text":
        return resp.text
    try:
        return resp.json()
    except (json.JSONDecodeError, ValueError):
        cls = RemoteSubmitFailed if what == "submit" else RemoteBadResponse
        raise cls(f"{backend}: {what}: the response is not valid JSON: {_short(resp.text)}",
                  context={"backend": backend, "status": code, "operation": what}) from None


def http_json(client: "httpx.Client", method: str, url: str, *, policy: RetryPolicy, backend: str, what: str,
              json_body: Any = None, headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
              expect: str = "json", sleep: Callable[[float], None] = time.sleep) -> Any:
    """:func:`http_once` under the retry rule of this module."""
    return with_retries(lambda: http_once(client, method, url, policy=policy, backend=backend, what=what,
                                          json_body=json_body, headers=headers, params=params, expect=expect),
                        policy, what=what, backend=backend, sleep=sleep)


def _short(text: str, n: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def expect_dict(data: Any, backend: str, what: str, *keys: str) -> dict[str, Any]:
    """``data`` as a dict holding ``keys``, else ``carl.remote.bad_response`` (submit: submit_failed)."""
    if isinstance(data, dict) and all(k in data for k in keys):
        return data
    cls = RemoteSubmitFailed if what == "submit" else RemoteBadResponse
    raise cls(f"{backend}: {what}: the response lacks {', '.join(keys) or 'an object'}",
              context={"backend": backend, "operation": what, "got": type(data).__name__})


def mask_auth(headers: dict[str, str]) -> dict[str, str]:
    """Headers as shown by --dry-run: Authorization values masked."""
    return {k: ("Bearer ***" if k.lower() == "authorization" else v) for k, v in headers.items()}


# ------------------------------------------------------------------------------------------- HF token guard
HF_TOKEN_VALUE = re.compile(r"hf_[A-Za-z0-9]{20,}")
HF_TOKEN_KEY = re.compile(r"^(hf|hugging_?face(_hub)?)_?(api_?|access_?|user_?)?token$", re.I)


def find_hf_token_leaks(payload: Any, *, allowed_top_level: tuple[str, ...] = ("secrets",)) -> list[str]:
    """Paths (``env.HF_TOKEN``, ``config.items[2]``) where ``payload`` carries a Hugging Face token: a string
    (or dict key) containing ``hf_`` + 20 or more letters/digits, or a key named like ``hf_token`` /
    ``HF_TOKEN`` / ``huggingface_hub_token``. The top-level keys in ``allowed_top_level`` are not searched."""
    found: list[str] = []

    def walk(node: Any, path: str, top: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                ks = str(k)
                if top and ks in allowed_top_level:
                    continue
                sub = f"{path}.{ks}" if path else ks
                if HF_TOKEN_KEY.match(ks) or HF_TOKEN_VALUE.search(ks):
                    found.append(sub)
                walk(v, sub, False)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", False)
        elif isinstance(node, (str, bytes)):
            text = node.decode("utf-8", "replace") if isinstance(node, bytes) else node
            if HF_TOKEN_VALUE.search(text):
                found.append(path or "(root)")

    walk(payload, "", True)
    return found


def guard_hf_token(payload: Any, backend: str) -> None:
    """Refuse (``carl.remote.hf_token_leak``, exit 2) a payload that carries an HF token outside ``secrets``."""
    leaks = find_hf_token_leaks(payload)
    if leaks:
        raise HFTokenLeak(f"{backend}: the request carries a Hugging Face token outside its secrets field "
                          f"(at {', '.join(leaks[:3])}{'…' if len(leaks) > 3 else ''}); nothing was sent",
                          context={"backend": backend, "paths": leaks})
