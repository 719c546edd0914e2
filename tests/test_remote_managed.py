"""The managed endpoint backend: a loopback server speaking its API, respx fault injection (5xx then success,
429 with Retry-After, timeouts, malformed JSON, 401), idempotent submits, and the HF-token guard searched
through hypothesis-generated nestings."""

from __future__ import annotations

import random

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import CredentialError, HFTokenLeak, NetworkError, RemoteSubmitFailed
from engine.remote.base import (
    JobPlan, JobStatus, RetryPolicy, find_hf_token_leaks, guard_hf_token, new_idempotency_key,
)
from engine.remote.config import ManagedSettings
from engine.remote.managed import ManagedClient

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.002, timeout_s=2.0)
REAL_TOKEN = "hf_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9"


def plan(key: str | None = None, **kw) -> JobPlan:
    base = dict(backend="managed", name="carl-demo", flavor="gpu-1x", hours=1.0, image="img:1",
                command=["sh", "-c", "carl --batch train --config /tmp/carl.yaml"], env={"A": "1"},
                idempotency_key=key or new_idempotency_key())
    base.update(kw)
    return JobPlan(**base)


@pytest.fixture
def fake(managed):
    return managed


def client(url: str, policy: RetryPolicy = FAST, sleeps: list | None = None, **kw) -> ManagedClient:
    return ManagedClient(ManagedSettings(url=url, **kw), policy, poll_interval_s=0.01,
                         sleep=(sleeps.append if sleeps is not None else (lambda s: None)))


# ------------------------------------------------------------------------------------------- loopback
def test_submit_status_logs_stop_on_the_wire(fake):
    c = client(f"{fake.url}/api")
    p = plan()
    h = c.submit(p)
    assert h.state.status is JobStatus.QUEUED and h.remote_id in fake.runs
    post = fake.calls("POST", "/api/runs")[0]
    assert post.headers["idempotency-key"] == p.idempotency_key
    assert post.headers["authorization"] == f"Bearer {fake.token}"
    assert post.body["flavor"] == "gpu-1x" and post.body["command"][0] == "sh" and post.body["secrets"] == {}

    fake.runs[h.remote_id]["status"] = "running"
    assert c.status(h.remote_id).status is JobStatus.RUNNING
    fake.logs[h.remote_id] += ["hello", '{"type": "frame", "step": 3}']
    assert list(c.logs(h.remote_id)) == ["hello", '{"type": "frame", "step": 3}']
    st_ = c.stop(h.remote_id)
    assert st_.status is JobStatus.STOPPED and fake.runs[h.remote_id]["status"] == "cancelled"
    assert [s.remote_id for s in c.list()] == [h.remote_id]


def test_follow_streams_until_the_run_ends(fake):
    c = client(f"{fake.url}/api")
    h = c.submit(plan())
    fake.logs[h.remote_id] += [f"line {i}" for i in range(5)]
    fake.finish_after_logs = True
    assert list(c.logs(h.remote_id, follow=True)) == [f"line {i}" for i in range(5)]
    assert fake.runs[h.remote_id]["status"] == "succeeded"


def test_duplicate_submit_with_the_same_key_is_one_job(fake):
    c = client(f"{fake.url}/api")
    p = plan("same-key-1")
    a, b = c.submit(p), c.submit(p)
    assert a.remote_id == b.remote_id and len(fake.runs) == 1 and b.deduplicated


def test_500_then_success_is_retried_with_the_same_key(fake):
    fake.fault("POST", "/api/runs", status=500, times=2)
    sleeps: list[float] = []
    h = client(f"{fake.url}/api", sleeps=sleeps).submit(plan())
    posts = fake.calls("POST", "/api/runs")
    assert len(posts) == 3 and len(sleeps) == 2 and len(fake.runs) == 1
    assert len({r.headers["idempotency-key"] for r in posts}) == 1
    assert h.remote_id in fake.runs


