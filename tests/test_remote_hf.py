"""Hugging Face Jobs backend: huggingface_hub's own jobs client, pointed through HF_ENDPOINT at a loopback
server that speaks the Hub's jobs API (whoami, create, list by label, inspect, SSE logs, cancel)."""

from __future__ import annotations

import pytest

from engine.errors import CredentialError, NetworkError
from engine.remote.base import JobPlan, JobStatus, RemoteBadResponse, RetryPolicy, new_idempotency_key
from engine.remote.config import HFSettings
from engine.remote.hf_jobs import IDEMPOTENCY_LABEL, HFJobsClient, resolve_endpoint

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002, timeout_s=2.0)




def plan(key: str | None = None, **kw) -> JobPlan:
    base = dict(backend="hf", name="carl-demo", flavor="a10g-large", hours=0.5, image="pytorch/pytorch:latest",
                command=["sh", "-c", "carl --batch train --config /tmp/carl.yaml"], env={"CARL_RUN_ID": "hf-x"},
                idempotency_key=key or new_idempotency_key(), secret_names=["HF_TOKEN"])
    base.update(kw)
    return JobPlan(**base)


def client(**kw) -> HFJobsClient:
    return HFJobsClient(HFSettings(**kw), FAST, sleep=lambda s: None)


def test_endpoint_comes_from_hf_endpoint(hub):
    assert resolve_endpoint(HFSettings()) == hub.url
    assert resolve_endpoint(HFSettings(endpoint="https://hub.example/")) == "https://hub.example"


def test_submit_sends_the_token_only_as_a_secret(hub):
    c = client()
    p = plan()
    h = c.submit(p)
    assert h.state.status is JobStatus.QUEUED and not h.deduplicated
    assert hub.calls("GET", "/api/whoami-v2"), "the namespace comes from whoami when not configured"
    post = hub.calls("POST", "/api/jobs/alice")[0]
    spec = post.body
    assert spec["secrets"] == {"HF_TOKEN": hub.token}
    assert hub.token not in str(spec["environment"]) and hub.token not in str(spec["command"])
    assert spec["flavor"] == "a10g-large" and spec["dockerImage"] == "pytorch/pytorch:latest"
    assert spec["timeoutSeconds"] == 1800
    assert spec["labels"][IDEMPOTENCY_LABEL] == p.idempotency_key and spec["labels"]["name"] == "carl-demo"
    assert post.headers["authorization"] == f"Bearer {hub.token}"
    assert h.state.url == f"{hub.url}/jobs/alice/{h.remote_id}"
    assert "***" in str(h.request) and hub.token not in str(h.request)


def test_status_logs_stop_list(hub):
    c = client(namespace="alice")
    h = c.submit(plan())
    assert not hub.calls("GET", "/api/whoami-v2")
    hub.set_stage(h.remote_id, "RUNNING")
    st = c.status(h.remote_id)
    assert st.status is JobStatus.RUNNING and st.started_at is not None
    hub.logs[h.remote_id] += ["step one", '{"type": "frame", "step": 1, "phi": 0.2}']
    assert list(c.logs(h.remote_id)) == ["step one", '{"type": "frame", "step": 1, "phi": 0.2}']
    hub.set_stage(h.remote_id, "COMPLETED")
    assert list(c.logs(h.remote_id, follow=True))[-1] == '{"type": "frame", "step": 1, "phi": 0.2}'
    assert c.status(h.remote_id).status is JobStatus.COMPLETED
    h2 = c.submit(plan())
    stopped = c.stop(h2.remote_id)
    assert stopped.status is JobStatus.STOPPED and hub.calls("POST", f"/api/jobs/alice/{h2.remote_id}/cancel")
    assert {s.remote_id for s in c.list()} == {h.remote_id, h2.remote_id}


@pytest.mark.parametrize("stage,status", [("SCHEDULING", JobStatus.QUEUED), ("ERROR", JobStatus.FAILED),
                                          ("DELETED", JobStatus.STOPPED), ("SOMETHING_NEW", JobStatus.UNKNOWN)])
def test_stage_mapping(hub, stage, status):
    c = client()
    h = c.submit(plan())
    hub.jobs[h.remote_id]["status"] = {"stage": stage, "message": "m"}
    assert c.status(h.remote_id).status is status


def test_500_then_success_makes_one_job(hub):
    hub.fault("POST", "/api/jobs/alice", status=500, times=1)
    c = client()
    h = c.submit(plan())
    assert len(hub.calls("POST", "/api/jobs/alice")) == 2 and len(hub.jobs) == 1
    assert len(hub.calls("GET", "/api/jobs/alice")) == 2  # the idempotency lookup precedes each try
    assert h.remote_id in hub.jobs


def test_a_submit_that_landed_despite_an_error_is_found_not_repeated(hub):
    """The Hub created the job but the answer was lost (a 502 from a proxy): the retry finds it by label."""
    c = client()
    p = plan()
    first = c.submit(p)
    again = c.submit(p)
    assert again.remote_id == first.remote_id and again.deduplicated and len(hub.jobs) == 1


def test_persistent_503_is_network_error_exit_4(hub):
    hub.fault("GET", r"/api/jobs/alice/.*", status=503, times=10)
    c = client(namespace="alice")
    with pytest.raises(NetworkError) as ei:
        c.status("abc")
    assert ei.value.exit_code == 4 and len(hub.calls("GET", r"/api/jobs/alice/abc")) == FAST.max_attempts


def test_429_with_retry_after_is_honoured(hub):
    hub.fault("GET", r"/api/jobs/alice/.*", status=429, headers={"Retry-After": "3"}, times=1)
    sleeps: list[float] = []
    c = HFJobsClient(HFSettings(namespace="alice"), FAST, sleep=sleeps.append)
    h = c.submit(plan())
    assert c.status(h.remote_id).status is JobStatus.QUEUED
    assert sleeps == [3.0]


def test_wrong_token_is_a_credential_error_not_retried(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "W" * 34)
    with pytest.raises(CredentialError) as ei:
        client(namespace="alice").status("abc")
    assert ei.value.exit_code == 3 and len(hub.requests) == 1
    assert "hf_WWW" not in str(ei.value.to_dict())


def test_no_token_names_hf_token(hub, monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(CredentialError) as ei:
        client().submit(plan())
    assert ei.value.context["env_var"] == "HF_TOKEN" and "HF_TOKEN" in ei.value.hint and hub.requests == []


def test_malformed_json_is_a_bad_response(hub):
    hub.fault("GET", r"/api/jobs/alice/.*", status=200, body=b"<html>oops", times=1)
    with pytest.raises(RemoteBadResponse):
        client(namespace="alice").status("abc")


def test_offline_mode_says_how_to_get_online(hub, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(NetworkError) as ei:
        client(namespace="alice").status("abc")
    assert "HF_HUB_OFFLINE" in ei.value.hint and hub.requests == []
