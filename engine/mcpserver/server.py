"""carl as an MCP server, on the SDK's low-level :class:`mcp.server.lowlevel.Server`.

Why the low-level server and not ``MCPServer`` (the high-level one, formerly FastMCP): ``MCPServer`` derives a
tool's input schema from a Python function signature, so carl's tools would need wrapper functions whose
signatures re-declare every field — a second copy of the chat tools that could drift. The low-level server
takes the schema as data, so the list below is the chat registry's ``ToolSpec.input_schema()`` verbatim and
each call goes through ``Registry.call`` (validation, ledger policy, approval, handler, one ledger block) —
exactly the path the chat agent takes. Resources are four JSON documents, which the low-level handlers serve
just as directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from engine.chat.tools import Registry, ToolContext, ToolOutcome, build_registry
from engine.errors import CARLError, RunNotFound, ValidationError
from engine.home import CarlHome
from engine.mcpserver import resources as res
from engine.mcpserver.gate import make_approver, parse_allow, refusal

SERVER_NAME = "carl"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
APPROVAL_KEY = "carl_approval"
RESOURCE_NOT_FOUND = -32602  # INVALID_PARAMS, what the SDK's own MCPServer answers for an unknown resource

INSTRUCTIONS = """carl is a workbench for Coherence-Aware Reinforcement Learning (CARL): GRPO training runs \
whose reward includes the coherence field Phi. Read state through the resources (carl://runs, \
carl://runs/<run_id>, carl://config, carl://ledger/tail) or the read-only tools (list_runs, show_run, \
observe_run, diff_runs, probe_logits, show_config, validate_config, ledger_*, list_jobs, job_status, job_logs). Tools with effects \
(start_training, stop_run, submit_remote_job) need an approval given when the server was started \
(`carl mcp --allow ACTION`); without it they return an error naming the approval needed. Every tool call is \
recorded in carl's signed ledger."""


@dataclass
class ServerOptions:
    home: CarlHome = field(default_factory=CarlHome.from_env)
    cwd: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None
    sets: list[str] = field(default_factory=list)
    allow: Iterable[str] = ()
    ask: bool = False  # ask the user through MCP elicitation for effects --allow does not cover
    version: str = ""
    session: str | None = None  # goes into each ledger block's payload (default: mcp-<pid>-<start time>)


