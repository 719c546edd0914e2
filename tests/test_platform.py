"""The managed platform: entitlements (Ed25519 JWS verified against a pinned JWKS, cache, offline grace, clock
skew, quarantine), consent, telemetry and ledger forwarding — against the loopback platform in the managed fake
(tests/platform_fake.py), which signs with a real Ed25519 key. The client's clock is injected; the platform's
clock is set separately to move exp/nbf."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
import yaml

from carl_tui.batch import main as batch_main
from engine import ledger
from engine.errors import CredentialError, NetworkError, PermissionDenied
from engine.home import CarlHome
from engine.ledger import Ledger
from engine.ledger.canonical import canonical
from engine.ledger.chain import verify_segments
from engine.ledger.keys import read_public_keys_text
from engine.platform import consent, telemetry
from engine.platform.entitlements import (
    Entitlements, EntitlementsError, GraceExpired, KeyChanged, SignatureInvalid, TokenExpired, Unavailable, grant_matches,
)
from engine.platform.forward import forward, pending
from engine.remote.base import RetryPolicy
from engine.remote.config import ManagedSettings

FAST = RetryPolicy(max_attempts=2, base_delay_s=0.001, max_delay_s=0.002, timeout_s=2.0)
FAST_RETRIES = {"max_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.002, "timeout_s": 2.0}
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ents(fake, clock=None, **kw) -> Entitlements:
    return Entitlements(ManagedSettings(url=f"{fake.url}/api", **kw), home=CarlHome.from_env(),
                        clock=clock or Clock(), policy=FAST, sleep=lambda s: None)


def carl(capsys, *argv: str):
    capsys.readouterr()
    code = batch_main(list(argv))
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    errs = [json.loads(x) for x in err.splitlines() if x.strip().startswith("{")]
    return code, lines, (errs[-1]["error"] if errs else None)


def write_config(d: Path, managed: dict, **extra) -> Path:
    data = {"project": {"name": "platform-demo"},
            "remote": {"retries": FAST_RETRIES, "setup": "", "managed": managed, **extra}}
    p = d / "carl.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def platform(managed):
    managed.clock = lambda: T0  # the platform's clock agrees with the client's unless a test moves it
    return managed


# ------------------------------------------------------------------------------------------- entitlements
def test_happy_path_verifies_pins_and_caches_0600(platform):
    e = ents(platform)
    st = e.refresh()
    assert st.status == "fresh" and st.admits and st.grants == ["jobs.submit"]
    view = e.view(st)
    assert view["key_id"] == "carl-camp-1" and view["tier"] == "pro" and view["pinned_key_ids"] == ["carl-camp-1"]
    assert view["age_s"] == 0 and view["refresh"] == {"ok": True}
    assert mode(e.cache_path) == 0o600 and mode(e.pins_path) == 0o600
    assert not list(e.dir.glob(".*.tmp"))  # atomic writes leave no temp files
    # the JWKS is fetched without the credential, the entitlements with it
    jwks = platform.calls("GET", "/.well-known/carl-camp-jwks.json")[0]
    got = platform.calls("GET", "/api/platform/entitlements")[0]
    assert "authorization" not in jwks.headers and got.headers["authorization"] == f"Bearer {platform.token}"
    # the cached state is re-verified offline: same status, no new request
    n = len(platform.requests)
    assert e.cached().status == "fresh" and len(platform.requests) == n
    assert e.require("jobs.submit", "gpu-1x").status == "fresh" and len(platform.requests) == n


def test_bad_signature_is_refused_and_nothing_cached(platform):
    platform.tamper = True
    e = ents(platform)
    with pytest.raises(SignatureInvalid) as ei:
        e.refresh()
    assert ei.value.code == "carl.entitlements.signature_invalid" and ei.value.exit_code == 3
    assert not e.cache_path.exists() and e.cached().status == "missing"


def test_token_signed_by_an_unpublished_key_or_wrong_alg_is_refused(platform):
    platform.add_key("rogue", "rogue-seed")
    platform.signing_kid = "rogue"  # signs with a key the JWKS does not list
    with pytest.raises(SignatureInvalid):
        ents(platform).refresh()


def test_silent_kid_swap_is_rejected(platform):
    e = ents(platform)
    e.refresh()
    platform.add_key("carl-camp-2", "platform-key-2")
    platform.published = ["carl-camp-2"]
    platform.signing_kid = "carl-camp-2"
    with pytest.raises(KeyChanged) as ei:
        e.refresh()
    assert ei.value.code == "carl.entitlements.key_changed" and "repin" in ei.value.hint
    assert e.pins() == {"carl-camp-1": e.pins()["carl-camp-1"]}  # nothing new was pinned


def test_same_kid_with_a_new_key_is_rejected(platform):
    e = ents(platform)
    e.refresh()
    platform.add_key("carl-camp-1", "another-key")  # same kid, different key
    with pytest.raises(KeyChanged):
        e.refresh()


def test_a_new_kid_on_the_jwks_word_alone_is_not_trusted(platform):
    # the hijack: a JWKS that keeps the pinned kid and adds one of the attacker's, then signs with it
    e = ents(platform)
    e.refresh()
    platform.add_key("carl-camp-2", "attacker-key")
    platform.published = ["carl-camp-1", "carl-camp-2"]
    platform.signing_kid = "carl-camp-2"
    with pytest.raises(KeyChanged) as ei:
        e.refresh()
    assert "repin" in ei.value.hint and ei.value.context["fingerprint"].startswith("SHA256:")
    assert sorted(e.pins()) == ["carl-camp-1"]  # nothing new was pinned
    platform.published = ["carl-camp-2"]  # ... and the next JWKS drops the old kid: still refused
    with pytest.raises(KeyChanged):
        e.refresh()
    assert e.cached().cache["kid"] == "carl-camp-1"


def test_rotation_signed_by_a_pinned_key_is_accepted_and_then_the_old_kid_may_go(platform):
    e = ents(platform)
    e.refresh()
    platform.add_key("carl-camp-2", "platform-key-2")
    platform.add_key("carl-camp-3", "attacker-key")
    platform.vouch("carl-camp-2", by_kid="carl-camp-1")
    platform.vouch("carl-camp-3", by_kid="carl-camp-3")  # a statement signed by the new key itself: ignored
    platform.published = ["carl-camp-1", "carl-camp-2", "carl-camp-3"]
    platform.signing_kid = "carl-camp-2"
    st = e.refresh()
    assert st.status == "fresh" and st.cache["kid"] == "carl-camp-2"
    assert sorted(e.pins()) == ["carl-camp-1", "carl-camp-2"]
    platform.published = ["carl-camp-2"]  # the old key retired after the rotation
    assert e.refresh().status == "fresh"


def test_repin_shows_both_fingerprints_and_trusts_the_new_key(platform, tmp_path, capsys):
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    platform.clock = time.time  # the batch verbs run on the real clock
    e = ents(platform, clock=time.time)
    e.refresh()
    platform.add_key("carl-camp-2", "platform-key-2")
    platform.published = ["carl-camp-2"]
    platform.signing_kid = "carl-camp-2"
    code, _, err = carl(capsys, "entitlements", "show", "--refresh", "--config", str(cfg))
    assert code == 3 and err["code"] == "carl.entitlements.key_changed" and "repin" in err["hint"]
    code, lines, err = carl(capsys, "entitlements", "repin", "--config", str(cfg))
    assert code == 0, err
    out = lines[-1]
    assert [k["kid"] for k in out["before"]] == ["carl-camp-1"] and [k["kid"] for k in out["after"]] == ["carl-camp-2"]
    assert out["before"][0]["fingerprint"] != out["after"][0]["fingerprint"] and out["changed"] is True
    assert out["status"] == "fresh"
    assert sorted(e.pins()) == ["carl-camp-2"]


@pytest.mark.parametrize("change, code", [
    ({"exp": None}, "carl.entitlements.claims"),
    ({"iat": None}, "carl.entitlements.claims"),
    ({"iss": "https://evil.example"}, "carl.entitlements.claims"),
    ({"aud": ["somebody-else"]}, "carl.entitlements.claims"),
    ({"aud": None}, "carl.entitlements.claims"),
])
def test_the_token_contract_is_enforced(platform, change, code):
    platform.claims_extra = change
    e = ents(platform)
    with pytest.raises(EntitlementsError) as ei:
        e.refresh()
    assert ei.value.code == code and ei.value.exit_code == 3
    assert not e.cache_path.exists()


def test_aud_may_be_a_string_and_iss_ignores_the_path(platform):
    platform.claims_extra = {"aud": "carl"}
    assert ents(platform).refresh().status == "fresh"  # url is {fake}/api, iss is its origin


@pytest.mark.parametrize("url", ["http://platform.example/api", "http://10.0.0.1/api", "ftp://platform.example"])
def test_plain_http_is_refused_except_for_loopback(platform, url, monkeypatch):
    e = Entitlements(ManagedSettings(url=url), home=CarlHome.from_env(), clock=Clock(), policy=FAST,
                     sleep=lambda s: None)
    n = len(platform.requests)
    with pytest.raises(EntitlementsError) as ei:
        e.refresh()
    assert ei.value.code == "carl.entitlements.insecure"
    assert len(platform.requests) == n


def test_offline_within_and_past_the_24h_grace(platform):
    clock = Clock()
    e = ents(platform, clock)
    e.refresh()
    clock.t = T0 + 20 * 60
    assert e.cached().status == "stale"  # older than the 15-minute TTL, no failed refresh yet
    platform.fault("GET", r"/.well-known/carl-camp-jwks.json", status=503, times=100)
    clock.t = T0 + 23 * 3600
    st = e.require("jobs.submit")  # a refresh is tried, fails, and the cached grant admits within the grace
    assert st.status == "offline_grace" and st.refresh["ok"] is False
    assert st.refresh["error"]["code"] == "carl.network"
    assert e.cached().status == "offline_grace"
    clock.t = T0 + 24 * 3600 + 1
    assert e.cached().status == "offline_grace_expired"
    with pytest.raises(GraceExpired) as ei:
        e.require("jobs.submit")
    assert ei.value.code == "carl.entitlements.offline_grace_expired" and ei.value.exit_code == 5
    # back online: fresh again
    platform.faults.clear()
    platform.clock = lambda: clock.t
    assert e.require("jobs.submit").status == "fresh"


def test_offline_with_nothing_cached_is_unavailable(platform):
    platform.fault("GET", r"/.well-known/carl-camp-jwks.json", status=503, times=100)
    e = ents(platform)
    with pytest.raises(Unavailable) as ei:
        e.require("jobs.submit")
    assert ei.value.exit_code == 4 and e.cached().status == "missing"


@pytest.mark.parametrize("server_offset,ok", [
    (-(900 + 299), True),   # exp 299 s in the past: inside the 5-minute skew
    (-(900 + 301), False),  # exp 301 s in the past
    (299, True),            # nbf 299 s in the future
    (301, False),           # nbf 301 s in the future
], ids=["exp-299", "exp-301", "nbf-299", "nbf-301"])
def test_clock_skew_edges(platform, server_offset, ok):
    platform.clock = lambda: T0 + server_offset
    e = ents(platform)
    if ok:
        assert e.refresh().status in ("fresh", "stale")
    else:
        with pytest.raises(TokenExpired) as ei:
            e.refresh()
        assert ei.value.code == "carl.entitlements.expired"


def test_corrupt_cache_is_quarantined(platform):
    e = ents(platform)
    e.refresh()
    e.cache_path.write_text("{not json", encoding="utf-8")
    st = e.cached()
    assert st.status == "corrupt" and not e.cache_path.exists()
    q = Path(st.quarantined)
    assert q.exists() and q.name.startswith("entitlements.corrupt-") and q.suffix == ".json"
    assert q.read_text() == "{not json"
    assert e.cached().status == "missing"
    # an edited cache (grants added by hand) fails its signature check and is quarantined too
    e.refresh()
    data = json.loads(e.cache_path.read_text())
    h, p, s = data["token"].split(".")
    from tests.platform_fake import b64

    claims = json.loads(__import__("base64").urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["grants"].append("admin")
    data["token"] = f"{h}.{b64(json.dumps(claims).encode())}.{s}"
    e.cache_path.write_text(json.dumps(data))
    assert e.cached().status == "corrupt" and len(list(e.dir.glob("entitlements.corrupt-*.json"))) == 2


def test_grant_matching():
    assert grant_matches(["jobs.submit"], "jobs.submit", "gpu-1x")
    assert grant_matches(["jobs.submit:gpu-1x"], "jobs.submit", "gpu-1x")
    assert not grant_matches(["jobs.submit:gpu-8x"], "jobs.submit", "gpu-1x")
    assert not grant_matches([], "jobs.submit")


def test_missing_grant_is_permission_denied_naming_the_grant(platform):
    platform.grants = ["jobs.submit:gpu-8x"]
    with pytest.raises(PermissionDenied) as ei:
        ents(platform).require("jobs.submit", "gpu-1x")
    assert ei.value.code == "carl.permission" and ei.value.exit_code == 5
    assert "jobs.submit:gpu-1x" in ei.value.hint


def test_refresh_without_the_token_sends_nothing(platform, monkeypatch):
    monkeypatch.delenv("CARL_MANAGED_TOKEN")
    with pytest.raises(CredentialError):
        ents(platform).refresh()
    assert platform.requests == []


# ------------------------------------------------------------------------------------------- batch verbs
def test_show_tells_what_would_be_sent_before_anything_is(platform, tmp_path, capsys):
    platform.clock = time.time  # the CLI runs on the real clock
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    code, out, _ = carl(capsys, "entitlements", "show", "--config", str(cfg))
    assert code == 0 and out[0]["status"] == "missing" and out[0]["admits"] is False
    urls = [r["url"] for r in out[0]["requests"]]
    assert urls == [f"{platform.url}/.well-known/carl-camp-jwks.json", f"{platform.url}/api/platform/entitlements"]
    code, out, _ = carl(capsys, "consent", "show", "--config", str(cfg))
    assert code == 0 and out[0]["flags"] == {"telemetry": False, "ledger_forward": False}
    rows = {r["flag"]: r for r in out[0]["consent"]}
    assert rows["telemetry"]["to"] == f"{platform.url}/api/platform/telemetry" and not rows["telemetry"]["would_send"]
    assert rows["ledger_forward"]["to"] == f"{platform.url}/api/platform/ledger/append"
    assert platform.requests == []  # nothing was sent to learn any of that
    code, out, _ = carl(capsys, "entitlements", "show", "--refresh", "--config", str(cfg))
    assert code == 0 and out[0]["status"] == "fresh" and out[0]["grants"] == ["jobs.submit"]
    assert out[0]["key_id"] == "carl-camp-1" and isinstance(out[0]["age_s"], float)


def test_show_refresh_errors_are_typed_json(platform, tmp_path, capsys):
    platform.tamper = True
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    code, _, err = carl(capsys, "entitlements", "show", "--refresh", "--config", str(cfg))
    assert code == 3 and err["code"] == "carl.entitlements.signature_invalid" and err["hint"]


def test_consent_set_and_bad_values(platform, tmp_path, capsys):
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    code, out, _ = carl(capsys, "consent", "set", "telemetry=on", "--config", str(cfg))
    assert code == 0 and out[0]["flags"] == {"telemetry": True, "ledger_forward": False}
    assert mode(consent.path()) == 0o600
    assert [b["payload"]["changed"] for b in Ledger(CarlHome.from_env()).blocks(action="consent.change")] == \
        [{"telemetry": True}]
    code, _, err = carl(capsys, "consent", "set", "telemetry=maybe")
    assert code == 2 and err["code"] == "carl.validation"
    code, out, _ = carl(capsys, "consent", "set", "telemetry=off")
    assert out[0]["flags"]["telemetry"] is False
    consent.path().write_text("garbage")
    assert consent.load() == {"telemetry": False, "ledger_forward": False}  # corrupt → all off, quarantined
    assert list(consent.path().parent.glob("consent.corrupt-*.json"))


def test_jobs_submit_managed_needs_the_grant(platform, tmp_path, capsys):
    platform.clock = time.time
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api", "flavor": "gpu-1x"}, prices={"managed:gpu-1x": 1.0})
    platform.grants = ["observe.read"]
    code, _, err = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg), "--approve")
    assert code == 5 and err["code"] == "carl.permission" and "jobs.submit:gpu-1x" in err["hint"]
    assert platform.runs == {}  # refused before anything was submitted
    platform.grants = ["jobs.submit:gpu-1x"]
    code, out, _ = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg), "--approve")
    assert code == 0 and out[0]["backend"] == "managed" and len(platform.runs) == 1


def _age_cache(hours: float) -> None:
    p = CarlHome.from_env().root / "platform" / "entitlements.json"
    data = json.loads(p.read_text())
    data["fetched_at"] -= hours * 3600
    p.write_text(json.dumps(data))


def test_jobs_submit_cached_grant_admits_within_grace_never_beyond(platform, tmp_path, capsys):
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"}, prices={"managed:gpu-1x": 1.0})
    platform.clock = time.time
    assert carl(capsys, "entitlements", "show", "--refresh", "--config", str(cfg))[1][0]["status"] == "fresh"
    platform.fault("GET", r"/.well-known/carl-camp-jwks.json", status=503, times=1000)
    _age_cache(2)
    code, out, _ = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg), "--approve")
    assert code == 0 and len(platform.runs) == 1
    code, out, _ = carl(capsys, "entitlements", "show", "--config", str(cfg))
    assert out[0]["status"] == "offline_grace" and out[0]["offline_since"]
    _age_cache(23)  # now 25 h since the last good fetch
    code, _, err = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg), "--approve")
    assert code == 5 and err["code"] == "carl.entitlements.offline_grace_expired" and len(platform.runs) == 1


# ------------------------------------------------------------------------------------------- consent off
def test_consent_off_sends_nothing(platform, tmp_path, capsys):
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    ledger.record("run.start", {"run_id": "r1"})
    from engine.config import load_config

    conf, _ = load_config(cfg, [])
    assert telemetry.for_run(conf, "r1") is None  # no forwarder, no thread
    code, _, err = carl(capsys, "ledger", "forward", "--config", str(cfg))
    assert code == 5 and err["code"] == "carl.telemetry.consent_required"
    code, _, err = carl(capsys, "ledger", "forward", "--replay", "--config", str(cfg))
    assert code == 5
    assert platform.requests == []
    consent.set_flags({"telemetry": True})
    fw = telemetry.for_run(conf, "r1")
    assert fw is not None
    fw.close()


def test_telemetry_and_forwarding_never_send_the_token_over_plain_http(platform, tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path, {"url": "http://platform.example/api"})
    from engine.config import load_config

    conf, _ = load_config(cfg, [])
    consent.set_flags({"telemetry": True, "ledger_forward": True})
    ledger.record("run.start", {"run_id": "r1"})
    assert telemetry.for_run(conf, "r1") is None  # no forwarder: nothing would go over http
    code, _, err = carl(capsys, "ledger", "forward", "--config", str(cfg))
    assert code == 3 and err["code"] == "carl.entitlements.insecure"


# ------------------------------------------------------------------------------------------- telemetry
def test_telemetry_idempotency_keys_and_redaction(platform):
    fw = telemetry.Forwarder(f"{platform.url}/api/platform/telemetry", platform.token, run_id="run-1")
    secret = "hf_" + "Q" * 30
    fw.emit("eval", {"step": 3, "note": f"token {secret}", "api_key": "abc123"}, event_id="run-1:eval:3")
    fw.emit("eval", {"step": 3}, event_id="run-1:eval:3")  # the same event again: one on the platform
    fw.emit("checkpoint", {"step": 3}, event_id="run-1:checkpoint:3")
    summary = fw.close(timeout=60)
    assert fw.sent == 3 and fw.failed == 0 and "3 sent" in summary
    assert [t["signal"] for t in platform.telemetry] == ["eval", "checkpoint"]
    keys = [r.headers["idempotency-key"] for r in platform.calls("POST", "/api/platform/telemetry")]
    assert keys[0] == keys[1] == telemetry.idempotency_key("run-1:eval:3", "eval") != keys[2]
    raw = json.dumps(platform.telemetry)
    assert secret not in raw and "abc123" not in raw


def test_telemetry_failure_never_reaches_the_caller(platform):
    platform.fault("POST", r"/api/platform/telemetry", status=500, delay=1.0, times=1)  # holds the sender
    platform.fault("POST", r"/api/platform/telemetry", status=500, times=10)
    fw = telemetry.Forwarder(f"{platform.url}/api/platform/telemetry", platform.token, run_id="r", max_queue=2)
    for i in range(50):  # far more than the queue holds while the sender waits: dropped, never blocking
        fw.emit("step", {"step": i})
    fw.close(timeout=60)
    assert fw.sent + fw.failed + fw.dropped == 50 and fw.dropped > 0 and fw.failed > 0
    dead = telemetry.Forwarder("http://127.0.0.1:9/telemetry", "t", run_id="r", timeout_s=0.5)
    dead.emit("step", {"step": 1})
    assert "1 failed" in dead.close(timeout=60)


# ------------------------------------------------------------------------------------------- ledger forwarding
def test_ledger_replay_after_the_server_was_down(platform, tmp_path):
    home = CarlHome.from_env()
    settings = ManagedSettings(url=f"{platform.url}/api")
    consent.set_flags({"ledger_forward": True}, home)
    for i in range(4):
        ledger.record("run.start", {"run_id": f"r{i}"})
    platform.ledger_down = True
    with pytest.raises(NetworkError) as ei:
        forward(settings, policy=FAST, sleep=lambda s: None)
    assert ei.value.exit_code == 4 and platform.chain == []
    for i in range(3):
        ledger.record("run.complete", {"run_id": f"r{i}"})
    local = list(Ledger(home).iter_blocks())
    assert pending(settings)["pending"] == len(local)
    platform.ledger_down = False
    out = forward(settings, policy=FAST, sleep=lambda s: None, batch=3)
    assert out["acked"] == len(local) and out["duplicates"] == 0 and out["pending"] == 0
    assert mode(home.root / "platform" / "ledger-forward.json") == 0o600
    assert [b["hash"] for b in platform.chain] == [b["hash"] for b in local]  # every block once, in order
    # again: nothing to send; replay: every block is a duplicate, none acknowledged twice
    assert forward(settings, policy=FAST)["sent"] == 0
    out = forward(settings, replay=True, policy=FAST)
    assert out["duplicates"] == len(local) and out["acked"] == 0 and platform.ledger_acks == len(local)
    # the chain the platform holds verifies with the exported public key
    exported = Ledger(home).export(tmp_path / "export")
    pub = read_public_keys_text((tmp_path / "export" / "ledger.pub").read_text())
    assert pub == exported["public_keys"]
    seg = tmp_path / "server" / "segment-000000.jsonl"
    seg.parent.mkdir()
    seg.write_bytes(b"".join(canonical(b) + b"\n" for b in platform.chain))
    res = verify_segments([seg], pub)
    assert res.ok and res.blocks == len(local) and res.head == local[-1]["hash"]


def test_forward_rewinds_when_the_platform_lost_blocks(platform):
    settings = ManagedSettings(url=f"{platform.url}/api")
    consent.set_flags({"ledger_forward": True})
    for i in range(5):
        ledger.record("run.start", {"run_id": f"r{i}"})
    forward(settings, policy=FAST)
    n = len(platform.chain)
    del platform.chain[3:]  # the platform restored an old backup
    ledger.record("run.complete", {"run_id": "r0"})
    out = forward(settings, policy=FAST)
    assert out["rewinds"] == 1 and len(platform.chain) == n + 1 and out["pending"] == 0


def test_forward_refuses_a_different_chain(platform, monkeypatch, tmp_path):
    settings = ManagedSettings(url=f"{platform.url}/api")
    consent.set_flags({"ledger_forward": True})
    ledger.record("run.start", {"run_id": "a"})
    forward(settings, policy=FAST)
    monkeypatch.setenv("CARL_HOME", str(tmp_path / "other-home"))  # another ledger, same account
    consent.set_flags({"ledger_forward": True})
    ledger.record("run.start", {"run_id": "b"})
    from engine.platform.forward import ChainConflict

    with pytest.raises(ChainConflict) as ei:
        forward(settings, policy=FAST)
    assert ei.value.code == "carl.telemetry.chain_conflict"


# ------------------------------------------------------------------------------------------- doctor
def test_doctor_entitlements_row(platform, tmp_path, monkeypatch):
    from engine.doctor import check_entitlements

    monkeypatch.chdir(tmp_path)
    row = check_entitlements()
    assert row.status == "ok" and "no managed platform configured" in row.detail  # no carl.yaml: nothing to check
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    row = check_entitlements(cfg)
    assert row.name == "entitlements" and row.status == "warn" and "none cached" in row.detail
    platform.clock = time.time
    Entitlements(ManagedSettings(url=f"{platform.url}/api"), policy=FAST).refresh()
    n = len(platform.requests)
    row = check_entitlements(cfg)
    assert row.status == "ok" and row.detail.startswith("fresh") and "carl-camp-1" in row.detail
    assert "jobs.submit" in row.detail and len(platform.requests) == n  # the doctor never calls the platform


def test_after_run_forwards_only_with_consent(platform, tmp_path):
    from engine.platform.forward import after_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"remote": {"managed": {"url": f"{platform.url}/api"}}}))
    ledger.record("run.complete", {"run_id": "r"})
    assert after_run(run_dir) is None and platform.requests == []
    consent.set_flags({"ledger_forward": True})
    note = after_run(run_dir)
    local = list(Ledger(CarlHome.from_env()).iter_blocks())
    assert "acknowledged" in note and [b["hash"] for b in platform.chain] == [b["hash"] for b in local]
    platform.ledger_down = True
    ledger.record("run.complete", {"run_id": "r2"})
    assert "ledger forward failed (carl.network)" in after_run(run_dir)  # reported, never raised


def test_the_platform_fake_itself(platform):
    """The fake's own wire behaviour, checked with plain httpx + pynacl (so a failure above is not the fake's)."""
    import base64

    import httpx
    from nacl.signing import VerifyKey

    jwks = httpx.get(f"{platform.url}/.well-known/carl-camp-jwks.json").json()  # public: no credential
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert httpx.get(f"{platform.url}/api/platform/entitlements").status_code == 401
    body = httpx.get(f"{platform.url}/api/platform/entitlements",
                     headers={"Authorization": f"Bearer {platform.token}"}).json()
    h, p, s = body["token"].split(".")
    pad = lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))  # noqa: E731
    VerifyKey(pad(jwks["keys"][0]["x"])).verify(f"{h}.{p}".encode(), pad(s))  # raises when it does not verify
    assert json.loads(pad(p))["grants"] == ["jobs.submit"] and json.loads(pad(h))["alg"] == "EdDSA"


def test_a_refused_token_is_a_credential_error_and_a_404_a_bad_response(platform, tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api"})
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "mgd_WRONG000000000000")
    code, _, err = carl(capsys, "entitlements", "show", "--refresh", "--config", str(cfg))
    assert code == 3 and err["code"] == "carl.credential" and "mgd_WRONG000000000000" not in json.dumps(err)
    monkeypatch.setenv("CARL_MANAGED_TOKEN", platform.token)
    cfg = write_config(tmp_path, {"url": f"{platform.url}/api", "entitlements_path": "/nope"})
    code, _, err = carl(capsys, "entitlements", "show", "--refresh", "--config", str(cfg))
    assert code == 1 and err["code"] == "carl.entitlements.bad_response"


def test_editing_fetched_at_cannot_stretch_the_grace(platform):
    clock = Clock()
    e = ents(platform, clock)
    e.refresh()
    clock.t = T0 + 30 * 3600
    data = json.loads(e.cache_path.read_text())
    data["fetched_at"] = clock.t  # unsigned: moved forward by hand
    e.cache_path.write_text(json.dumps(data))
    st = e.cached()
    assert st.status == "offline_grace_expired" and not st.admits  # bounded by the token's signed iat