def test_a_slow_server_times_out_then_network_error_exit_4(fake):
    fake.fault("GET", r"/api/runs/.*", delay=0.6, times=2)
    c = client(f"{fake.url}/api", RetryPolicy(max_attempts=2, base_delay_s=0, max_delay_s=0, timeout_s=0.15))
    with pytest.raises(NetworkError) as ei:
        c.status("run-1")
    assert ei.value.exit_code == 4 and ei.value.context["attempts"] == 2
    assert all("timeout" in r for r in ei.value.context["reasons"])


def test_401_is_a_credential_error_and_never_retried(fake, monkeypatch):
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "wrong-token")
    with pytest.raises(CredentialError) as ei:
        client(f"{fake.url}/api").submit(plan())
    assert ei.value.exit_code == 3 and len(fake.calls("POST", "/api/runs")) == 1


def test_missing_token_names_the_variable(fake, monkeypatch):
    monkeypatch.delenv("CARL_MANAGED_TOKEN")
    with pytest.raises(CredentialError) as ei:
        client(f"{fake.url}/api").submit(plan())
    assert "CARL_MANAGED_TOKEN" in ei.value.hint and fake.requests == []


def test_malformed_json_on_submit_is_submit_failed(fake):
    fake.fault("POST", "/api/runs", status=201, body=b"{not json")
    with pytest.raises(RemoteSubmitFailed) as ei:
        client(f"{fake.url}/api").submit(plan())
    assert ei.value.code == "carl.remote.submit_failed"


# ------------------------------------------------------------------------------------------- respx faults
URL = "https://managed.invalid/api"


@respx.mock
def test_respx_5xx_then_success_retried(monkeypatch):
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "t0ken-value")
    route = respx.post(f"{URL}/runs").mock(side_effect=[httpx.Response(502), httpx.Response(503),
                                                        httpx.Response(201, json={"id": "r1", "status": "queued"})])
    sleeps: list[float] = []
    h = client(URL, sleeps=sleeps).submit(plan())
    assert h.remote_id == "r1" and route.call_count == 3 and len(sleeps) == 2
    assert 0.0005 <= sleeps[0] <= 0.001 and 0.001 <= sleeps[1] <= 0.002  # equal jitter in [d/2, d]


@respx.mock
def test_respx_429_honours_retry_after(monkeypatch):
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "t0ken-value")
    route = respx.get(f"{URL}/runs/r1").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200, json={"id": "r1", "status": "running"})])
    sleeps: list[float] = []
    assert client(URL, sleeps=sleeps).status("r1").status is JobStatus.RUNNING
    assert sleeps == [7.0] and route.call_count == 2


@respx.mock
def test_respx_retry_after_is_capped(monkeypatch):
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "t0ken-value")
    respx.get(f"{URL}/runs/r1").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200, json={"id": "r1", "status": "done"})])
    sleeps: list[float] = []
    pol = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.001, max_retry_after_s=5, timeout_s=1)
    assert client(URL, pol, sleeps).status("r1").status is JobStatus.COMPLETED
    assert sleeps == [5.0]


@respx.mock
def test_respx_timeouts_exhaust_to_network_error(monkeypatch):
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "t0ken-value")
    route = respx.post(f"{URL}/runs").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(NetworkError) as ei:
        client(URL).submit(plan())
    assert ei.value.code == "carl.network" and ei.value.exit_code == 4 and route.call_count == FAST.max_attempts


@respx.mock
def test_respx_connect_errors_are_retried(monkeypatch):
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "t0ken-value")
    route = respx.get(f"{URL}/runs/r9").mock(side_effect=[httpx.ConnectError("refused"),
                                                          httpx.Response(200, json={"id": "r9", "status": "failed"})])
    assert client(URL).status("r9").status is JobStatus.FAILED and route.call_count == 2


def test_backoff_grows_and_is_capped():
    pol = RetryPolicy(base_delay_s=1, max_delay_s=5)
    rng = random.Random(0)
    for n, cap in ((1, 1), (2, 2), (3, 4), (4, 5), (9, 5)):
        for _ in range(20):
            d = pol.delay(n, rng)
            assert cap / 2 <= d <= cap


