"""engine.errors: stable codes, exit codes per the contract, one-line messages, and redaction that never lets a
secret through ``to_dict()`` (property-tested with hypothesis)."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import errors as E

CONTRACT_CODES = {
    "carl.error", "carl.config", "carl.validation", "carl.credential", "carl.network", "carl.budget",
    "carl.permission", "carl.timeout", "carl.probe.shape", "carl.probe.nonfinite", "carl.run.not_found",
    "carl.ledger.broken_chain", "carl.ledger.signature_invalid", "carl.ledger.locked", "carl.remote.submit_failed",
    "carl.remote.hf_token_leak", "carl.approval.required",
}


def test_every_contract_code_has_a_class_and_codes_are_namespaced():
    codes = {cls.code for cls in E.ALL_ERRORS}
    assert CONTRACT_CODES <= codes
    assert all(c.startswith("carl.") for c in codes)
    assert len(codes) == len(E.ALL_ERRORS), "two classes share a code"


@pytest.mark.parametrize("cls, exit_code", [
    (E.CARLError, 1), (E.ConfigError, 2), (E.ValidationError, 2), (E.CredentialError, 3), (E.NetworkError, 4),
    (E.BudgetError, 5), (E.PermissionDenied, 5), (E.ApprovalRequired, 5), (E.ProbeShapeError, 2),
    (E.ProbeNonFiniteError, 2), (E.LedgerBrokenChain, 1), (E.LedgerSignatureInvalid, 1), (E.Interrupted, 130),
])
def test_exit_codes_follow_the_contract(cls, exit_code):
    assert cls("x").exit_code == exit_code


def test_message_is_one_line_with_hint_and_context():
    err = E.ConfigError("bad\n  value\tthere", context={"field": "grpo.max_steps"})
    d = err.to_dict()["error"]
    assert d == {"code": "carl.config", "message": "bad value there", "hint": E.ConfigError.default_hint,
                 "context": {"field": "grpo.max_steps"}}
    assert E.CARLError("x", hint="do y").hint == "do y"
    assert E.CARLError("x", code="carl.config.custom").code == "carl.config.custom"
    json.dumps(err.to_dict())  # serialisable


def test_probe_errors_are_validation_errors():
    assert issubclass(E.ProbeShapeError, E.ValidationError)
    assert issubclass(E.LedgerSignatureInvalid, E.LedgerBrokenChain)


def test_redaction_by_key_and_value():
    ctx = {
        "api_key": "abc", "HF_TOKEN": "whatever", "Authorization": "Bearer abc.def-ghi", "password": 123456,
        "nested": {"client_secret": ["x", "y"], "note": "token sk-ant-api03-AAAAbbbbCCCC in text"},
        "list": ["hf_ABCDEFGHijklmnop", {"cookie": "c=1"}],
        "n_tokens": 17, "max_tokens": 5, "has_token": True, "api_key_env": "ANTHROPIC_API_KEY",
        "url": "https://x?token=abcdef123&x=1", "log": 'sent {"password": "hunter22"}',
    }
    out = E.CARLError("failed with Bearer abcdefgh12345 and hf_zzzzzzzzzzzz", context=ctx).to_dict()["error"]
    text = json.dumps(out)
    for secret in ("abc.def-ghi", "123456", "sk-ant-api03-AAAAbbbbCCCC", "hf_ABCDEFGHijklmnop", "c=1",
                   "abcdef123", "hunter22", "abcdefgh12345", "hf_zzzzzzzzzzzz", "whatever"):
        assert secret not in text, secret
    c = out["context"]
    assert c["api_key"] == "***" and c["password"] == "***" and c["nested"]["client_secret"] == ["***", "***"]
    # counts, flags and env-var names stay readable
    assert c["n_tokens"] == 17 and c["max_tokens"] == 5 and c["has_token"] is True
    assert c["api_key_env"] == "ANTHROPIC_API_KEY"
    assert c["url"].startswith("https://x?token=***")


def test_secret_shaped_dict_keys_are_redacted_too():
    out = E.redact({"hf_abcdefghijklmnop": 1})
    assert "hf_abcdefghijklmnop" not in json.dumps(out)


def test_mask_secret_shows_prefix_and_last_four_only():
    token = "hf_" + "Q" * 30 + "abcd"
    shown = E.mask_secret(token)
    assert shown == f"set (hf_…abcd, {len(token)} chars)"
    assert token not in shown and "Q" * 5 not in shown
    assert E.mask_secret("sk-ant-" + "x" * 40 + "wxyz").startswith("set (sk-ant-…wxyz")
    assert E.mask_secret("short") == "set (…, 5 chars)"  # too short to show any of it
    assert E.mask_secret(None) == "not set" and E.mask_secret("") == "not set"


# ------------------------------------------------------------------------------------------ properties
_alnum = string.ascii_letters + string.digits
secret_values = st.one_of(
    st.builds(lambda s: "hf_" + s, st.text(_alnum, min_size=8, max_size=40)),
    st.builds(lambda s: "sk-" + s, st.text(_alnum + "-_", min_size=8, max_size=60)),
    st.builds(lambda s: "sk-ant-api03-" + s, st.text(_alnum + "-_", min_size=8, max_size=60)),
    st.builds(lambda s: "rpa_" + s, st.text(_alnum, min_size=8, max_size=40)),
)
bearer_values = st.builds(lambda b, s: f"{b} {s}", st.sampled_from(["Bearer", "bearer", "BEARER"]),
                          st.text(_alnum + "._-", min_size=8, max_size=40).filter(lambda s: s[0] not in "._-"))
# surrounding text that cannot glue onto a token (a separator on each side)
filler = st.text(string.ascii_letters + " .,:;!?()[]{}\"'", max_size=20)
secret_key_names = st.sampled_from(["api_key", "token", "hf_token", "ANTHROPIC_API_KEY", "secret", "password",
                                    "Authorization", "bearer", "client_secret", "x-api-key", "refresh_token"])
plain_keys = st.sampled_from(["path", "detail", "message", "run", "hint", "items", "field"])


def _embedded(secret):
    return st.tuples(filler, filler).map(lambda lr: f"{lr[0]} {secret} {lr[1]}")


@st.composite
def contexts_with_secret(draw):
    """A nested context carrying one secret: as a value anywhere, inside text, or under a secret-shaped key."""
    secret = draw(st.one_of(secret_values, bearer_values))
    how = draw(st.sampled_from(["value", "text", "key", "opaque_under_key"]))
    if how == "value":
        leaf = secret
    elif how == "text":
        leaf = draw(_embedded(secret))
    else:
        leaf = secret
    if how == "opaque_under_key":  # any string under a secret key is masked, even one with no known shape
        secret = draw(st.text(_alnum, min_size=6, max_size=30))
        leaf = secret
    key = draw(secret_key_names) if how in ("key", "opaque_under_key") else draw(plain_keys)
    node = {key: leaf}
    for _ in range(draw(st.integers(0, 4))):
        node = draw(st.sampled_from([
            lambda n: {draw(plain_keys): n},
            lambda n: [n],
            lambda n: [1, "x", n],
            lambda n: {"a": 1, draw(plain_keys): [n, None]},
        ]))(node)
    return secret, node, how != "opaque_under_key"


@settings(max_examples=300, deadline=None)
@given(contexts_with_secret(), st.sampled_from(list(E.ALL_ERRORS)))
def test_no_secret_survives_to_dict(data, cls):
    secret, context, shaped = data
    # a secret with a known shape may appear anywhere; an opaque one only where its key says what it is
    msg, hint = (f"could not use {secret}", f"check {secret}") if shaped else ("could not connect", None)
    err = cls(msg, hint=hint, context={"ctx": context})
    text = json.dumps(err.to_dict())
    assert secret not in text
    assert secret not in str(err)


@settings(max_examples=200, deadline=None)
@given(secret_values, filler, filler)
def test_redact_text_masks_embedded_tokens(secret, left, right):
    out = E.redact_text(f"{left} {secret}{right[:1] if right[:1] in ' .,;' else ' '}{right}")
    assert secret not in out
    assert E.REDACTED in out


@settings(max_examples=200, deadline=None)
@given(st.text(string.ascii_letters + " ", max_size=60))
def test_plain_text_is_untouched(text):
    if "bearer" in text.lower() or any(w in text.lower() for w in ("token", "secret", "password", "key")):
        return
    assert E.redact_text(text) == text
