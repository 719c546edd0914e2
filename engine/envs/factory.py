"""Environment factories for TRL (``environment_factory=``) and one-off tool calls (``carl --batch env call``)."""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable

from engine.envs.sandbox import SandboxError, SandboxLimits

KINDS = ("sql", "code")


def _classes():
    from engine.envs.code import CodeEnvironment
    from engine.envs.sql import SqlEnvironment

    return {"sql": SqlEnvironment, "code": CodeEnvironment}


def check_limits(kind: str, limits: dict[str, Any] | None) -> None:
    from engine.envs.sql import SqlLimits

    (SqlLimits if kind == "sql" else SandboxLimits).from_dict(limits)


def make_factory(kind: str, limits: dict[str, Any] | None = None) -> Callable[[], Any]:
    """A zero-argument callable returning a fresh environment of ``kind`` (what TRL's environment_factory wants)."""
    if kind not in KINDS:
        raise SandboxError(f"unknown environment kind: {kind!r}", code="carl.sandbox.kind",
                           hint=f"Use one of: {', '.join(KINDS)}.")
    check_limits(kind, limits)
    cls = _classes()[kind]
    lim = dict(limits or {})

    def factory():
        return cls(lim)

    factory.__name__ = f"{kind}_environment"
    return factory


def tool_names(kind: str) -> list[str]:
    """The tools an environment exposes: its public methods other than reset/get_reward (TRL's rule)."""
    cls = _classes()[kind]
    return sorted(n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
                  if not n.startswith("_") and n not in ("reset", "get_reward"))


def tool_schemas(kind: str) -> list[dict[str, Any]]:
    """The JSON schemas the model sees (transformers' get_json_schema over each tool's docstring)."""
    from transformers.utils import get_json_schema

    env = make_factory(kind)()
    return [get_json_schema(getattr(env, n)) for n in tool_names(kind)]


def call_tool(kind: str, tool: str, args: dict[str, Any] | None = None, row: dict[str, Any] | None = None,
              limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one tool call in a fresh environment built from ``row``; the result as a dict."""
    names = tool_names(kind) if kind in KINDS else []
    env = make_factory(kind, limits)()
    if tool not in names:
        raise SandboxError(f"{kind} has no tool {tool!r}", code="carl.sandbox.tool",
                           hint=f"Tools: {', '.join(names)}.")
    if args is not None and not isinstance(args, dict):
        raise SandboxError("--args must be a JSON object", code="carl.sandbox.args")
    if row is not None and not isinstance(row, dict):
        raise SandboxError("--row must be a JSON object", code="carl.sandbox.args")
    env.reset(**(row or {}))
    try:
        method = getattr(env, tool)
        try:
            inspect.signature(method).bind(**(args or {}))
        except TypeError as exc:
            raise SandboxError(f"{tool}: {exc}", code="carl.sandbox.args",
                               hint=f"Arguments: {', '.join(inspect.signature(method).parameters)}.") from None
        text = method(**(args or {}))
        try:
            result: Any = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            result = text
        return {"kind": kind, "tool": tool, "args": args or {}, "result": result, "text": text}
    finally:
        close = getattr(env, "_close", None)
        if close:
            close()
