"""Typed errors with stable codes (see ../shared/CONTRACT.md).

Every error carries a one-line ``message``, a ``hint`` that says what to do, and a ``context`` dict.
``to_dict()`` is what batch mode prints on stderr; it redacts anything secret-shaped, so an error can
never leak a token into a terminal, a log or the ledger.
"""

from __future__ import annotations

import os
import re
from typing import Any

# Keys whose values are secrets whatever they hold. A bare ``key`` (a pipeline stage's key, a sort key, a cache
# key) is an ordinary field: only names that say *which* key is secret (``api_key``, ``private_key``…) count.
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|passphrase|authorization|bearer|credential|cookie"
                         r"|(api|private|access|signing|auth|client|master|encryption|ssh|license)[_-]?key)", re.I)
# Values that look like secrets wherever they appear (also inside longer strings).
_SECRET_VALUE = re.compile(
    r"(hf_[A-Za-z0-9]{8,}"  # Hugging Face tokens
    r"|sk-[A-Za-z0-9_\-]{8,}"  # Anthropic / OpenAI style keys (sk-ant-…, sk-proj-…)
    r"|rpa_[A-Za-z0-9]{8,}"  # RunPod API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{4,}=*)"  # Authorization: Bearer …
)
# ``password=hunter2`` / ``"api_key": "abc"`` / ``TOKEN: xyz`` inside free text: keep the name, mask the value.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:[A-Za-z0-9]+[_-])*(?:api[_-]?key|token|secret|password|passwd|authorization)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}\]]+)"
)
REDACTED = "***"
# Keys that match _SECRET_KEY but carry no secret (counts, names of env vars, hashes).
_SAFE_KEYS = {"max_tokens", "input_tokens", "output_tokens", "cache_read_input_tokens",
              "cache_creation_input_tokens", "key_path", "public_key", "token_ids", "tokens",
              "n_tokens", "max_new_tokens", "tokenizer", "api_key_env", "signer", "keys",
              "max_completion_length_tokens", "token_env", "secret_names", "total_tokens",
              "has_token", "token_present"}
# Numbers under a secret-shaped key are kept only when the key names a count.
_COUNT_KEY = re.compile(r"(^(n|num|max|min|total)_|_(count|tokens|len|length|chars)$)", re.I)


def _env_secret_values() -> list[str]:
    """Values of this process's secret-named environment variables (``HF_TOKEN``, ``*_API_KEY``…), longest first:
    a secret of no known shape is still masked wherever it turns up."""
    vals = {v for k, v in os.environ.items()
            if len(v) >= 8 and not v.startswith("/") and _SECRET_KEY.search(k) and k.lower() not in _SAFE_KEYS}
    return sorted(vals, key=len, reverse=True)


def redact_text(text: str) -> str:
    """Mask secret-shaped substrings of ``text`` (token formats, ``name=value`` assignments, and the values of
    secret-named environment variables)."""
    for value in _env_secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    text = _SECRET_VALUE.sub(REDACTED, text)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED if m.group(2) != REDACTED else m.group(0), text)


def _is_secret_key(key: str | None) -> bool:
    return key is not None and key.lower() not in _SAFE_KEYS and bool(_SECRET_KEY.search(key))


def redact(value: Any, _key: str | None = None) -> Any:
    """Return a copy of ``value`` with secret-shaped keys and values masked (recursively).

    Under a secret-shaped key (``api_key``, ``hf_token``, ``Authorization`` …) every non-empty string becomes
    ``***``; booleans and ``None`` are kept (``has_token: true`` tells nothing), numbers are kept only when the
    key names a count (``n_tokens``); containers are searched further. Everywhere else, strings are scanned for
    secret-shaped substrings (``hf_…``, ``sk-…``, ``Bearer …``, ``password=…``). Dict keys are scanned too.
    """
    if isinstance(value, dict):
        return {redact_text(str(k)): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v, _key) for v in value]
    secret_key = _is_secret_key(_key)
    if isinstance(value, str):
        return REDACTED if (secret_key and value) else redact_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return REDACTED if (secret_key and not _COUNT_KEY.search(_key or "")) else value
    if isinstance(value, bytes):
        return REDACTED if secret_key else redact_text(value.decode("utf-8", "replace"))
    # anything else (paths, numpy scalars, objects): judged by its text
    return REDACTED if secret_key else redact_text(str(value))


def mask_secret(value: str | None) -> str:
    """How carl shows a secret it found: ``set (hf_…abcd, 37 chars)`` — at most a known prefix and the
    last 4 characters (none of it for values shorter than 12), never the rest."""
    if not value:
        return "not set"
    m = re.match(r"(hf_|sk-ant-|sk-|rpa_)", value)
    prefix = m.group(1) if m else ""
    tail = value[-4:] if len(value) >= 12 else ""
    shown = f"{prefix}…{tail}" if (prefix or tail) else "…"
    return f"set ({shown}, {len(value)} chars)"


