"""The chat screen: snapshots (no key; empty; mid-conversation with a tool panel; approval modal) at 80×24 and
120×40, and pilot tests of its behaviour, against the loopback Messages API server."""

from __future__ import annotations

from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine.chat.sessions import SessionStore
from engine.home import CarlHome
from screens.context import WorkbenchContext
from tests.loopback_anthropic import LoopbackAnthropic, text, tool_use

SIZES = [(80, 24), (120, 40)]
KEY = "sk-ant-loopback-test-0000000000"
CLOCK = 1_700_000_000.0


def make_app(root: Path) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: CLOCK)
    return CarlApp(ctx=ctx, screen="chat")


@pytest.fixture
def loop(monkeypatch):
    servers = []

    def start(script):
        srv = LoopbackAnthropic(script).start()
        servers.append(srv)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        return srv

    yield start
    for s in servers:
        s.stop()


async def _until(pilot, cond, limit=1200):
    for _ in range(limit):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached")


def _type(text):
    return [("space" if ch == " " else ch) for ch in text]


def _chat(app):
    from screens.chat import ChatScreen

    return next(s for s in app.screen_stack if isinstance(s, ChatScreen))


# ------------------------------------------------------------------------------------------------ snapshots
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat_without_key(snap_compare, snap_home, snap_env, size):
    assert snap_compare(make_app(snap_home), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat_empty_with_key(snap_compare, snap_home, snap_env, size, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert snap_compare(make_app(snap_home), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat_conversation_with_tool_panel(snap_compare, snap_home, snap_env, size, loop):
    (snap_home / "carl.yaml").write_text("project:\n  name: snap-proj\n")
    loop([tool_use("show_config", {}, preface="Let me read the config."),
          text("Your project is **snap-proj**, on the built-in tiny model:\n\n- 60 GRPO steps\n- LoRA off",
               {"input_tokens": 2000, "output_tokens": 120})])

    async def run_before(pilot):
        await pilot.press("slash", *_type("what is my project?"), "enter")
        await _until(pilot, lambda: _chat(pilot.app).state == "ready" and not _chat(pilot.app).busy)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat_approval_modal(snap_compare, snap_home, snap_env, size, loop):
    """The ledger policy makes show_config need approval: the modal opens over the conversation."""
    (snap_home / "carl.yaml").write_text("policy:\n  tools_need_approval: [show_config]\n")
    loop([tool_use("show_config", {}, preface="I need to read the config."), text("ok")])

    async def run_before(pilot):
        from screens.chat import ApprovalModal

        await pilot.press("slash", *_type("read it"), "enter")
        await _until(pilot, lambda: isinstance(pilot.app.screen, ApprovalModal))
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


# ------------------------------------------------------------------------------------------------ behaviour
@pytest.mark.anyio
async def test_approve_refuse_resume_and_history(tmp_path, loop, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "carl.yaml").write_text("policy:\n  tools_need_approval: [show_config]\n")
    srv = loop([tool_use("show_config", {}, tid="t1"), text("Refused, fine."),
                tool_use("show_config", {}, tid="t2"), text("Approved, here it is.")])
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        from screens.chat import ApprovalModal, ToolPanel

        chat = _chat(app)
        await pilot.press("slash", *_type("first"), "enter")
        await _until(pilot, lambda: isinstance(app.screen, ApprovalModal))
        await pilot.press("n")
        await _until(pilot, lambda: not chat.busy)
        await pilot.press(*_type("second"))
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, ApprovalModal))
        await pilot.press("y")
        await _until(pilot, lambda: not chat.busy)
        panels = list(chat.query(ToolPanel))
        assert ["approval.required" in str(p.title) for p in panels] == [True, False]
        assert "— ok" in str(panels[1].title)
        results = [srv.requests[i]["body"]["messages"][-1]["content"][0] for i in (1, 3)]
        assert results[0]["is_error"] is True and "carl.approval.required" in results[0]["content"]
        assert "is_error" not in results[1]
        sid = chat.session
        assert chat.session_cost > 0 and f"session {sid}" in str(chat.query_one("#chat-status").render())

        # prompt history
        await pilot.press("up")
        assert chat.query_one("#prompt").value == "second"
        await pilot.press("up")
        assert chat.query_one("#prompt").value == "first"
        await pilot.press("down", "down")
        assert chat.query_one("#prompt").value == ""

        # new session, then resume the old one from the list
        await pilot.press("ctrl+n")
        assert chat.session is None and not list(chat.query(ToolPanel))
        await pilot.press("ctrl+r")
        await pilot.press("enter")
        await pilot.pause()
        assert chat.session == sid and len(list(chat.query(ToolPanel))) == 2
    assert len(SessionStore(CarlHome.from_env().sessions_db).list()) == 1


@pytest.mark.anyio
async def test_escape_cancels_a_reply_in_flight(tmp_path, loop, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import threading

    release = threading.Event()

    def slow(body):  # the server holds the reply until the test has pressed escape
        release.wait(60)  # released by the test right after its Esc; generous under load
        return text("a reply that arrives too late")

    loop([slow])
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        chat = _chat(app)
        await pilot.press("slash", *_type("hi"), "enter")
        await _until(pilot, lambda: chat.busy)
        await _until(pilot, lambda: "Cancel reply" in _footer(app))  # while a reply streams, Esc cancels it
        await pilot.press("escape")
        assert chat._cancel.is_set()
        assert app.focused is chat.query_one("#prompt")  # this Esc cancelled; it did not also leave the box
        release.set()
        await _until(pilot, lambda: not chat.busy)
        assert chat.state == "cancelled"
        await _until(pilot, lambda: "Leave input" in _footer(app))  # the footer redraws on a later refresh
        await pilot.press("escape")  # nothing in flight: Esc leaves the prompt box
        assert app.focused is None


def _footer(app) -> str:
    return app.screen._compositor.render_strips()[-1].text


@pytest.mark.anyio
async def test_escape_leaves_the_prompt_so_screen_keys_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        chat = _chat(app)
        prompt = chat.query_one("#prompt")
        await pilot.press("slash", *_type("hi"))
        assert app.focused is prompt
        await _until(pilot, lambda: "esc Leave input" in _footer(app))
        await pilot.press("escape")
        assert app.focused is None
        await _until(pilot, lambda: "/ Ask" in _footer(app))
        await pilot.press("j")  # a screen key again, not a "j" typed into the prompt
        await pilot.pause()
        assert app.current_mode == "jobs" and prompt.value == "hi"
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("slash")  # back into the prompt box
        assert app.focused is prompt
        await pilot.press("x")
        assert prompt.value == "hix"


@pytest.mark.anyio
async def test_paid_remote_submit_uses_the_remote_approval_modal(tmp_path, loop, monkeypatch):
    """submit_remote_job carries the engine's cost estimate: the remote jobs' ApprovalScreen shows it; n refuses."""
    pytest.importorskip("screens.approval")
    monkeypatch.chdir(tmp_path)
    srv = loop([tool_use("submit_remote_job", {"backend": "hf"}), text("Not submitted.")])
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        from screens.approval import ApprovalScreen

        chat = _chat(app)
        await pilot.press("slash", *_type("train on hf"), "enter")
        await _until(pilot, lambda: isinstance(app.screen, ApprovalScreen))
        assert app.screen.estimate["backend"] == "hf" and app.screen.estimate["estimated_usd"] > 0
        await pilot.press("n")
        await _until(pilot, lambda: not chat.busy)
    res = srv.requests[1]["body"]["messages"][-1]["content"][0]
    assert res["is_error"] is True and "carl.approval.required" in res["content"]
