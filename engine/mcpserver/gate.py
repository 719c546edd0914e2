"""Approval for MCP tool calls: the ``--allow`` list, the approver the tool registry asks, and the refusal text.

An MCP server has nobody to ask mid-call (the chat screen has its approval dialog, ``ask`` has ``--approve``), so
the approval for effectful tools is given up front, by whoever configures the server, as ``--allow ACTION …``.
An entry names a ledger action (``run.stop``, ``run.start``, ``remote.submit``) or a tool (``stop_run``); it
approves every call of the tools it names. Policy *denials* (``deny_kinds``, ``blocked_tools``, budget caps,
``allowed_backends`` …) are checked by the registry before the approver and win over ``--allow``.

Nothing here imports the MCP SDK.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from engine.chat.tools import Registry, ToolSpec
from engine.errors import ApprovalRequired, ValidationError


def parse_allow(values: Iterable[str] | None, registry: Registry) -> frozenset[str]:
    """Normalise ``--allow`` values (repeatable, space- or comma-separated) to a set of ledger actions.

    Tool names are mapped to their ledger action; an unknown entry is a ``carl.validation`` error listing what
    may be allowed."""
    actions = {spec.ledger_action: spec for spec in registry.specs}
    tools = {spec.name: spec for spec in registry.specs}
    out: set[str] = set()
    for raw in values or ():
        for item in str(raw).replace(",", " ").split():
            if item in actions:
                out.add(item)
            elif item in tools:
                out.add(tools[item].ledger_action)
            else:
                effectful = sorted(s.ledger_action for s in registry.specs if s.effectful)
                raise ValidationError(f"--allow {item}: not a carl tool or ledger action",
                                      hint=f"Allow one of the actions with effects: {', '.join(effectful)} "
                                           "(or a tool name, e.g. stop_run).",
                                      context={"allow": item, "actions": sorted(actions), "tools": sorted(tools)})
    return frozenset(out)


def make_approver(allow: frozenset[str]) -> Callable[[ToolSpec, dict[str, Any], dict[str, Any]], bool]:
    """The registry's approver: yes exactly for the tools whose ledger action is in ``allow``."""

    def approver(spec: ToolSpec, tool_input: dict[str, Any], decision: dict[str, Any]) -> bool:
        return spec.ledger_action in allow

    return approver


def refusal(spec: ToolSpec | None, error: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the registry's ``carl.approval.required`` error for an MCP client: name the approval needed."""
    if spec is None or error.get("code") != ApprovalRequired.code:
        return error
    action = spec.ledger_action
    return {**error,
            "message": f"{spec.name} has effects ({action}) and needs an approval this MCP server was not given",
            "hint": f"Ask the user to approve {action}: restart the server with `carl mcp --allow {action}` "
                    "(e.g. `claude mcp add carl -- carl mcp --allow " + action + "`), or run it from the carl "
                    "workbench, which asks interactively.",
            "approval_needed": action}
