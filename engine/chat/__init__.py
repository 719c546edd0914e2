"""The chat agent: an Anthropic tool loop over a bounded, typed set of engine tools.

Modules: ``config`` (the ``chat:`` section of carl.yaml), ``pricing`` (usage × price table), ``sessions``
(SQLite in CARL_HOME/sessions.db), ``tools`` (the tool registry, shared with the MCP server) and ``agent``
(the streaming tool loop). Nothing here imports ``anthropic`` at module level.
"""
