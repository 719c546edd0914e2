"""`carl --batch env call KIND TOOL --args JSON [--row JSON]` and `env tools KIND`: one tool call in a fresh
environment (for debugging environments and datasets).

`env call` prints `{"kind", "tool", "args", "result", "text"}`: `result` is the tool's output parsed as JSON where
it is JSON, `text` exactly what the model would see. A refused or limited call is a `carl.sandbox.*` error (exit 1).
`env tools KIND` prints `{"kind", "tools": [names], "schemas": [the JSON schemas the model sees]}`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("sql", "code")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("env", help="call a tool of the sql / code environment",
                              description="Run agent-environment tools outside training.")
    sub = p.add_subparsers(dest="env_cmd", metavar="CMD")
    call = sub.add_parser("call", help="run one tool call in a fresh environment and print its result")
    call.add_argument("kind", choices=KINDS, help="environment kind")
    call.add_argument("tool", help="tool name (see `env tools KIND`)")
    call.add_argument("--args", default="{}", metavar="JSON", help="the tool's arguments, a JSON object")
    call.add_argument("--row", default=None, metavar="JSON",
                      help="the dataset row the environment is built from (JSON object, or @FILE)")
    call.add_argument("--limits", default=None, metavar="JSON", help="limits, as under environment.limits")
    call.set_defaults(func=run_call)
    tools = sub.add_parser("tools", help="list an environment's tools and their schemas")
    tools.add_argument("kind", choices=KINDS)
    tools.set_defaults(func=run_tools)


def _json_arg(name: str, text: str | None) -> Any:
    from engine.errors import ValidationError

    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValidationError(f"--{name}: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--{name} is not valid JSON: {exc.msg} at position {exc.pos}",
                              hint=f"Pass --{name} as a JSON object, e.g. '{{\"query\": \"SELECT 1\"}}'.") from None
    if not isinstance(value, dict):
        raise ValidationError(f"--{name} must be a JSON object")
    return value


def run_call(args: argparse.Namespace) -> int:
    from carl_tui.batch._io import emit
    from engine.envs.factory import call_tool

    out = call_tool(args.kind, args.tool, _json_arg("args", args.args) or {}, _json_arg("row", args.row),
                    _json_arg("limits", args.limits))
    emit(out)
    return 0


def run_tools(args: argparse.Namespace) -> int:
    from carl_tui.batch._io import emit
    from engine.envs.factory import tool_names, tool_schemas

    emit({"kind": args.kind, "tools": tool_names(args.kind), "schemas": tool_schemas(args.kind)})
    return 0
