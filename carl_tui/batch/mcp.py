"""`carl --batch mcp [--http [HOST:]PORT] [--allow ACTION …] [--ask] [--config FILE] [--set K=V …]` — carl as an MCP server.

Default transport: stdio (stdout carries the MCP JSON-RPC stream, one JSON message per line; human notes go to
stderr). ``--http [HOST:]PORT``: the streamable HTTP transport at ``http://HOST:PORT/mcp``, bound to 127.0.0.1
unless a host is given (port 0 picks a free one); stdout then carries one JSON object
``{"transport": "http", "url", "allow", "session"}`` once the server listens. The tools are the chat agent's
registry; tools with effects run only for the ledger actions named by ``--allow`` (see docs/mcp.md).
Ends with exit 0 when the client closes stdio, 130 on SIGINT/SIGTERM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carl_tui.batch._io import emit, progress


def register(sub: Any) -> None:
    p = sub.add_parser("mcp", help="serve carl's tools and resources to MCP clients (stdio or HTTP)",
                       description="An MCP server: the chat agent's tools (same schemas, policy and ledger) and "
                                   "carl:// resources (runs, config, ledger tail). stdio by default.")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (host default 127.0.0.1)")
    p.add_argument("--allow", action="append", nargs="+", default=[], metavar="ACTION",
                   help="approve tools with effects for this server: ledger actions (run.start, run.stop, "
                        "remote.submit) or tool names; policy denials and budget caps still apply")
    p.add_argument("--ask", action="store_true",
                   help="for effects --allow does not cover, ask the user through the client's approval form "
                        "(MCP elicitation), when the client supports it; each answer is a ledger block")
    p.add_argument("--config", help="carl.yaml (default ./carl.yaml, else the tiny demo)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config field (repeatable)")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    import anyio

    from carl_tui import __version__
    from engine.home import carl_home
    from engine.mcpserver.server import LOOPBACK, CarlMCP, ServerOptions, parse_http

    allow = [a for group in args.allow for a in group]
    http = parse_http(args.http) if args.http else None
    options = ServerOptions(home=carl_home(), cwd=Path.cwd(), config_path=Path(args.config) if args.config else None,
                            sets=list(args.sets), allow=allow, ask=bool(args.ask),
                            version=__version__)
    carl = CarlMCP(options)
    for name, why in carl.registry.unavailable.items():
        progress(f"carl mcp: tool {name} unavailable: {why}")
    started = carl.record_start("http" if http else "stdio")
    if carl.allow:
        progress(f"carl mcp: approved for this server: {', '.join(sorted(carl.allow))} (ledger: {started})")
    if http is None:
        progress(f"carl mcp: serving {len(carl.registry.specs)} tools on stdio (CARL_HOME {options.home.root})")
        anyio.run(carl.serve_stdio)
        return 0

    host, port = http
    if host not in LOOPBACK:
        progress(f"carl mcp: WARNING: listening on {host}, not loopback — anyone who can reach it can call "
                 "carl's tools (there is no authentication)")

    def ready(url: str) -> None:
        emit({"transport": "http", "url": url, "allow": sorted(carl.allow), "session": carl.ctx.session})
        progress(f"carl mcp: streamable HTTP on {url}")

    anyio.run(carl.serve_http, host, port, ready)
    return 0
