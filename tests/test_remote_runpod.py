"""RunPod backend: httpx against a loopback server speaking RunPod's REST pods API (create/get/list/stop/delete),
with idempotent submits through the pod name, faults, and the HF token kept out of the pod."""

from __future__ import annotations

import pytest

from engine.errors import CredentialError, HFTokenLeak, NetworkError, RemoteSubmitFailed, RunNotFound
from engine.remote.base import JobPlan, JobStatus, RemoteUnsupported, RetryPolicy, new_idempotency_key
from engine.remote.config import RunPodSettings
from engine.remote.runpod import RunPodClient, pod_name

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002, timeout_s=2.0)




def plan(key: str | None = None, **kw) -> JobPlan:
    base = dict(backend="runpod", name="carl-demo", flavor="NVIDIA A100 80GB PCIe", hours=1.0, image="img:1",
                command=["sh", "-c", "carl --batch train --config /tmp/carl.yaml"], env={"CARL_RUN_ID": "rp-1"},
                idempotency_key=key or new_idempotency_key(), gpu_count=2, secret_names=["HF_TOKEN"])
    base.update(kw)
    return JobPlan(**base)


def client(url: str, **kw) -> RunPodClient:
    return RunPodClient(RunPodSettings(base_url=f"{url}/v1", **kw), FAST, sleep=lambda s: None)


def test_create_get_stop_delete(pods):
    c = client(pods.url)
    p = plan()
    h = c.submit(p)
    pod = pods.pods[h.remote_id]
    assert pod["name"] == pod_name(p) and pod["gpuCount"] == 2
    assert pod["machine"]["gpuTypeId"] == "NVIDIA A100 80GB PCIe"
    assert pod["dockerStartCmd"] == p.command
    assert "HF_TOKEN" not in pod["env"]  # no hf_token_secret configured: no token at all
    assert h.state.status is JobStatus.QUEUED  # desired RUNNING, no runtime yet
    pod["runtime"] = {"uptimeInSeconds": 5}
    st = c.status(h.remote_id)
    assert st.status is JobStatus.RUNNING and st.cost_per_hour == 1.64
    stopped = c.stop(h.remote_id)
    assert stopped.status is JobStatus.STOPPED
    assert pods.calls("POST", f"/v1/pods/{h.remote_id}/stop") and pods.calls("DELETE", f"/v1/pods/{h.remote_id}")
    assert c.status(h.remote_id).status is JobStatus.STOPPED
    assert [s.remote_id for s in c.list()] == [h.remote_id]


def test_hf_token_travels_as_a_runpod_secret_reference(pods):
    c = client(pods.url, hf_token_secret="hf_token")
    h = c.submit(plan())
    assert pods.pods[h.remote_id]["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"


def test_a_raw_hf_token_is_refused_before_sending(pods):
    with pytest.raises(HFTokenLeak):
        client(pods.url).submit(plan(env={"X": "hf_" + "a" * 34}))
    assert pods.requests == []


def test_same_key_same_pod_and_500_retry_is_one_pod(pods):
    c = client(pods.url)
    p = plan("k-runpod-1")
    pods.fault("POST", "/v1/pods", status=500, times=1)
    a = c.submit(p)
    b = c.submit(p)
    assert a.remote_id == b.remote_id and b.deduplicated and len(pods.pods) == 1
    assert len(pods.calls("POST", "/v1/pods")) == 2  # the 500, then the create


def test_429_then_success(pods):
    pods.fault("GET", r"/v1/pods/.*", status=429, headers={"Retry-After": "7"}, times=1)
    slept: list[float] = []
    c = RunPodClient(RunPodSettings(base_url=f"{pods.url}/v1"), FAST, sleep=slept.append)
    h = c.submit(plan())
    assert c.status(h.remote_id).remote_id == h.remote_id
    assert pods.faults[0].times == 0  # the 429 was served …
    assert len(pods.calls("GET", r"/v1/pods/.*")) == 2  # … then the retry succeeded
    assert slept == [7.0]  # and the wait was the server's Retry-After, not the (millisecond) backoff


def test_timeouts_exhaust_to_network_error(pods, monkeypatch):
    pods.fault("GET", r"/v1/pods/.*", delay=0.5, times=3)
    c = RunPodClient(RunPodSettings(base_url=f"{pods.url}/v1"),
                     RetryPolicy(max_attempts=2, base_delay_s=0, max_delay_s=0, timeout_s=0.1), sleep=lambda s: None)
    with pytest.raises(NetworkError) as ei:
        c.status("pod0001")
    assert ei.value.exit_code == 4


def test_errors_map_to_codes(pods, monkeypatch):
    c = client(pods.url)
    with pytest.raises(RunNotFound):
        c.status("nope")
    pods.fault("POST", "/v1/pods", status=400, body=b'{"error": "bad gpu"}')
    with pytest.raises(RemoteSubmitFailed) as ei:
        c.submit(plan())
    assert "bad gpu" in str(ei.value)
    with pytest.raises(RemoteUnsupported):
        list(c.logs("pod0001"))
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_WRONGKEY0000000")
    with pytest.raises(CredentialError) as ei2:
        c.status("pod0001")
    assert "rpa_WRONG" not in str(ei2.value.to_dict())
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(CredentialError) as ei3:
        c.status("pod0001")
    assert "RUNPOD_API_KEY" in ei3.value.hint