class CARLError(Exception):
    """Base of every error carl raises on purpose. ``code`` is stable; ``exit_code`` per the contract."""

    code = "carl.error"
    exit_code = 1
    default_hint = "Run `carl --batch doctor` to check the installation."

    def __init__(self, message: str, *, hint: str | None = None, context: dict[str, Any] | None = None,
                 code: str | None = None):
        message = " ".join(str(message).split())  # one line
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.context = dict(context or {})
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": redact_text(self.message),
                          "hint": redact_text(self.hint or ""), "context": redact(self.context)}}

    def __str__(self) -> str:
        return redact_text(self.message)


class ConfigError(CARLError):
    code = "carl.config"
    exit_code = 2
    default_hint = "Fix carl.yaml (see `carl --batch project validate`)."


class ValidationError(CARLError):
    code = "carl.validation"
    exit_code = 2
    default_hint = "Check the arguments with `carl --batch VERB --help`."


class CredentialError(CARLError):
    code = "carl.credential"
    exit_code = 3
    default_hint = "Set the credential in the environment (it is never stored by carl)."


class NetworkError(CARLError):
    code = "carl.network"
    exit_code = 4
    default_hint = "Check the network and the endpoint URL, then retry."


class BudgetError(CARLError):
    code = "carl.budget"
    exit_code = 5
    default_hint = "Raise the budget cap in carl.yaml or lower the estimated cost."


class PermissionDenied(CARLError):
    code = "carl.permission"
    exit_code = 5
    default_hint = "Check file permissions and the ledger policy."


class ApprovalRequired(CARLError):
    code = "carl.approval.required"
    exit_code = 5
    default_hint = "Re-run with --approve (or approve in the workbench) if you accept the cost."


class TimeoutError_(CARLError):
    code = "carl.timeout"
    exit_code = 1
    default_hint = "Retry, or raise the timeout."


class ProbeShapeError(ValidationError):
    code = "carl.probe.shape"
    default_hint = "Logits must be [T, V] or [B, T, V]; tokens [T] or [B, T] matching them."


class ProbeNonFiniteError(ValidationError):
    code = "carl.probe.nonfinite"
    default_hint = "Pass --allow-masked if -inf marks masked vocabulary entries."


class RunNotFound(CARLError):
    code = "carl.run.not_found"
    exit_code = 2
    default_hint = "List runs with `carl --batch run list`."


class LedgerBrokenChain(CARLError):
    code = "carl.ledger.broken_chain"
    exit_code = 1
    default_hint = "Run `carl --batch ledger verify` to find the first bad block."


class LedgerSignatureInvalid(LedgerBrokenChain):
    code = "carl.ledger.signature_invalid"


class LedgerLocked(CARLError):
    code = "carl.ledger.locked"
    exit_code = 1
    default_hint = "Another process holds the ledger lock; retry in a moment."


class RemoteSubmitFailed(CARLError):
    code = "carl.remote.submit_failed"
    exit_code = 1
    default_hint = "Check the backend's status page and the job plan, then retry."


class HFTokenLeak(CARLError):
    code = "carl.remote.hf_token_leak"
    exit_code = 2
    default_hint = "Pass Hugging Face tokens only through the job's secrets, never in the payload."


class Interrupted(CARLError):
    code = "carl.interrupted"
    exit_code = 130
    default_hint = "State was flushed; resume where supported (e.g. `carl --batch run resume RUN`)."


ALL_ERRORS: tuple[type[CARLError], ...] = (
    CARLError, ConfigError, ValidationError, CredentialError, NetworkError, BudgetError, PermissionDenied,
    ApprovalRequired, TimeoutError_, ProbeShapeError, ProbeNonFiniteError, RunNotFound, LedgerBrokenChain,
    LedgerSignatureInvalid, LedgerLocked, RemoteSubmitFailed, HFTokenLeak, Interrupted,
)


class ResourceOOM(CARLError):
    """Out of memory while computing logits or a per-token field; the hint names the budget to lower."""

    code = "carl.resource.oom"
    exit_code = 1
    default_hint = "Lower compute.logits_budget_mb (or eval.n_samples / grpo.max_completion_length)."


class RunHung(CARLError):
    """A multi-process run made no progress within its watchdog (engine/trainer/supervisor.py)."""

    code = "carl.run.hung"
    exit_code = 1
    default_hint = ("The message names the stuck rank and what it was doing; its stack is in the run's ranks/ "
                    "folder. Resume with `carl --batch run resume RUN`; compute.hang_timeout_s sets the watchdog.")


ALL_ERRORS = (*ALL_ERRORS, ResourceOOM, RunHung)
