"""The agent loop: Anthropic Messages API with streaming and tool use, over the bounded tool registry.

One :meth:`Agent.ask` = the user's prompt, then up to ``step_cap`` API requests: each streams its text
(``on_event({"type": "text", …})``); when the reply stops for ``tool_use`` every tool runs through
:meth:`Registry.call` (validation, ledger policy, approval, one ledger block) and its result goes back as a
``tool_result`` (errors as ``is_error``); the loop ends at a reply without tool calls, the step cap, a cancel, or
the session's spend cap (``carl.budget``). Overload (529), rate limits (429), 5xx and connection failures are
retried with exponential backoff (``retry_base_s · 2^attempt``, at most 30 s; ``max_retries`` times); then
``carl.network``. Usage and cost are stored per request in the session, so a crash loses nothing already paid.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.chat.config import ChatConfig
from engine.chat.pricing import Usage, cost_usd, price_for
from engine.chat.sessions import SessionStore
from engine.chat.tools import Registry, ToolContext, ToolOutcome
from engine.errors import BudgetError, CARLError, ConfigError, CredentialError, NetworkError, PermissionDenied

SYSTEM_PROMPT = """You are carl's assistant inside a terminal workbench for Coherence-Aware Reinforcement \
Learning (CARL): GRPO training with a coherence reward. Phi is the per-token coherence field (1 - entropy / \
log V); SIGMA = 3/16 is the crystallization threshold; a run's phase is guessing, crystallizing or knowing.
Answer from real engine data: call the tools to look at runs, logits, the config and the ledger rather than \
guessing, and say plainly when a tool is unavailable or failed. Tools with effects (starting or stopping \
runs, submitting remote jobs) need the user's approval; if one is refused, say so and do not retry it. Be \
brief: the reply is shown in a terminal. Use Markdown sparingly (short lists, `code`)."""

RETRYABLE_TYPES = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
MAX_BACKOFF_S = 30.0

Event = dict[str, Any]


class ChatAPIError(CARLError):
    code = "carl.chat.api"
    exit_code = 1
    default_hint = "Check chat.model and the request; the API's message says what it refused."


@dataclass
class AskResult:
    session: str
    reply: str
    tool_calls: list[ToolOutcome] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    session_cost_usd: float = 0.0
    stop_reason: str = "end_turn"  # end_turn | step_cap | cancelled | max_tokens | …
    requests: int = 0
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The contract's ``ask`` object (+ stop_reason, session_cost_usd, requests, retries)."""
        return {"session": self.session, "reply": self.reply,
                "tool_calls": [{"name": c.name, "input": c.input, "ok": c.ok,
                                **({"error": c.error["code"]} if c.error else {})} for c in self.tool_calls],
                "usage": self.usage.to_dict(), "cost_usd": round(self.cost_usd, 6),
                "session_cost_usd": round(self.session_cost_usd, 6), "stop_reason": self.stop_reason,
                "requests": self.requests, "retries": self.retries}


def resolve_api_key(explicit: str | None = None) -> str:
    key = explicit or os.environ.get("ANTHROPIC_API_KEY") or ""
    if not key.strip():
        raise CredentialError("no Anthropic API key", hint="export ANTHROPIC_API_KEY=sk-ant-… (or pass --api-key "
                              "KEY); carl never stores it. Every other screen and verb works without it.",
                              context={"env": "ANTHROPIC_API_KEY"})
    return key.strip()


def make_client(api_key: str, base_url: str | None = None, timeout_s: float = 120.0) -> Any:
    """The official SDK client (its own retries off: carl retries, so it can report and test them)."""
    import anthropic

    return anthropic.Anthropic(api_key=api_key, base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
                               max_retries=0, timeout=timeout_s)


class _Cancelled(Exception):
    def __init__(self, partial: str):
        self.partial = partial