class CarlMCP:
    """The registry's tools + carl's resources behind one low-level MCP server."""

    def __init__(self, options: ServerOptions, registry: Registry | None = None):
        self.options = options
        self.registry = registry or build_registry()
        self.allow = parse_allow(options.allow, self.registry)
        self.ask = options.ask
        session = options.session or f"mcp-{os.getpid()}-{time.strftime('%Y%m%dT%H%M%S')}"
        self.ctx = ToolContext(home=options.home, cwd=options.cwd, config_path=options.config_path,
                               sets=list(options.sets), approver=make_approver(self.allow), surface="mcp",
                               session=session)
        instructions = INSTRUCTIONS
        if self.registry.unavailable:
            instructions += "\nUnavailable here: " + "; ".join(f"{k} ({v})" for k, v in
                                                              self.registry.unavailable.items())
        if self.allow:
            instructions += "\nApproved at start: " + ", ".join(sorted(self.allow)) + "."
        if self.ask:
            instructions += ("\nOther effects are put to the user as an approval form (elicitation) when the client "
                             "supports it.")
        self.server: Server[Any] = Server(
            SERVER_NAME, version=options.version, title="carl", instructions=instructions,
            description="Coherence-Aware RL workbench: runs, Phi probe, observe, ledger",
            get_tool_input_schema=self._schema_of,
            on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            on_list_resources=self._list_resources, on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource)

    # ---------------------------------------------------------------------------------------- tools
    def tools(self) -> list[types.Tool]:
        out = []
        for spec in self.registry.specs:
            annotations = types.ToolAnnotations(
                title=spec.name.replace("_", " "), read_only_hint=not spec.effectful,
                destructive_hint=spec.effectful and spec.ledger_action.endswith(".stop"),
                open_world_hint=spec.ledger_action == "remote.submit")
            out.append(types.Tool(name=spec.name, description=spec.description, input_schema=spec.input_schema(),
                                  annotations=annotations,
                                  _meta={"carl/ledger_action": spec.ledger_action, "carl/effectful": spec.effectful}))
        return out

    def _schema_of(self, name: str) -> dict[str, Any] | None:
        spec = self.registry.get(name)
        return spec.input_schema() if spec else None

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools())

    def call(self, name: str, arguments: dict[str, Any] | None, ctx: ToolContext | None = None) -> ToolOutcome:
        """One tool call through the chat registry (validate, policy, approval, handler, ledger block)."""
        return self.registry.call(name, arguments or {}, ctx or self.ctx)

    # ---------------------------------------------------------------------------------------- --ask
    def _needs_asking(self, name: str, arguments: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
        """(spec, input, decision) when this call would need an approval that ``--allow`` does not give; None when
        it needs none, is denied, or its input is invalid (the registry then answers as usual)."""
        from engine.chat.tools import policy_decision

        spec = self.registry.get(name)
        if spec is None:
            return None
        try:
            tool_input = spec.input_model.model_validate(arguments).model_dump(mode="json", exclude_none=True)
            decision = policy_decision(spec, tool_input, self.ctx)
        except Exception:  # noqa: BLE001 - invalid input / policy error: Registry.call reports it
            return None
        if decision.get("decision") == "deny" or spec.ledger_action in self.allow:
            return None
        if spec.effectful or decision.get("decision") == "needs_approval":
            return spec, tool_input, decision
        return None

    @staticmethod
    def _form(spec: Any, tool_input: dict[str, Any], decision: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        from engine.errors import redact

        shown = json.dumps(redact(tool_input), ensure_ascii=False, sort_keys=True)
        details = decision.get("details") or {}
        cost = f" Estimated cost: ${details['estimated_usd']:.2f}." if isinstance(
            details.get("estimated_usd"), (int, float)) else ""
        message = (f"carl: allow {spec.name} ({spec.ledger_action}) with {shown}? {spec.description}{cost} "
                   "The answer is recorded in carl's ledger.")
        schema = {"type": "object", "required": ["approve"], "properties": {
            "approve": {"type": "boolean", "title": f"Approve {spec.ledger_action}",
                        "description": f"Let the agent run {spec.name} once"}}}
        return message, schema

    def _record_answer(self, spec: Any, tool_input: dict[str, Any], answer: Any, error: str | None = None) -> bool:
        from engine.chat.tools import ledger_record
        from engine.errors import redact

        approved = error is None and answer is not None and getattr(answer, "action", None) == "accept" and \
            (getattr(answer, "content", None) or {}).get("approve") is True
        response = error or getattr(answer, "action", None) or "none"
        ledger_record("mcp.approval", {"tool": spec.name, "action": spec.ledger_action, "input": redact(tool_input),
                                       "approved": approved, "via": "elicitation", "response": response,
                                       "session": self.ctx.session}, self.ctx)
        return approved

    async def _ask(self, rctx: Any, params: types.CallToolRequestParams
                   ) -> ToolContext | types.InputRequiredResult:
        """With ``--ask``: the context to call with (its approver carries the user's answer), or, on the
        2026-07-28 protocol, the ``input_required`` result that makes the client show the form and retry."""
        session = getattr(rctx, "session", None)
        try:
            can_ask = bool(session and session.check_client_capability(
                types.ClientCapabilities(elicitation=types.ElicitationCapability())))
        except Exception:  # noqa: BLE001 - a client that cannot say: do not ask
            can_ask = False
        if not can_ask:
            return self.ctx
        pending = await anyio.to_thread.run_sync(self._needs_asking, params.name, params.arguments or {})
        if pending is None:
            return self.ctx
        spec, tool_input, decision = pending
        message, schema = self._form(spec, tool_input, decision)
        if getattr(rctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS:
            answer = (params.input_responses or {}).get(APPROVAL_KEY)
            if answer is None:  # first round: ask; the client retries with the answer
                form = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message,
                                                                               requested_schema=schema))
                return types.InputRequiredResult(input_requests={APPROVAL_KEY: form}, request_state=spec.name)
            approved = self._record_answer(spec, tool_input, answer)
        else:
            try:
                answer = await session.elicit_form(message, schema, related_request_id=rctx.request_id)
                approved = self._record_answer(spec, tool_input, answer)
            except Exception as exc:  # noqa: BLE001 - no back channel, client error: not approved
                approved = self._record_answer(spec, tool_input, None, error=f"error: {type(exc).__name__}")
        return dataclasses.replace(self.ctx, approver=lambda *_: approved)

    @staticmethod
    def result_of(outcome: ToolOutcome, registry: Registry) -> types.CallToolResult:
        if not outcome.ok and outcome.error:
            outcome.error = refusal(registry.get(outcome.name), outcome.error)
        text = outcome.content_text()
        structured = outcome.result if outcome.ok and isinstance(outcome.result, dict) else None
        if not outcome.ok:
            structured = {"error": outcome.error}
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    structured_content=structured, is_error=not outcome.ok)

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams
                         ) -> types.CallToolResult | types.InputRequiredResult:
        call_ctx = self.ctx
        if self.ask:
            asked = await self._ask(ctx, params)
            if isinstance(asked, types.InputRequiredResult):
                return asked
            call_ctx = asked
        # handlers block (file I/O, process signals, a probe over a big logits file): keep the event loop free
        outcome = await anyio.to_thread.run_sync(self.call, params.name, params.arguments, call_ctx)
        return self.result_of(outcome, self.registry)

    # ---------------------------------------------------------------------------------------- resources
    async def _list_resources(self, ctx: Any, params: Any) -> types.ListResourcesResult:
        infos = await anyio.to_thread.run_sync(res.list_resources, self.ctx)
        return types.ListResourcesResult(resources=[
            types.Resource(uri=i.uri, name=i.name, title=i.title, description=i.description, mime_type=i.mime_type)
            for i in infos])

    async def _list_templates(self, ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        t = res.RUN_TEMPLATE
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template=t.uri, name=t.name, title=t.title, description=t.description,
                                   mime_type=t.mime_type)])

    async def _read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            text = await anyio.to_thread.run_sync(res.read, uri, self.ctx)
        except (RunNotFound, res.ResourceNotFound, ValidationError) as exc:
            raise MCPError(code=RESOURCE_NOT_FOUND, message=exc.message,
                           data={"uri": uri, "code": exc.code, "hint": exc.hint}) from None
        except CARLError as exc:
            raise MCPError(code=types.jsonrpc.INTERNAL_ERROR, message=exc.message,
                           data={"uri": uri, "code": exc.code, "hint": exc.hint}) from None
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=text,
                                                                             mime_type=res.MIME)])

    # ---------------------------------------------------------------------------------------- transports
    def record_start(self, transport: str) -> str:
        """One ``mcp.serve`` ledger block when the server starts with approvals (who allowed what, when)."""
        from engine.chat.tools import ledger_record

        if not self.allow:
            return "not needed"
        return ledger_record("mcp.serve", {"transport": transport, "allow": sorted(self.allow),
                                           "session": self.ctx.session, "pid": os.getpid()}, self.ctx)

    async def serve_stdio(self) -> None:
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())

    def http_app(self, host: str):
        return self.server.streamable_http_app(host=host)

    async def serve_http(self, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
        """Streamable HTTP at ``http://HOST:PORT/mcp`` (``port`` 0: a free one; ``on_ready(url)`` once bound)."""
        import uvicorn

        sock = bind(host, port)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(self.http_app(host), log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/mcp"

        async def announce() -> None:
            while not server.started:
                await anyio.sleep(0.02)
            if on_ready:
                on_ready(url)

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            try:
                await server.serve(sockets=[sock])
            finally:
                tg.cancel_scope.cancel()
                sock.close()


def parse_http(spec: str) -> tuple[str, int]:
    """``[HOST:]PORT`` → (host, port); the host defaults to 127.0.0.1 (``[::1]:PORT`` for IPv6)."""
    text = spec.strip()
    host = "127.0.0.1"
    port_s = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest.lstrip(":")
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
    try:
        port = int(port_s)
    except ValueError:
        raise ValidationError(f"--http {spec}: the port must be a number", hint="Use --http 8765 or "
                              "--http 127.0.0.1:8765 (0 picks a free port).", context={"http": spec}) from None
    if not 0 <= port <= 65535 or not host:
        raise ValidationError(f"--http {spec}: not HOST:PORT", hint="Use --http 8765 or --http 127.0.0.1:8765.",
                              context={"http": spec})
    return host, port


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValidationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              hint="Pick another port (or 0 for a free one).",
                              context={"host": host, "port": port}) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
