"""The jobs panel shows the managed backend's entitlement state, read from the local cache (no network):
snapshots at 80×24 and 120×40 with fresh grants, and the other states as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.home import CarlHome
from engine.platform.entitlements import FORMAT
from engine.platform.store import write_json
from screens.jobs import JobsScreen
from engine.ledger.keys import signer_from_seed
from tests.platform_fake import b64, jws
from tests.test_jobs_screen import CLOCK, SIZES, open_jobs, snap_app

BASE = "https://platform.example"


def seed(root: Path, *, age_s: float, offline: bool = False, grants=("jobs.submit",)) -> None:
    """carl.yaml naming the platform, a pinned key and a signed cached token fetched ``age_s`` before CLOCK."""
    (root / "carl.yaml").write_text(yaml.safe_dump({"project": {"name": "demo"},
                                                    "remote": {"managed": {"url": f"{BASE}/api"},
                                                               "prices": {"managed:gpu-1x": 2.0}}}))
    key = signer_from_seed("platform-key-1")
    fetched = CLOCK - age_s
    token = jws({"sub": "user-42", "iss": BASE, "aud": ["carl"], "iat": int(fetched), "nbf": int(fetched),
                 "exp": int(fetched) + 900,
                 "tier": "pro", "grants": list(grants)}, key, "carl-camp-1")
    d = CarlHome.from_env().root / "platform"
    write_json(d / "jwks-pins.json", {BASE: {"carl-camp-1": b64(key.public_bytes)}})
    write_json(d / "entitlements.json", {"format": FORMAT, "platform": BASE, "token": token, "kid": "carl-camp-1",
                                         "fetched_at": fetched, "offline_since": fetched + 60 if offline else None,
                                         "expires_in": 900, "tier": "pro"})


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_managed_entitlements_fresh(snap_compare, snap_home, snap_env, monkeypatch, size):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(snap_home / "no-token"))
    monkeypatch.setenv("CARL_MANAGED_TOKEN", "mgd_SNAPSHOT0123456789")
    seed(snap_home, age_s=120)

    async def run_before(pilot):
        await open_jobs(pilot)
        await pilot.press("3")  # pick the managed backend
        await pilot.pause()

    assert snap_compare(snap_app(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.anyio
@pytest.mark.parametrize("age_s,offline,status", [
    (120, False, "fresh"), (3600, False, "stale"), (3600, True, "offline_grace"),
    (25 * 3600, True, "offline_grace_expired"),
])
async def test_panel_shows_each_cached_state(snap_home, age_s, offline, status):
    seed(snap_home, age_s=age_s, offline=offline)
    app = snap_app(snap_home)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_jobs(pilot)
        screen = next(s for s in app.screen_stack if isinstance(s, JobsScreen))
        assert screen.backend_rows["managed"]["entitlements"]["status"] == status
        admits = status in ("fresh", "offline_grace")
        assert screen.backend_rows["managed"]["entitlements"]["admits"] == admits
        await pilot.press("3")
        await pilot.pause()
        assert (f"cached grants are [b]{status}" in screen.messages[-1]) == (not admits)


@pytest.mark.anyio
async def test_panel_quarantines_a_corrupt_cache(snap_home):
    seed(snap_home, age_s=120)
    p = CarlHome.from_env().root / "platform" / "entitlements.json"
    data = json.loads(p.read_text())
    data["token"] = data["token"][:-4] + "AAAA"
    p.write_text(json.dumps(data))
    app = snap_app(snap_home)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_jobs(pilot)
        screen = next(s for s in app.screen_stack if isinstance(s, JobsScreen))
        assert screen.backend_rows["managed"]["entitlements"]["status"] == "corrupt"
    assert not p.exists() and list(p.parent.glob("entitlements.corrupt-*.json"))


@pytest.mark.anyio
async def test_a_managed_submit_refreshes_the_shown_state(managed, tmp_path):
    from screens.approval import ApprovalScreen
    from tests.test_jobs_screen import host, jobs_screen, managed_config, text_of, until

    app = host(tmp_path, managed_config(tmp_path, managed), poll=0)
    async with app.run_test(size=(120, 30)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "first load")
        assert js.backend_rows["managed"]["entitlements"]["status"] == "missing"
        assert "grants missing" in text_of(js, "#jobs-backends") and managed.requests == []  # no network to show it
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the approval modal")
        await pilot.press("y")
        await until(pilot, lambda: js.backend_rows["managed"]["entitlements"]["status"] == "fresh", "fresh grants")
        assert len(managed.runs) == 1 and "grants fresh" in text_of(js, "#jobs-backends")


@pytest.mark.anyio
async def test_a_managed_submit_without_the_grant_is_inline(managed, tmp_path):
    from screens.approval import ApprovalScreen
    from tests.test_jobs_screen import host, jobs_screen, managed_config, message, until

    managed.grants = []
    app = host(tmp_path, managed_config(tmp_path, managed), poll=0)
    async with app.run_test(size=(120, 30)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "first load")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the approval modal")
        await pilot.press("y")
        await until(pilot, lambda: js.busy is None and "carl.permission" in message(js), "the refusal")
        assert "jobs.submit:gpu-1x" in message(js) and managed.runs == {}
