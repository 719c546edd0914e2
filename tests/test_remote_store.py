"""Job records (CARL_HOME/jobs), cost so far, the price table and estimate, the policy's refusals, and the
``remote:`` config model."""

from __future__ import annotations

import json

import pytest

from engine.config import Config, validate_dict
from engine.errors import ApprovalRequired, BudgetError, ConfigError, PermissionDenied, RunNotFound, ValidationError
from engine.home import CarlHome
from engine.remote import store
from engine.remote.approval import DEFAULT_PRICES, enforce, estimate, price_per_hour
from engine.remote.config import RemoteSettings, remote_settings


def rec(run_id: str, **kw) -> dict:
    base = {"run_id": run_id, "backend": "hf", "remote_id": f"r-{run_id}", "status": "running", "flavor": "l4x1",
            "gpu_count": 1, "price_per_hour": 0.8, "estimated_usd": 1.6, "submitted_ts": 1000.0,
            "started_at": store.iso(1000.0), "last_step": None}
    base.update(kw)
    return base


# ------------------------------------------------------------------------------------------- store
def test_list_jobs_rows_and_order():
    home = CarlHome.from_env()
    store.save(rec("hf-b", submitted_ts=2000.0), home)
    store.save(rec("hf-a", submitted_ts=1000.0, status="completed", last_step=40), home)
    rows = store.list_jobs(home)
    assert [r["run_id"] for r in rows] == ["hf-a", "hf-b"]
    assert set(rows[0]) >= {"run_id", "status", "backend", "started_at", "last_step", "cost_so_far"}
    assert rows[0]["started_at"] == "1970-01-01T00:16:40Z" and rows[0]["last_step"] == 40
    assert store.list_jobs(home.root) == rows  # a path works too


def test_cost_so_far_formula():
    r = rec("x", running_since_ts=1000.0, gpu_count=2)
    assert store.cost_so_far(r, now=1000.0 + 1800) == pytest.approx(0.8 * 2 * 0.5)
    r.update(status="completed", ended_ts=1000.0 + 3600)
    assert store.cost_so_far(r, now=99999) == pytest.approx(1.6)  # ended: the clock stops
    r["cost_per_hour"] = 2.0  # the backend's reported price wins
    assert store.cost_so_far(r) == pytest.approx(2.0)
    assert store.cost_so_far(rec("never-ran", status="queued"), now=5000) == 0.0


def test_lookup_by_id_prefix_and_remote_id():
    home = CarlHome.from_env()
    store.save(rec("hf-20260101-aaaa"), home)
    store.save(rec("hf-20260101-aabb"), home)
    assert store.load("hf-20260101-aaaa", home)["run_id"] == "hf-20260101-aaaa"
    assert store.load("r-hf-20260101-aabb", home)["run_id"] == "hf-20260101-aabb"
    with pytest.raises(ValidationError):
        store.load("hf-20260101-aa", home)
    with pytest.raises(RunNotFound):
        store.load("zzz", home)


def test_torn_and_foreign_files_are_skipped():
    home = CarlHome.from_env()
    store.save(rec("ok"), home)
    (home.root / "jobs" / "torn.json").write_text('{"run_id": "torn", "sta')
    (home.root / "jobs" / "list.json").write_text("[1, 2]")
    assert [r["run_id"] for r in store.list_jobs(home)] == ["ok"]


def test_records_are_json_with_no_secret_fields():
    home = CarlHome.from_env()
    path = store.save(rec("hf-1", idempotency_key="k"), home)
    data = json.loads(path.read_text())
    assert not any("token" in k.lower() for k in data)


# ------------------------------------------------------------------------------------------- prices, estimate
def test_price_lookup_precedence():
    rs = RemoteSettings(prices={"hf:a10g-large": 9.0, "l4x1": 0.5})
    assert price_per_hour(rs, "hf", "a10g-large") == (9.0, "carl.yaml")
    assert price_per_hour(rs, "hf", "l4x1") == (0.5, "carl.yaml")
    assert price_per_hour(rs, "hf", "h200") == (DEFAULT_PRICES["hf"]["h200"], "default")
    with pytest.raises(ConfigError) as ei:
        price_per_hour(rs, "managed", "gpu-1x")
    assert ei.value.context["field"] == "remote.prices"