class Agent:
    def __init__(self, *, config: ChatConfig, registry: Registry, tools_ctx: ToolContext, store: SessionStore,
                 client: Any = None, api_key: str | None = None, base_url: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, system: str = SYSTEM_PROMPT):
        self.config = config
        self.registry = registry
        self.ctx = tools_ctx
        self.store = store
        self.price = price_for(config.model, config.price_table())  # unknown model: carl.config, before any spend
        self._client = client
        self._api_key = api_key
        self._base_url = base_url
        self._sleep = sleep
        self.system = system

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(resolve_api_key(self._api_key), self._base_url, self.config.timeout_s)
        return self._client

    # ------------------------------------------------------------------------------------------ the loop
    def ask(self, prompt: str, session: str | None = None, *, on_event: Callable[[Event], None] | None = None,
            cancel: threading.Event | None = None) -> AskResult:
        emit = on_event or (lambda e: None)
        prompt = prompt.strip()
        if not prompt:
            raise CARLError("empty prompt", code="carl.validation", hint="Ask a question, e.g. \"is my last run "
                            "collapsing?\"")
        client = self.client  # carl.credential before anything is written
        if session:
            sid = self.store.resolve(session)
            history = self.store.messages(sid)
        else:
            sid = self.store.create(model=self.config.model, title=prompt.splitlines()[0])
            history = []
        self.ctx.session = sid
        result = AskResult(session=sid, reply="", session_cost_usd=self.store.cost(sid))
        emit({"type": "session", "session": sid})
        self._check_budget(result)

        user_msg = {"role": "user", "content": [{"type": "text", "text": prompt}]}
        self.store.add_message(sid, "user", user_msg["content"])
        self.store.touch(sid, model=self.config.model)
        messages = _merge_user(history, user_msg)
        tools = self.registry.anthropic_tools()
        texts: list[str] = []

        for step in range(self.config.step_cap):
            if step:
                self._check_budget(result)
            try:
                msg = self._request(client, messages, tools, emit, cancel, result)
            except _Cancelled as c:
                if c.partial:
                    texts.append(c.partial)
                    self.store.add_message(sid, "assistant", [{"type": "text", "text": c.partial}])
                result.stop_reason = "cancelled"
                break
            usage = Usage.from_api(msg.usage)
            cost = cost_usd(usage, self.price)
            self.store.add_usage(sid, self.config.model, usage, cost)
            result.usage = result.usage + usage
            result.cost_usd += cost
            result.session_cost_usd += cost
            result.requests += 1
            emit({"type": "usage", "usage": usage.to_dict(), "cost_usd": round(cost, 6),
                  "session_cost_usd": round(result.session_cost_usd, 6)})

            content = [_block_dict(b) for b in msg.content]
            content = [b for b in content if b is not None]
            messages.append({"role": "assistant", "content": content})
            self.store.add_message(sid, "assistant", content)
            step_text = "".join(b["text"] for b in content if b["type"] == "text")
            if step_text:
                texts.append(step_text)
            uses = [b for b in content if b["type"] == "tool_use"]
            result.stop_reason = msg.stop_reason or "end_turn"
            if not uses:
                break
            results = []
            over_cap = result.session_cost_usd >= self.config.session_cap_usd
            for use in uses:
                if over_cap or (cancel is not None and cancel.is_set()):
                    why = "session spend cap reached" if over_cap else "cancelled by the user"
                    results.append({"type": "tool_result", "tool_use_id": use["id"], "is_error": True,
                                    "content": f"not run: {why}"})
                    continue
                emit({"type": "tool_use", "id": use["id"], "name": use["name"], "input": use["input"],
                      "effectful": bool((spec := self.registry.get(use["name"])) and spec.effectful)})
                outcome = self.registry.call(use["name"], use["input"], self.ctx)
                result.tool_calls.append(outcome)
                self.store.add_tool_call(sid, tool_use_id=use["id"], name=outcome.name, input=outcome.input,
                                         ok=outcome.ok, result=outcome.result if outcome.ok else outcome.error,
                                         effectful=outcome.effectful, approved=outcome.approved)
                emit({"type": "tool_result", "id": use["id"], "name": outcome.name, "ok": outcome.ok,
                      "input": outcome.input, "summary": outcome.summary(), "error": outcome.error,
                      "result": outcome.result if outcome.ok else None})
                block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use["id"],
                                         "content": outcome.content_text()}
                if not outcome.ok:
                    block["is_error"] = True
                results.append(block)
            messages.append({"role": "user", "content": results})
            self.store.add_message(sid, "user", results)
            if over_cap:
                self._check_budget(result)
            if cancel is not None and cancel.is_set():
                result.stop_reason = "cancelled"
                break
        else:
            result.stop_reason = "step_cap"
            emit({"type": "stopped", "reason": "step_cap", "step_cap": self.config.step_cap})
        result.reply = "\n\n".join(t.strip() for t in texts if t.strip())
        if result.stop_reason == "step_cap" and not result.reply:
            result.reply = f"(stopped after {self.config.step_cap} requests, the step cap, without a final answer)"
        self.store.touch(sid)
        return result

    def _check_budget(self, result: AskResult) -> None:
        cap = self.config.session_cap_usd
        if result.session_cost_usd >= cap:
            raise BudgetError(f"chat session {result.session} has spent ${result.session_cost_usd:.4f} of its "
                              f"${cap:.2f} cap", hint="Start a new session, or raise chat.session_cap_usd in "
                              "carl.yaml.", context={"session": result.session, "cap_usd": cap,
                                                     "spent_usd": round(result.session_cost_usd, 6)})

    # ------------------------------------------------------------------------------------------ one request
    def _request(self, client: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 emit: Callable[[Event], None], cancel: threading.Event | None, result: AskResult) -> Any:
        import anthropic

        attempt = 0
        while True:
            partial: list[str] = []
            try:
                kwargs: dict[str, Any] = {"model": self.config.model, "max_tokens": self.config.max_tokens,
                                          "system": self.system, "messages": messages}
                if tools:
                    kwargs["tools"] = tools
                with client.messages.stream(**kwargs) as stream:
                    for event in stream:
                        if cancel is not None and cancel.is_set():
                            raise _Cancelled("".join(partial))
                        if event.type == "text" and event.text:
                            partial.append(event.text)
                            emit({"type": "text", "text": event.text})
                    return stream.get_final_message()
            except _Cancelled:
                raise
            except anthropic.AuthenticationError as exc:
                raise CredentialError("the Anthropic API rejected the key (401)",
                                      hint="Check ANTHROPIC_API_KEY (or --api-key).",
                                      context={"status": 401}) from exc
            except anthropic.PermissionDeniedError as exc:
                raise PermissionDenied(f"the Anthropic API refused the request (403): {_api_message(exc)}",
                                       context={"status": 403}) from exc
            except anthropic.NotFoundError as exc:
                raise ConfigError(f"the Anthropic API does not know model {self.config.model!r} (404): "
                                  f"{_api_message(exc)}", hint="Set chat.model in carl.yaml to a current model id.",
                                  context={"field": "chat.model", "status": 404}) from exc
            except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
                status = getattr(exc, "status_code", None)
                if not _retryable(exc):
                    raise ChatAPIError(f"the Anthropic API refused the request ({status}): {_api_message(exc)}",
                                       context={"status": status}) from exc
                if attempt >= self.config.max_retries:
                    raise NetworkError(f"the Anthropic API failed after {attempt + 1} attempts: "
                                       f"{_api_message(exc)}", hint="The API is overloaded or unreachable; retry "
                                       "later (or check ANTHROPIC_BASE_URL).",
                                       context={"status": status, "attempts": attempt + 1}) from exc
                delay = min(MAX_BACKOFF_S, self.config.retry_base_s * (2 ** attempt))
                attempt += 1
                result.retries += 1
                emit({"type": "retry", "attempt": attempt, "status": status, "delay_s": delay,
                      "discard_text": bool(partial), "reason": _api_message(exc)})
                self._sleep(delay)