# ------------------------------------------------------------------------------------------- token guard
def test_guard_refuses_token_outside_secrets_and_sends_nothing(fake):
    c = client(f"{fake.url}/api")
    with pytest.raises(HFTokenLeak) as ei:
        c.submit(plan(env={"NOTE": f"token is {REAL_TOKEN}"}))
    assert ei.value.code == "carl.remote.hf_token_leak" and ei.value.context["paths"] == ["env.NOTE"]
    assert REAL_TOKEN not in str(ei.value.to_dict())
    with pytest.raises(HFTokenLeak):
        c.submit(plan(env={"HF_TOKEN": "anything"}))
    assert fake.requests == []


def test_token_in_the_secrets_field_is_allowed(fake, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", REAL_TOKEN)
    c = client(f"{fake.url}/api", send_hf_token=True)
    h = c.submit(plan(secret_names=["HF_TOKEN"]))
    body = fake.runs[h.remote_id]["body"]
    assert body["secrets"] == {"HF_TOKEN": REAL_TOKEN}
    assert find_hf_token_leaks(body) == []


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                      st.text(alphabet="abcdefgh-_ 0123", max_size=12))
safe_key = st.text(alphabet="abcxyz_", min_size=1, max_size=8).filter(lambda k: "token" not in k)
nested = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(safe_key, inner, max_size=4)),
                      max_leaves=25)
leaky_key = st.sampled_from(["hf_token", "HF_TOKEN", "huggingface_token", "HUGGING_FACE_HUB_TOKEN", "hfToken"])


def _insert(tree, path_choices, leaf, as_key: str | None):
    """Put ``leaf`` somewhere inside ``tree`` (returns the new tree); ``as_key`` puts it under that key."""
    node = {"wrap": tree}
    cur = node
    for choice in path_choices:
        child = cur.get("wrap") if isinstance(cur, dict) and "wrap" in cur else None
        if isinstance(child, (dict, list)) and child:
            keys = list(child.keys()) if isinstance(child, dict) else list(range(len(child)))
            k = keys[choice % len(keys)]
            if isinstance(child[k], (dict, list)):
                cur = {"wrap": child[k]}
                continue
        break
    target = cur["wrap"]
    key = as_key or "payload"
    if isinstance(target, dict):
        target[key] = leaf
    elif isinstance(target, list):
        target.append({key: leaf} if as_key else leaf)
    else:
        return {"root": tree, key: leaf}
    return node["wrap"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=nested, path=st.lists(st.integers(0, 10), max_size=6), key=st.one_of(st.none(), leaky_key),
       prefix=st.text(alphabet="ab :=", max_size=5))
def test_guard_finds_a_token_at_any_depth(tree, path, key, prefix):
    leaf = (prefix + REAL_TOKEN) if key is None else "x"
    payload = {"config": _insert(tree, path, leaf, key)}
    leaks = find_hf_token_leaks(payload)
    assert leaks and all(p.startswith("config") for p in leaks)
    with pytest.raises(HFTokenLeak):
        guard_hf_token(payload, "managed")


@settings(max_examples=150, deadline=None)
@given(tree=nested)
def test_guard_passes_clean_payloads_and_tokens_inside_secrets(tree):
    assert find_hf_token_leaks({"config": tree}) == []
    payload = {"config": tree, "secrets": {"HF_TOKEN": REAL_TOKEN, "nested": [{"hf_token": REAL_TOKEN}]}}
    guard_hf_token(payload, "managed")  # no raise: secrets is the one place a token may travel


def test_guard_reports_every_path():
    payload = {"a": [{"b": REAL_TOKEN}], "c": {"hf_token": None}, REAL_TOKEN: 1, "secrets": {"x": REAL_TOKEN}}
    assert sorted(find_hf_token_leaks(payload)) == sorted(["a[0].b", "c.hf_token", REAL_TOKEN])