def test_estimate_formula_and_hours_precedence():
    cfg = validate_dict({"budget": {"max_hours": 3}, "remote": {"runpod": {"gpu_count": 4}}})
    rs = remote_settings(cfg)
    e = estimate(cfg, rs, "runpod")
    assert e.hours == 3 and e.gpu_count == 4
    assert e.estimated_usd == pytest.approx(DEFAULT_PRICES["runpod"]["NVIDIA A100 80GB PCIe"] * 4 * 3)
    cfg2 = validate_dict({"budget": {"max_hours": 3}, "remote": {"hours": 1.5}})
    assert estimate(cfg2, remote_settings(cfg2), "hf").hours == 1.5
    assert estimate(cfg2, remote_settings(cfg2), "hf", hours=0.25).estimated_usd == pytest.approx(1.5 * 0.25)


def test_enforce_maps_decisions_to_exit_5_errors():
    cfg = Config()
    rs = remote_settings(cfg)
    e = estimate(cfg, rs, "hf")
    with pytest.raises(ApprovalRequired) as ei:
        enforce(e, approved=False)
    assert ei.value.exit_code == 5 and ei.value.context["estimate"]["estimated_usd"] == 3.0
    enforce(estimate(cfg, rs, "hf", approved=True), approved=True)  # inside the budget: goes ahead
    cfg_deny = validate_dict({"policy": {"allowed_backends": ["runpod"]}})
    with pytest.raises(PermissionDenied) as ei2:
        enforce(estimate(cfg_deny, remote_settings(cfg_deny), "hf", approved=True), approved=True)
    assert ei2.value.exit_code == 5 and ei2.value.context["estimate"]["rule"] == "allowed_backends"
    with pytest.raises(BudgetError):
        enforce(estimate(cfg, rs, "hf", approved=True, budget=1.0), approved=True)


# ------------------------------------------------------------------------------------------- config
def test_remote_config_defaults_and_field_paths():
    rs = remote_settings({})
    assert rs.default_backend == "hf" and rs.hf.flavor == "a10g-large" and rs.runpod.base_url.endswith("/v1")
    with pytest.raises(ConfigError) as ei:
        remote_settings({"runpod": {"gpu_count": 0}, "retries": {"max_attempts": 99}})
    fields = {e["field"] for e in ei.value.context["errors"]}
    assert fields == {"remote.runpod.gpu_count", "remote.retries.max_attempts"}
    with pytest.raises(ConfigError) as ei2:
        remote_settings({"prices": {"hf:l4x1": -1}})
    assert "must be >= 0" in str(ei2.value)
    with pytest.raises(ConfigError) as ei3:
        remote_settings({"default_backend": "aws"})
    assert ei3.value.context["errors"][0]["field"] == "remote.default_backend"


def test_credential_status_is_masked(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from engine.remote.jobs import credential_status

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # never the developer's own
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_ABCDEFGHIJKLMNOP1234")
    rows = {r["backend"]: r for r in credential_status(remote_settings({}))}
    assert rows["runpod"]["present"] and rows["runpod"]["env_var"] == "RUNPOD_API_KEY"
    assert "ABCDEFGH" not in rows["runpod"]["shown"] and rows["runpod"]["shown"] == "set (rpa_…1234, 24 chars)"
    assert rows["hf"] == {"backend": "hf", "env_var": "HF_TOKEN", "present": False, "source": None,
                          "shown": "not set"}


def test_credential_status_sees_a_token_saved_by_hf_auth_login(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from engine.remote.jobs import credential_status

    token_file = tmp_path / "token"
    token_file.write_text("hf_SavedByLoginABCDEFGH9876")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    row = {r["backend"]: r for r in credential_status(remote_settings({}))}["hf"]
    assert row["present"] and row["source"] == "saved"
    assert "SavedByLogin" not in row["shown"] and row["shown"].endswith("9876, 27 chars)")


@pytest.mark.parametrize("backend,remote", [("runpod", {}), ("managed", {"managed": {"url": "https://m.invalid"},
                                                                           "prices": {"gpu-1x": 1.0}})])
def test_dry_run_needs_no_credentials_and_sends_nothing(backend, remote):
    from engine.remote.jobs import submit_job

    out = submit_job(validate_dict({"remote": remote}), backend, dry_run=True)
    assert out["dry_run"] and out["request"]["method"] == "POST"
    assert out["request"]["headers"]["Authorization"] == "Bearer ***"
    assert store.list_jobs() == []


def test_update_rereads_so_a_status_poll_keeps_the_log_followers_step():
    home = CarlHome.from_env()
    store.save(rec("hf-x", submitted_ts=1000.0), home)
    stale = store.load("hf-x", home)  # what a status poll read before the follower saved its step
    store.update("hf-x", lambda r: r.__setitem__("last_step", 12), home)
    store.update(stale["run_id"], lambda r: r.__setitem__("status", "running"), home)
    fresh = store.load("hf-x", home)
    assert fresh["status"] == "running" and fresh["last_step"] == 12