def _retryable(exc: Exception) -> bool:
    import anthropic

    if isinstance(exc, anthropic.APIConnectionError):
        return True
    status = getattr(exc, "status_code", None) or 0
    if status == 429 or status >= 500:
        return True
    body = getattr(exc, "body", None)
    err_type = body.get("error", {}).get("type") if isinstance(body, dict) and isinstance(body.get("error"), dict) \
        else None
    return err_type in RETRYABLE_TYPES


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("type"))
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _block_dict(block: Any) -> dict[str, Any] | None:
    """An SDK content block as the plain dict we send back and store (text and tool_use only)."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return {"type": "text", "text": block.text}
    if kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input or {})}
    return None


def _merge_user(history: list[dict[str, Any]], user_msg: dict[str, Any]) -> list[dict[str, Any]]:
    """History + the new user turn; a history ending in a user turn (tool results of an interrupted ask) gets the
    prompt appended to it, so roles keep alternating."""
    messages = [dict(m) for m in history]
    if messages and messages[-1]["role"] == "user":
        last = messages[-1]
        content = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
        messages[-1] = {"role": "user", "content": [*content, *user_msg["content"]]}
    else:
        messages.append(user_msg)
    return messages


def build_agent(*, home: Any, cwd: Any, config_path: Any = None, sets: list[str] | None = None,
                api_key: str | None = None, base_url: str | None = None,
                approver: Callable[..., bool] | None = None, surface: str = "chat",
                clock: Callable[[], float] = time.time) -> Agent:
    """The agent for a project: chat config from carl.yaml, the tool registry, the session store in CARL_HOME."""
    from engine.chat.config import chat_config
    from engine.chat.tools import build_registry
    from engine.config import load_config

    cfg, _ = load_config(config_path, sets, cwd=cwd)
    ccfg = chat_config(cfg)
    ctx = ToolContext(home=home, cwd=cwd, config_path=config_path, sets=list(sets or []), approver=approver,
                      surface=surface)
    return Agent(config=ccfg, registry=build_registry(), tools_ctx=ctx, store=SessionStore(home.sessions_db, clock),
                 api_key=api_key, base_url=base_url)
