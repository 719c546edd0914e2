"""`carl --batch chat sessions [show ID | delete ID | export ID]` — the chat agent's stored sessions.

- ``chat sessions`` → ``{"sessions": [{"session", "title", "model", "created_at", "updated_at", "n_messages",
  "usage", "cost_usd"}]}`` (newest first)
- ``chat sessions show ID`` → that entry + ``"messages"`` (Messages-API shape) and ``"tool_calls"``
- ``chat sessions delete ID`` → ``{"deleted": ID}``
- ``chat sessions export ID [--out FILE]`` → ``{"session", "markdown"}`` or, with --out, ``{"session", "path"}``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carl_tui.batch._io import emit
from engine.errors import ValidationError


def register(sub: Any) -> None:
    p = sub.add_parser("chat", help="chat sessions: list, show, delete, export",
                       description="Manage the chat agent's sessions (CARL_HOME/sessions.db).")
    verbs = p.add_subparsers(dest="chat_verb", metavar="sessions")
    s = verbs.add_parser("sessions", help="list sessions, or show/delete/export one")
    s.add_argument("action", nargs="?", choices=("show", "delete", "export"), help="what to do with ID")
    s.add_argument("id", nargs="?", help="session id or an unambiguous prefix")
    s.add_argument("--out", help="export: write the Markdown to this file")
    s.set_defaults(func=run)


def run(args: Any) -> int:
    from engine.chat.sessions import SessionStore
    from engine.home import carl_home

    store = SessionStore(carl_home().sessions_db)
    if args.action is None:
        if args.id:
            raise ValidationError("chat sessions: give an action before the id (show, delete or export)")
        emit({"sessions": [s.to_dict() for s in store.list()]})
        return 0
    if not args.id:
        raise ValidationError(f"chat sessions {args.action}: missing session id",
                              hint="List them with `carl --batch chat sessions`.")
    if args.action == "show":
        info = store.info(args.id)
        emit({**info.to_dict(), "messages": store.messages(info.id), "tool_calls": store.tool_calls(info.id)})
    elif args.action == "delete":
        emit({"deleted": store.delete(args.id)})
    else:
        info = store.info(args.id)
        md = store.export_markdown(info.id)
        if args.out:
            path = Path(args.out)
            path.write_text(md, encoding="utf-8")
            emit({"session": info.id, "path": str(path)})
        else:
            emit({"session": info.id, "markdown": md})
    return 0
