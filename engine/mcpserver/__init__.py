"""carl's engine as an MCP server (see docs/mcp.md).

- :mod:`engine.mcpserver.gate`       ``--allow`` parsing, the approver, the refusal text (no SDK import)
- :mod:`engine.mcpserver.resources`  the ``carl://`` resources as JSON (no SDK import)
- :mod:`engine.mcpserver.server`     :class:`CarlMCP`: the low-level MCP server, stdio and streamable HTTP

The tools are the chat agent's registry (:func:`engine.chat.tools.build_registry`), not a copy. The package is
named ``mcpserver`` so that it never shadows the ``mcp`` SDK. Import :mod:`engine.mcpserver.server` only where
the server is needed: it imports the SDK.
"""
