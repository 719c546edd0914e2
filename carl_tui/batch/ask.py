"""`carl --batch ask "PROMPT" [--session ID] [--stream] [--approve] [--api-key KEY]` — one turn of the chat agent.

Prints one JSON object ``{"session", "reply", "tool_calls": [{"name", "input", "ok"}], "usage", "cost_usd", …}``
(usage and cost summed over every API request of this ask). ``--stream`` prints JSON lines instead: ``session``,
``text`` deltas, ``tool_use`` / ``tool_result`` / ``retry`` / ``usage`` events, then ``{"type": "final", …}`` with
the same fields. Tools with effects run only with ``--approve``; a refused one is reported to the model (which
answers anyway) and the verb then exits 5 with ``carl.approval.required`` on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from carl_tui.batch._io import emit, emit_error, progress
from engine.errors import ApprovalRequired, ValidationError


def register(sub: Any) -> None:
    p = sub.add_parser("ask", help="ask the chat agent one question (JSON reply)",
                       description="Ask the chat agent; it answers from engine data through bounded tools.")
    p.add_argument("prompt", help="the question ('-' reads it from stdin)")
    p.add_argument("--session", help="continue this session (id or unambiguous prefix)")
    p.add_argument("--stream", action="store_true", help="JSON lines: text deltas and tool events, then the reply")
    p.add_argument("--approve", action="store_true", help="approve tools with effects (start/stop runs, jobs)")
    p.add_argument("--api-key", dest="api_key", help="Anthropic API key (default: $ANTHROPIC_API_KEY)")
    p.add_argument("--base-url", dest="base_url", help="Messages API base URL (default: $ANTHROPIC_BASE_URL)")
    p.add_argument("--config", help="carl.yaml (default ./carl.yaml, else the tiny demo)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config field (repeatable), e.g. chat.model=claude-haiku-4-5")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from engine.chat.agent import build_agent
    from engine.home import carl_home

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise ValidationError("empty prompt", hint='Example: carl --batch ask "is my last run collapsing?"')
    home = carl_home()
    approve = bool(args.approve)

    def approver(spec: Any, tool_input: dict[str, Any], decision: dict[str, Any]) -> bool:
        progress(f"{'approved' if approve else 'refused (no --approve)'}: {spec.name} {tool_input}")
        return approve

    agent = build_agent(home=home, cwd=Path.cwd(), config_path=Path(args.config) if args.config else None,
                        sets=args.sets, api_key=args.api_key, base_url=args.base_url, approver=approver,
                        surface="chat")

    def on_event(event: dict[str, Any]) -> None:
        if args.stream:
            emit(event)
        elif event["type"] == "tool_use":
            progress(f"tool {event['name']} {event['input']}")
        elif event["type"] == "retry":
            progress(f"API {event['status'] or 'connection'} error; retry {event['attempt']} in {event['delay_s']}s")

    result = agent.ask(prompt, args.session, on_event=on_event)
    out = result.to_dict()
    emit({"type": "final", **out} if args.stream else out)
    refused = [c for c in result.tool_calls if c.error and c.error.get("code") == ApprovalRequired.code]
    if refused:
        exc = ApprovalRequired(f"{len(refused)} tool call(s) with effects were refused: "
                               f"{', '.join(c.name for c in refused)}",
                               context={"session": result.session, "tools": [c.name for c in refused]})
        emit_error(exc)
        return exc.exit_code
    return 0
