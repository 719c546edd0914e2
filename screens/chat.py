"""Chat screen: ask the agent about runs; it answers from engine data through the bounded tool set.

The conversation streams in as Markdown; each tool call shows inline as a collapsible panel (name, input,
ok/error, result). Tools with effects open an approval dialog first. The status line shows the model, the
session and its running cost. The agent runs in a thread worker (``engine.chat.agent``); the worker only talks
to the UI through ``call_from_thread``, and redraws of the streamed reply are batched (≤ 10 per second).

Keys: enter send · ↑/↓ prompt history · ctrl+r sessions (enter resumes, delete removes) · ctrl+n new session.
Esc has one meaning at a time, and the footer names it: while a reply streams, Esc cancels it; otherwise Esc
leaves the prompt box, so single-letter keys (j, o, t, ?) switch screens instead of being typed. ``/`` or ``i``
goes back to the prompt box. Without ``ANTHROPIC_API_KEY`` the screen says how to set it; every
other screen works without it.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Collapsible, Footer, Header, Input, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from engine.chat.sessions import SessionStore
from engine.errors import CARLError
from screens.context import context_of

NO_KEY_TEXT = (
    "**No Anthropic API key.** The chat agent needs one; nothing else in carl does.\n\n"
    "Set it in the shell that starts carl, then reopen this screen:\n\n"
    "```\nexport ANTHROPIC_API_KEY=sk-ant-...\n```\n\n"
    "Keys come from console.anthropic.com. carl never stores the key. `ANTHROPIC_BASE_URL` points carl at "
    "another Messages-API endpoint. In scripts: `carl --batch ask \"...\" --api-key KEY`."
)
WELCOME_TEXT = ("Ask about your runs in plain words: *is my last run collapsing?* · *compare the last two runs* · "
                "*start the tiny demo with LoRA*. The agent answers from engine data through a fixed set of tools; "
                "anything with effects asks for your approval first.")
FLUSH_S = 0.1  # streamed text is redrawn at most 10 times a second


def _short_json(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PromptInput(Input):
    """The prompt box, with ↑/↓ through the prompts sent before."""

    BINDINGS = [Binding("up", "history(-1)", "Previous", show=False),
                Binding("down", "history(1)", "Next", show=False)]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.history: list[str] = []
        self._pos = 0

    def remember(self, text: str) -> None:
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._pos = len(self.history)

    def action_history(self, delta: int) -> None:
        if not self.history:
            return
        self._pos = max(0, min(len(self.history), self._pos + delta))
        self.value = self.history[self._pos] if self._pos < len(self.history) else ""
        self.cursor_position = len(self.value)


class ToolPanel(Collapsible):
    """One tool call: title line (name, input summary, status); body: the input and the result/error."""

    DEFAULT_CSS = """
    ToolPanel { margin: 0 0 0 2; padding: 0; border: none; background: $boost; }
    ToolPanel .tool-body { padding: 0 1; color: $text-muted; }
    """

    def __init__(self, name: str, tool_input: dict[str, Any], effectful: bool = False):
        self.tool_name = name
        self.tool_input = tool_input
        self.effectful = effectful
        self.body_widget = Static(self._body_text(None, None), classes="tool-body", markup=False)
        super().__init__(self.body_widget, title=self._title_text("running…"), collapsed=True)

    def _title_text(self, status: str) -> str:
        mark = "⚡" if self.effectful else "⚙"
        return f"{mark} {self.tool_name} {_short_json(self.tool_input, 48)} — {status}"

    def _body_text(self, result: Any, error: dict[str, Any] | None) -> str:
        lines = ["input: " + json.dumps(self.tool_input, ensure_ascii=False, default=str)]
        if error:
            lines.append(f"error: {error.get('code')}: {error.get('message')}")
            if error.get("hint"):
                lines.append(f"hint: {error['hint']}")
        elif result is not None:
            text = json.dumps(result, ensure_ascii=False, indent=1, default=str)
            lines.append("result: " + (text if len(text) < 4000 else text[:4000] + "\n… (truncated)"))
        return "\n".join(lines)

    def finish(self, ok: bool, result: Any, error: dict[str, Any] | None) -> None:
        self.title = self._title_text("ok" if ok else f"error ({error.get('code') if error else '?'})")
        self.body_widget.update(self._body_text(result, error))
        self.set_class(not ok, "-error")


class ApprovalModal(ModalScreen[bool]):
    """Approve or refuse one tool call with effects (y / enter approve · n / esc refuse)."""

    BINDINGS = [Binding("y", "decide(True)", "Approve"), Binding("enter", "decide(True)", "Approve", show=False),
                Binding("n", "decide(False)", "Refuse"), Binding("escape", "decide(False)", "Refuse", show=False)]
    DEFAULT_CSS = """
    ApprovalModal { align: center middle; }
    ApprovalModal > Vertical { width: 72; max-width: 95%; height: auto; border: thick $warning;
                               background: $surface; padding: 1 2; }
    ApprovalModal .approval-title { color: $warning; text-style: bold; margin-bottom: 1; }
    ApprovalModal .approval-keys { margin-top: 1; color: $text-muted; }
    """

    def __init__(self, tool: str, action: str, tool_input: dict[str, Any], decision: dict[str, Any]):
        super().__init__()
        self.tool, self.action, self.tool_input, self.decision = tool, action, tool_input, decision

    def compose(self) -> ComposeResult:
        reason = self.decision.get("reason") or "this tool has effects"
        rule = self.decision.get("rule")
        with Vertical():
            yield Static(f"Approve {escape(self.tool)}?", classes="approval-title")
            yield Static(f"action: {escape(self.action)}\ninput: {escape(_short_json(self.tool_input, 400))}\n"
                         f"policy: {escape(str(self.decision.get('decision')))}"
                         f"{escape(f' ({rule})') if rule else ''} — {escape(str(reason))}")
            yield Static("[b]y[/b] approve · [b]n[/b] / esc refuse", classes="approval-keys")

    def action_decide(self, approved: bool) -> None:
        self.dismiss(approved)


class ChatScreen(Screen):
    TITLE = "carl · chat"  # the header names the screen
    BINDINGS = [
        # one Esc, two meanings by state (check_action picks; the footer shows the one that applies)
        Binding("escape", "cancel", "Cancel reply"),
        Binding("escape", "leave_prompt", "Leave input"),
        Binding("slash", "focus_prompt", "Ask"),
        Binding("i", "focus_prompt", "Ask", show=False),
        Binding("ctrl+r", "toggle_sessions", "Sessions"),
        Binding("ctrl+n", "new_session", "New chat"),
    ]
    DEFAULT_CSS = """
    ChatScreen #chat-body { height: 1fr; }
    ChatScreen #sessions { width: 38; display: none; border-right: solid $primary; }
    ChatScreen #sessions.-open { display: block; }
    ChatScreen #sessions-title { padding: 0 1; color: $accent; text-style: bold; }
    ChatScreen #session-list { height: 1fr; border: none; }
    ChatScreen #log { height: 1fr; padding: 0 1; }
    ChatScreen .msg-user { margin: 1 0 0 0; color: $accent; text-style: bold; }
    ChatScreen .msg-note { color: $text-muted; margin: 1 0 0 0; }
    ChatScreen .msg-error { color: $error; margin: 1 0 0 0; }
    ChatScreen Markdown { margin: 0; padding: 0 0 0 2; }
    ChatScreen #chat-status { height: 1; padding: 0 1; background: $boost; color: $text-muted; }
    ChatScreen #prompt { margin: 0; }
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.session: str | None = None
        self.session_cost = 0.0
        self.model = "?"
        self.state = "ready"
        self.busy = False
        self._cancel: threading.Event | None = None
        self._reply: Markdown | None = None
        self._reply_text = ""
        self._dirty = False
        self._panels: dict[str, ToolPanel] = {}
        self._has_key = False

    # ------------------------------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-body"):
            with Vertical(id="sessions"):
                yield Static("Sessions (enter resume · del delete)", id="sessions-title")
                yield OptionList(id="session-list")
            yield VerticalScroll(id="log")
        yield Static("", id="chat-status")
        prompt = PromptInput(placeholder="Ask about your runs…  (enter send · esc leave · ctrl+r sessions)",
                             id="prompt")
        prompt.cursor_blink = False
        prompt.select_on_focus = False  # back in the box (/ or i), the draft is kept, not selected for overwrite
        yield prompt
        yield Footer()

    def on_mount(self) -> None:
        ctx = context_of(self)
        self.store = SessionStore(ctx.home.sessions_db, clock=ctx.clock)
        self._has_key = bool(os.environ.get("ANTHROPIC_API_KEY", "").strip())
        log = self.query_one("#log", VerticalScroll)
        try:
            from engine.chat.config import chat_config
            from engine.config import load_config

            cfg, _ = load_config(ctx.config_path, ctx.screen_args.get("sets"), cwd=ctx.cwd)
            self.model = chat_config(cfg).model
        except CARLError as exc:
            log.mount(Static(f"carl.yaml: {escape(exc.message)}", classes="msg-error"))
        if self._has_key:
            log.mount(Markdown(WELCOME_TEXT, classes="msg-note"))
        else:
            self.state = "no API key"
            log.mount(Markdown(NO_KEY_TEXT, id="no-key"))
        self._refresh_sessions()
        self._update_status()
        self.set_interval(FLUSH_S, self._flush)
        # the prompt is entered with / or i: a screen key (t, o, …) typed on arrival must never land in it

    def _update_status(self) -> None:
        sid = self.session or "new"
        self.query_one("#chat-status", Static).update(
            f"{escape(self.model)} · session {sid} · ${self.session_cost:.4f} · {escape(self.state)}")

    # ------------------------------------------------------------------------------------------ sessions
    def _refresh_sessions(self) -> None:
        ol = self.query_one("#session-list", OptionList)
        ol.clear_options()
        try:
            sessions = self.store.list()
        except CARLError:
            sessions = []
        for s in sessions:
            title = (s.title or "(untitled)")[:22]
            ol.add_option(Option(f"{s.id[:6]} {escape(title)}  ${s.cost_usd:.2f}", id=s.id))
        if not sessions:
            ol.add_option(Option("(no sessions yet)", id="-none-", disabled=True))

    def action_toggle_sessions(self) -> None:
        panel = self.query_one("#sessions")
        panel.toggle_class("-open")
        if panel.has_class("-open"):
            self._refresh_sessions()
            ol = self.query_one("#session-list", OptionList)
            if ol.option_count and ol.highlighted is None:
                ol.highlighted = 0
            ol.focus()
        else:
            self.set_focus(None)

    @on(OptionList.OptionSelected, "#session-list")
    def _resume(self, event: OptionList.OptionSelected) -> None:
        if self.busy or not event.option.id or event.option.id == "-none-":
            return
        self.load_session(event.option.id)
        self.query_one("#sessions").remove_class("-open")
        self.set_focus(None)

    def on_key(self, event: Any) -> None:
        ol = self.query_one("#session-list", OptionList)
        if event.key == "delete" and ol.has_focus and ol.highlighted is not None and not self.busy:
            option = ol.get_option_at_index(ol.highlighted)
            if option.id and option.id != "-none-":
                self.store.delete(option.id)
                if option.id == self.session:
                    self.action_new_session()
                self._refresh_sessions()
                event.stop()

    def load_session(self, sid: str) -> None:
        info = self.store.info(sid)
        calls = {c["tool_use_id"]: c for c in self.store.tool_calls(info.id)}
        log = self.query_one("#log", VerticalScroll)
        log.remove_children()
        self._panels.clear()
        widgets: list[Any] = []
        for msg in self.store.messages(info.id):
            for block in msg["content"] if isinstance(msg["content"], list) else []:
                kind = block.get("type")
                if kind == "text" and msg["role"] == "user":
                    widgets.append(Static(f"› {escape(block['text'])}", classes="msg-user"))
                elif kind == "text" and block.get("text", "").strip():
                    widgets.append(Markdown(block["text"]))
                elif kind == "tool_use":
                    c = calls.get(block.get("id"))
                    panel = ToolPanel(block.get("name", "?"), block.get("input", {}), bool(c and c["effectful"]))
                    widgets.append(panel)
                    if c:
                        panel.finish(c["ok"], c["result"] if c["ok"] else None, None if c["ok"] else c["result"])
        log.mount_all(widgets)
        self.session, self.session_cost = info.id, info.cost_usd
        self.state = f"resumed ({info.n_messages} messages)"
        self._update_status()
        log.scroll_end(animate=False)

    def action_new_session(self) -> None:
        if self.busy:
            return
        self.session, self.session_cost, self.state = None, 0.0, "ready" if self._has_key else "no API key"
        log = self.query_one("#log", VerticalScroll)
        log.remove_children()
        self._panels.clear()
        log.mount(Markdown(WELCOME_TEXT if self._has_key else NO_KEY_TEXT, classes="msg-note"))
        self._update_status()

    # ------------------------------------------------------------------------------------------ asking
    @on(Input.Submitted, "#prompt")
    def _submit(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text or self.busy:
            return
        prompt = self.query_one("#prompt", PromptInput)
        prompt.remember(text)
        prompt.value = ""
        log = self.query_one("#log", VerticalScroll)
        if not self._has_key:
            self._has_key = bool(os.environ.get("ANTHROPIC_API_KEY", "").strip())
        if not self._has_key:
            log.mount(Markdown(NO_KEY_TEXT))
            log.scroll_end(animate=False)
            return
        log.mount(Static(f"› {escape(text)}", classes="msg-user"))
        log.scroll_end(animate=False)
        self.busy = True
        self.refresh_bindings()  # Esc now cancels the reply
        self.state = "thinking…"
        self._update_status()
        self._cancel = threading.Event()
        self._run_agent(text, self.session, self._cancel)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":  # Esc cancels only a reply in flight …
            return self.busy
        if action == "leave_prompt":  # … else it leaves the prompt box
            return not self.busy and self.focused is not None and self.focused.id == "prompt"
        if action == "focus_prompt":
            return self.focused is None or self.focused.id != "prompt"
        return True

    def action_cancel(self) -> None:
        if self.busy and self._cancel is not None:
            self._cancel.set()
            self.state = "cancelling…"
            self._update_status()

    def action_leave_prompt(self) -> None:
        self.set_focus(None)

    def action_focus_prompt(self) -> None:
        self.query_one("#sessions").remove_class("-open")
        self.query_one("#prompt", PromptInput).focus()

    @work(thread=True, exclusive=True, group="chat-agent")
    def _run_agent(self, prompt: str, session: str | None, cancel: threading.Event) -> None:
        ctx = context_of(self)
        ui = self.app.call_from_thread
        try:
            from engine.chat.agent import build_agent

            agent = build_agent(home=ctx.home, cwd=ctx.cwd, config_path=ctx.config_path,
                                sets=ctx.screen_args.get("sets") or None,
                                approver=lambda spec, inp, dec: self._approve(spec, inp, dec, cancel),
                                clock=ctx.clock)
            result = agent.ask(prompt, session, on_event=lambda e: ui(self._on_event, e), cancel=cancel)
            ui(self._on_done, result.session, result.session_cost_usd, result.stop_reason, None)
        except CARLError as exc:
            ui(self._on_done, None, None, "error", exc)
        except Exception as exc:  # a bug: show it, keep the screen alive
            ui(self._on_done, None, None, "error", CARLError(f"internal error: {type(exc).__name__}: {exc}"))

    def _approve(self, spec: Any, tool_input: dict[str, Any], decision: dict[str, Any],
                 cancel: threading.Event) -> bool:
        """Called on the worker thread: show the modal on the UI thread and wait for the answer."""
        answer: dict[str, bool] = {}
        done = threading.Event()

        def show() -> None:
            self.state = f"waiting for approval: {spec.name}"
            self._update_status()

            def decided(ok: bool | None) -> None:
                answer["ok"] = bool(ok)
                done.set()

            estimate = (decision.get("details") or {}).get("estimate")
            modal: ModalScreen[bool] = ApprovalModal(spec.name, spec.ledger_action, tool_input, decision)
            if estimate:  # paid compute: the remote jobs' modal shows backend, flavor, cost and budget
                try:
                    from screens.approval import ApprovalScreen

                    modal = ApprovalScreen(estimate)
                except ImportError:
                    pass
            self.app.push_screen(modal, decided)

        self.app.call_from_thread(show)
        while not done.wait(0.1):
            if cancel.is_set() or not self.is_attached:
                return False
        return answer.get("ok", False)

    # ------------------------------------------------------------------------------------------ events (UI thread)
    def _on_event(self, e: dict[str, Any]) -> None:
        log = self.query_one("#log", VerticalScroll)
        kind = e.get("type")
        if kind == "session":
            self.session = e["session"]
        elif kind == "text":
            if self._reply is None:
                self._reply = Markdown("")
                self._reply_text = ""
                log.mount(self._reply)
            self._reply_text += e["text"]
            self._dirty = True
            if self.state != "replying…":
                self.state = "replying…"
                self._update_status()
        elif kind == "retry":
            if e.get("discard_text") and self._reply is not None:
                self._reply_text = ""
                self._dirty = True
            self.state = f"API busy ({e.get('status') or 'connection'}); retry {e['attempt']} in {e['delay_s']:.1f}s"
            self._update_status()
        elif kind == "tool_use":
            self._flush()
            self._reply = None
            panel = ToolPanel(e["name"], e.get("input") or {}, bool(e.get("effectful")))
            self._panels[e["id"]] = panel
            log.mount(panel)
            self.state = f"running {e['name']}…"
            self._update_status()
        elif kind == "tool_result":
            panel = self._panels.get(e["id"])
            if panel is not None:
                panel.tool_input = e.get("input") or panel.tool_input
                panel.finish(bool(e["ok"]), e.get("result"), e.get("error"))
            self.state = "thinking…"
            self._update_status()
        elif kind == "usage":
            self.session_cost = float(e.get("session_cost_usd") or 0.0)
            self._update_status()
        elif kind == "stopped":
            log.mount(Static(f"(stopped: {escape(str(e.get('reason')))})", classes="msg-note"))
        log.scroll_end(animate=False)

    def _flush(self) -> None:
        if self._dirty and self._reply is not None:
            self._dirty = False
            self._reply.update(self._reply_text)

    def _on_done(self, session: str | None, cost: float | None, stop: str, error: CARLError | None) -> None:
        self._flush()
        self._reply = None
        self.busy = False
        self.refresh_bindings()  # Esc leaves the prompt again
        log = self.query_one("#log", VerticalScroll)
        if error is not None:
            if error.code == "carl.credential":
                self._has_key = False
            log.mount(Static(f"{escape(error.code)}: {escape(error.message)}\n{escape(error.hint or '')}",
                             classes="msg-error"))
            self.state = error.code
        else:
            self.session = session or self.session
            self.session_cost = cost if cost is not None else self.session_cost
            self.state = {"end_turn": "ready", "cancelled": "cancelled", "step_cap": "stopped at the step cap"}.get(
                stop, f"ready ({stop})")
        self._update_status()
        log.scroll_end(animate=False)
        if self.query_one("#sessions").has_class("-open"):
            self._refresh_sessions()

    def on_unmount(self) -> None:
        if self._cancel is not None:
            self._cancel.set()


__all__ = ["ApprovalModal", "ChatScreen", "PromptInput", "ToolPanel"]
