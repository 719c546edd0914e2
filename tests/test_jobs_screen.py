"""The jobs panel (screens/jobs.py), driven by keys against the loopback backends the remote tests use
(tests/test_remote_fakes.py — real httpx / huggingface_hub clients on 127.0.0.1): submit → approval modal →
approve → the job is listed → live status → logs → stop; the no-credential state; denial; inline errors; and
snapshots at 80×24 and 120×40 (no credentials; with jobs listed), deterministic (fixed CARL_HOME, frozen
clock, fixed records, polling off)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from textual.app import App, ComposeResult
from textual.widgets import Log, Static

from carl_tui.app import CarlApp
from engine.home import CarlHome
from engine.ledger import Ledger
from engine.remote import store
from screens.approval import ApprovalScreen
from screens.context import WorkbenchContext
from screens.jobs import ConfirmStopScreen, JobsScreen, log_text
from tests.test_remote_fakes import ManagedFake

FAST_RETRIES = {"max_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.002, "timeout_s": 2.0}
SIZES = [(80, 24), (120, 40)]
T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
CLOCK = T0 + 5400.0


def write_config(d: Path, remote: dict, budget: dict | None = None) -> Path:
    data: dict[str, Any] = {"project": {"name": "remote-demo"},
                            "remote": {"retries": FAST_RETRIES, "poll_interval_s": 0.02, "setup": "", **remote}}
    if budget:
        data["budget"] = budget
    p = d / "carl.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def ledger_blocks(action: str | None = None) -> list[dict]:
    home = CarlHome.from_env()
    if not (home.root / "ledger").exists():
        return []
    return [b for b in Ledger(home).iter_blocks() if action is None or b["action"] == action]


class Host(App):
    """A bare app carrying a WorkbenchContext that opens the jobs screen on mount."""

    def __init__(self, ctx: WorkbenchContext, **screen_kw: Any):
        super().__init__()
        self.ctx = ctx
        self.screen_kw = screen_kw

    def compose(self) -> ComposeResult:
        yield Static("host")

    def on_mount(self) -> None:
        self.push_screen(JobsScreen(**self.screen_kw))


def host(cwd: Path, config: Path | None = None, poll: float = 0.2, **kw: Any) -> Host:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=cwd, config_path=config)
    return Host(ctx, poll_interval_s=poll, **kw)


async def until(pilot, cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await pilot.pause(0.05)


def jobs_screen(app: App) -> JobsScreen:
    s = next(s for s in app.screen_stack if isinstance(s, JobsScreen))
    return s


def message(screen: JobsScreen) -> str:
    return screen.messages[-1] if screen.messages else ""


def text_of(screen: JobsScreen, selector: str) -> str:
    """What a Static shows, as plain text (its content rendered by rich, no colours)."""
    import io

    from rich.console import Console

    content = screen.query_one(selector, Static).content
    if isinstance(content, str):
        from rich.text import Text

        content = Text.from_markup(content)
    console = Console(width=200, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(content)
    return console.file.getvalue()


def log_lines(screen: JobsScreen) -> list[str]:
    return [str(x) for x in screen.query_one(Log).lines]








def managed_config(tmp_path: Path, fake: ManagedFake, **extra: Any) -> Path:
    return write_config(tmp_path, {"default_backend": "managed", "hours": 2,
                                   "managed": {"url": f"{fake.url}/api", "flavor": "gpu-1x"},
                                   "prices": {"managed:gpu-1x": 2.0}, **extra})


# ------------------------------------------------------------------------------------------- the whole story
@pytest.mark.anyio
async def test_submit_approve_list_status_logs_stop_on_managed(managed, tmp_path, _isolated_home):
    cfg = managed_config(tmp_path, managed)
    app = host(tmp_path, cfg)
    async with app.run_test(size=(100, 30)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "first load")
        assert js.backend == "managed"  # remote.default_backend
        panel = text_of(js, "#jobs-backends")
        assert "$4.00" in panel and "CARL_MANAGED_TOKEN" in panel and managed.token not in panel

        # submit → the approval modal with the estimate
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the approval modal")
        est = app.screen.estimate
        assert est["backend"] == "managed" and est["estimated_usd"] == 4.0 and est["hours"] == 2
        assert managed.runs == {} and ledger_blocks("approval") == []

        # approve → submitted on the wire, listed, both ledger blocks (via tui)
        await pilot.press("y")
        await until(pilot, lambda: js.busy is None and js.jobs, "the submitted job in the list")
        assert len(managed.runs) == 1
        rid = next(iter(managed.runs))
        job = js.jobs[0]
        assert job["remote_id"] == rid and job["status"] == "queued" and job["backend"] == "managed"
        assert js.selected_run_id() == job["run_id"] and "submitted" in message(js)
        approvals, submits = ledger_blocks("approval"), ledger_blocks("job.submit")
        assert [b["payload"]["job_id"] for b in approvals] == [job["run_id"]]
        assert approvals[0]["payload"]["via"] == "tui" and approvals[0]["payload"]["estimated_usd"] == 4.0
        assert submits[0]["payload"]["remote_id"] == rid
        post = managed.calls("POST", "/api/runs")[0]
        assert post.headers["idempotency-key"] and post.body["flavor"] == "gpu-1x"

        # live status: the backend moves on; the poller (0.2 s) picks it up without a key press
        managed.runs[rid]["status"] = "running"
        managed.runs[rid]["started_at"] = time.time() - 1800
        await until(pilot, lambda: js.jobs[0]["status"] == "running", "running via polling")
        assert js.jobs[0]["cost_so_far"] > 0.9  # ~0.5 h at $2/h

        # a failing status poll is said once (code, message, hint), kept on the detail line, then clears
        managed.fault("GET", rf"/api/runs/{rid}", status=401, times=1)
        await until(pilot, lambda: job["run_id"] in js.poll_errors, "the status error")
        assert "carl.credential" in message(js) and "hint:" in message(js)
        assert "carl.credential" in text_of(js, "#jobs-detail")
        await until(pilot, lambda: not js.poll_errors, "the next poll to succeed")
        assert "carl.credential" not in text_of(js, "#jobs-detail")

        # logs: follow, plain lines and carl frames, then cancel with escape while the job still runs
        managed.logs[rid] += ["loading model", json.dumps({"type": "frame", "step": 3, "phi": 0.25})]
        await pilot.press("f")
        await until(pilot, lambda: len(log_lines(js)) >= 2, "two log lines")
        assert log_lines(js)[:2] == ["loading model", "frame · step 3 · phi 0.2500"]
        assert js.following == job["run_id"]
        managed.logs[rid].append("step 4 coming")
        await until(pilot, lambda: "step 4 coming" in log_lines(js), "a line that arrived while following")
        await pilot.press("escape")
        assert js.following is None
        await until(pilot, lambda: not [w for w in app.workers if w.group == "jobs-logs" and w.is_running],
                    "the log worker to end after cancel", timeout=5)
        n_calls = len(managed.calls("GET", f"/api/runs/{rid}/logs"))
        await pilot.pause(0.2)
        assert len(managed.calls("GET", f"/api/runs/{rid}/logs")) == n_calls  # nothing polls after cancel
        assert store.load(job["run_id"])["last_step"] == 3

        # stop: confirm modal, n keeps it, x + y stops it
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStopScreen), "the stop confirm")
        await pilot.press("n")
        await pilot.pause()
        assert managed.runs[rid]["status"] == "running"
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStopScreen), "the stop confirm again")
        await pilot.press("y")
        await until(pilot, lambda: js.jobs[0]["status"] == "stopped", "stopped in the list")
        assert managed.runs[rid]["status"] == "cancelled"
        stops = ledger_blocks("job.stop")
        assert len(stops) == 1 and stops[0]["payload"]["job_id"] == job["run_id"]

        # a stopped job cannot be stopped again; no more polls for it
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmStopScreen) and "already stopped" in message(js)
    assert managed.token not in "".join(p.read_text(errors="replace") for p in _isolated_home.rglob("*")
                                        if p.is_file())


@pytest.mark.anyio
async def test_follow_ends_with_the_run(managed, tmp_path):
    cfg = managed_config(tmp_path, managed)
    app = host(tmp_path, cfg, poll=0)
    async with app.run_test(size=(100, 30)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "approval")
        await pilot.press("y")
        await until(pilot, lambda: js.jobs, "job listed")
        rid = js.jobs[0]["remote_id"]
        managed.logs[rid] += [f"line {i}" for i in range(30)]
        managed.finish_after_logs = True
        await pilot.press("f")
        await until(pilot, lambda: js.following is None and len(log_lines(js)) == 30, "the follow to end")
        title = text_of(js, "#jobs-log-title")
        assert "ended (30 lines" in title
        assert js.jobs[0]["status"] == "completed"


@pytest.mark.anyio
async def test_leaving_the_screen_mid_follow_cancels_it_cleanly(managed, tmp_path):
    cfg = managed_config(tmp_path, managed)
    app = host(tmp_path, cfg, poll=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "approval")
        await pilot.press("y")
        await until(pilot, lambda: js.jobs, "job listed")
        rid = js.jobs[0]["remote_id"]
        managed.runs[rid]["status"] = "running"
        managed.logs[rid].append("first")
        await pilot.press("f")
        await until(pilot, lambda: "first" in log_lines(js), "a line")
        cancel = js._follow_cancel
        app.pop_screen()
        await pilot.pause(0.3)
        assert cancel is not None and cancel.is_set() and not js.is_attached
        await until(pilot, lambda: not [w for w in app.workers if w.group == "jobs-logs" and w.is_running],
                    "the log worker to stop", timeout=5)
        n = len(managed.requests)
        await pilot.pause(0.5)
        assert len(managed.requests) == n  # neither logs nor status are polled for a screen that is gone


# ------------------------------------------------------------------------------------------- refusals and errors
@pytest.mark.anyio
async def test_no_credential_is_shown_and_blocks_submit_before_any_approval(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no `hf auth login` token either
    app = host(tmp_path, None)  # no carl.yaml: the built-in demo config, hf by default
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        panel = text_of(js, "#jobs-backends")
        for var in ("HF_TOKEN", "RUNPOD_API_KEY", "CARL_MANAGED_TOKEN"):
            assert f"✗ {var} unset" in panel
        assert "No remote jobs yet" in message(js)
        await pilot.press("s")
        await until(pilot, lambda: js.busy is None and "carl.credential" in message(js), "the credential error")
        msg = message(js)
        assert "$HF_TOKEN is not set" in msg and "hint:" in msg and "export HF_TOKEN" in msg
        assert not isinstance(app.screen, ApprovalScreen)
        assert ledger_blocks() == [] and js.jobs == []
        # runpod likewise, naming its variable
        await pilot.press("2")
        await pilot.press("s")
        await until(pilot, lambda: js.busy is None and "RUNPOD_API_KEY" in message(js), "runpod credential error")
        assert "carl.credential" in message(js)


@pytest.mark.anyio
async def test_denying_the_approval_submits_nothing(managed, tmp_path):
    app = host(tmp_path, managed_config(tmp_path, managed))
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "approval")
        await pilot.press("n")
        await until(pilot, lambda: js.busy is None, "idle")
        assert "denied" in message(js) and managed.runs == {} and managed.requests == []
        assert ledger_blocks("approval") == [] and js.jobs == []


@pytest.mark.anyio
async def test_over_the_cap_cannot_be_approved(managed, tmp_path):
    cfg = managed_config(tmp_path, managed, hours=8)  # $16 > the $10 per-job cap
    app = host(tmp_path, cfg)
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        assert "refused" in text_of(js, "#jobs-backends")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "approval (refused)")
        assert app.screen.estimate["decision"] == "deny"
        await pilot.press("y")  # rings the bell; cannot approve
        await pilot.pause()
        assert isinstance(app.screen, ApprovalScreen)
        await pilot.press("escape")
        await until(pilot, lambda: js.busy is None, "idle")
        assert managed.runs == {} and ledger_blocks("approval") == []


@pytest.mark.anyio
async def test_backend_failure_after_approval_is_inline_with_code_and_hint(managed, tmp_path):
    managed.fault("POST", r"/api/runs", status=503, times=5)
    app = host(tmp_path, managed_config(tmp_path, managed))
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "approval")
        await pilot.press("y")
        await until(pilot, lambda: js.busy is None and "carl.network" in message(js), "the network error")
        assert "hint:" in message(js) and "idempotency key" in message(js)
        assert [j["status"] for j in js.jobs] == ["failed"]  # the approved-then-failed submit is recorded
        assert js.query_one("#jobs-message").has_class("error")


@pytest.mark.anyio
async def test_estimate_and_config_errors_are_inline(tmp_path):
    cfg = write_config(tmp_path, {"default_backend": "managed", "managed": {"url": "http://127.0.0.1:9/api"}})
    app = host(tmp_path, cfg)
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        msg = message(js)
        assert "carl.config" in msg and "no price for managed:gpu-1x" in msg and "remote:" in msg  # the hint
        assert "✗ carl.config" in text_of(js, "#jobs-backends")
        await pilot.press("1")  # hf has a default price
        assert "No remote jobs yet" in message(js)

    bad = write_config(tmp_path, {"hf": {"flavr": "x"}})
    app = host(tmp_path, bad)
    async with app.run_test(size=(80, 24)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        assert "carl.config" in message(js) and "remote.hf.flavr" in message(js)


@pytest.mark.anyio
async def test_hf_submit_through_the_hub_client_and_runpod_logs_unsupported(hub, pods, tmp_path):
    cfg = write_config(tmp_path, {"hf": {"flavor": "t4-small"}, "hours": 1,
                                  "runpod": {"base_url": f"{pods.url}/v1"}})
    app = host(tmp_path, cfg, poll=0)
    async with app.run_test(size=(120, 40)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        panel = text_of(js, "#jobs-backends")
        assert "✓ HF_TOKEN hf_…" in panel and hub.token not in panel and "✓ RUNPOD_API_KEY" in panel
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "approval")
        assert app.screen.estimate["estimated_usd"] == 0.4
        await pilot.press("y")
        await until(pilot, lambda: js.busy is None and js.jobs, "hf job listed")
        assert len(hub.jobs) == 1 and js.jobs[0]["backend"] == "hf"
        hf_remote = js.jobs[0]["remote_id"]
        hub.logs[hf_remote] += ["hello from the hub"]
        hub.set_stage(hf_remote, "COMPLETED")
        await pilot.press("f")
        await until(pilot, lambda: js.following is None and "hello from the hub" in log_lines(js), "hf logs")

        await pilot.press("2", "s")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "runpod approval")
        await pilot.press("y")
        await until(pilot, lambda: js.busy is None and len(js.jobs) == 2, "runpod job listed")
        assert len(pods.pods) == 1 and js.selected_job()["backend"] == "runpod"
        await pilot.press("f")
        await until(pilot, lambda: "carl.remote.unsupported" in message(js), "runpod logs unsupported")
        assert "hint:" in message(js)


def test_log_text_formats_frames_and_passes_lines():
    assert log_text('{"type": "frame", "step": 2, "phi": 0.5, "gate": "A"}') == "frame · step 2 · phi 0.5000 · gate A"
    assert log_text("plain\n") == "plain"
    assert log_text('{"type": "frame"}') == '{"type": "frame"}'


# ------------------------------------------------------------------------------------------- snapshots
def seed_jobs(home: CarlHome) -> None:
    """Three fixed records (completed, running, failed) — no network is touched (polling is off)."""
    base = {"gpu_count": 1, "hours": 2.0, "image": "img", "name": "carl-demo", "project": "demo",
            "config_path": None, "namespace": None, "approved_via": "tui", "idempotency_key": "k"}
    recs = [
        {**base, "run_id": "hf-20250615-150640-a1b2c3", "backend": "hf", "remote_id": "0000000000000000000000a1",
         "status": "completed", "flavor": "a10g-large", "price_per_hour": 1.5, "estimated_usd": 3.0,
         "submitted_ts": T0, "running_since_ts": T0 + 60, "ended_ts": T0 + 3660, "last_step": 120},
        {**base, "run_id": "runpod-20250615-153640-d4e5f6", "backend": "runpod", "remote_id": "pod0001",
         "status": "running", "flavor": "NVIDIA A100 80GB PCIe", "price_per_hour": 1.64, "estimated_usd": 3.28,
         "submitted_ts": T0 + 1800, "running_since_ts": T0 + 1800, "ended_ts": None, "last_step": None},
        {**base, "run_id": "managed-20250615-160640-0a0b0c", "backend": "managed", "remote_id": "run-7",
         "status": "failed", "flavor": "gpu-1x", "price_per_hour": 2.0, "estimated_usd": 4.0,
         "submitted_ts": T0 + 3600, "running_since_ts": None, "ended_ts": T0 + 3700, "last_step": None,
         "message": "submit failed: carl.network"},
    ]
    for r in recs:
        r["started_at"] = store.iso(r["submitted_ts"])
        r["ended_at"] = store.iso(r["ended_ts"])
        store.save(r, home)


def snap_app(root: Path) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: CLOCK)
    return CarlApp(ctx=ctx, screen="project")


async def open_jobs(pilot) -> None:
    await pilot.pause()
    screen = JobsScreen(poll_interval_s=0)
    await pilot.app.push_screen(screen)
    deadline = time.monotonic() + 15
    while not screen.loaded and time.monotonic() < deadline:
        await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_no_credentials(snap_compare, snap_home, snap_env, monkeypatch, size):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(snap_home / "no-token"))
    assert snap_compare(snap_app(snap_home), terminal_size=size, run_before=open_jobs)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_with_jobs(snap_compare, snap_home, snap_env, monkeypatch, size):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Snapshot0Token1234567890abcd")
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_SNAPSHOTKEY00001234")
    seed_jobs(CarlHome.from_env())

    async def run_before(pilot):
        await open_jobs(pilot)
        await pilot.press("up")  # from the newest (failed) job to the running one
        await pilot.pause()

    assert snap_compare(snap_app(snap_home), terminal_size=size, run_before=run_before)


def test_snapshot_approval_over_the_panel(snap_compare, snap_home, snap_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Snapshot0Token1234567890abcd")

    async def run_before(pilot):
        await open_jobs(pilot)
        await pilot.press("s")
        deadline = time.monotonic() + 15
        while not isinstance(pilot.app.screen, ApprovalScreen) and time.monotonic() < deadline:
            await pilot.pause(0.05)
        await pilot.pause()

    assert snap_compare(snap_app(snap_home), terminal_size=(80, 24), run_before=run_before)


def test_snapshot_credential_error_inline(snap_compare, snap_home, snap_env, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(snap_home / "no-token"))

    async def run_before(pilot):
        await open_jobs(pilot)
        await pilot.press("s")
        screen = next(s for s in pilot.app.screen_stack if isinstance(s, JobsScreen))
        deadline = time.monotonic() + 15
        while (screen.busy or "carl.credential" not in message(screen)) and time.monotonic() < deadline:
            await pilot.pause(0.05)
        await pilot.pause()

    assert snap_compare(snap_app(snap_home), terminal_size=(80, 24), run_before=run_before)


# ------------------------------------------------------------------------------------------- pull (p)
def seed_pullable(home: CarlHome, tmp_path: Path, repo: str = "alice/demo-out") -> str:
    """The fixed records, the completed hf job with an output repo, and its run uploaded to the loopback Hub."""
    from engine.remote.sync import OutputSync
    from tests.test_remote_sync import fake_run

    seed_jobs(home)
    run_id = "hf-20250615-150640-a1b2c3"
    store.update(run_id, lambda r: r.__setitem__("output_repo", repo), home)
    sync = OutputSync(fake_run(tmp_path / "in-container"), repo, run_id=run_id, log=lambda m: None)
    sync.finish("completed", final_allowed=True, reason="eval gate passed", meta_fields={"status": "completed"})
    return run_id


async def pull_selected(pilot, ups: int) -> JobsScreen:
    await open_jobs(pilot)
    for _ in range(ups):
        await pilot.press("up")
    await pilot.press("d")
    screen = jobs_screen(pilot.app)
    await until(pilot, lambda: screen.busy is None and message(screen).startswith(("✓", "[b]✗")), "the pull")
    await pilot.pause()
    return screen


@pytest.mark.anyio
async def test_pull_brings_the_selected_jobs_run_home(hub, tmp_path):
    home = CarlHome.from_env()
    run_id = seed_pullable(home, tmp_path)
    app = snap_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await pull_selected(pilot, ups=1)  # the running RunPod job: no output repo
        assert "carl.config" in message(screen) and "train.output_repo" in message(screen)
        await pilot.press("up", "d")
        await until(pilot, lambda: screen.busy is None and message(screen).startswith("✓"), "the pull")
        assert f"pulled {run_id} from alice/demo-out" in message(screen) and "final model" in message(screen)
    from engine.runs import RunStore

    meta = RunStore(home).meta(run_id)
    assert meta["status"] == "completed" and meta["backend"] == "hf" and meta["last_step"] == 3
    assert (home.runs / run_id / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_pulled_run(snap_compare, snap_home, snap_env, hub, tmp_path, size):
    seed_pullable(CarlHome.from_env(), tmp_path)

    async def run_before(pilot):
        await pull_selected(pilot, ups=2)

    assert snap_compare(snap_app(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.anyio
async def test_an_unexpected_failure_in_a_pull_is_shown_typed_and_the_screen_is_not_left_busy(tmp_path,
                                                                                           monkeypatch):
    """Not only carl's own errors: any exception in a worker thread is shown (code, message, hint) instead of
    ending the app, and the screen takes keys again."""
    import engine.remote.sync as sync

    seed_jobs(CarlHome.from_env())

    def broken(*args, **kwargs):  # fault injection: a library failing in a way carl did not foresee
        raise OSError("disk went away")

    monkeypatch.setattr(sync, "pull_run", broken)
    app = snap_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await pull_selected(pilot, ups=2)
        assert screen.busy is None and app.is_running
        assert "internal error: OSError: disk went away" in message(screen)


@pytest.mark.anyio
async def test_the_estimate_says_plainly_when_it_prices_a_gpu_for_a_cpu_only_config(tmp_path):
    # the built-in demo (the default model) trains on a CPU; hf's default flavor is a GPU
    cfg = write_config(tmp_path, {"default_backend": "hf"})
    app = host(tmp_path, cfg)
    async with app.run_test(size=(120, 40)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        panel = " ".join(text_of(js, "#jobs-backends").split())
        assert "runs on a CPU" in panel and "built-in CPU demo" in panel and "a10g-large is a GPU" in panel
        assert "remote.hf.flavor: cpu-upgrade" in panel
    # a CPU flavor: nothing to say
    cpu = write_config(tmp_path, {"default_backend": "hf", "hf": {"flavor": "cpu-upgrade"}})
    app = host(tmp_path, cpu)
    async with app.run_test(size=(120, 40)) as pilot:
        js = jobs_screen(app)
        await until(pilot, lambda: js.loaded, "load")
        assert "runs on a CPU" not in " ".join(text_of(js, "#jobs-backends").split())
