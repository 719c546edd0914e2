"""Chat sessions in SQLite (``CARL_HOME/sessions.db``): messages, tool calls, usage and cost.

Every method opens its own connection, so the store is safe to use from a worker thread. Messages are kept
in the Messages-API shape (``{"role", "content"}``) so a session can be resumed as is.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from engine.chat.pricing import USAGE_FIELDS, Usage
from engine.errors import CARLError, PermissionDenied, ValidationError

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tool_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    tool_use_id TEXT NOT NULL, name TEXT NOT NULL, input TEXT NOT NULL, ok INTEGER NOT NULL,
    result TEXT NOT NULL, effectful INTEGER NOT NULL DEFAULT 0, approved INTEGER, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    model TEXT NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL, cache_creation_input_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_session ON messages(session_id, id);
CREATE INDEX IF NOT EXISTS tool_calls_session ON tool_calls(session_id, id);
CREATE INDEX IF NOT EXISTS usage_session ON usage(session_id, id);
"""


class SessionNotFound(CARLError):
    code = "carl.chat.session_not_found"
    exit_code = 2
    default_hint = "List sessions with `carl --batch chat sessions`."


@dataclass
class SessionInfo:
    id: str
    title: str
    model: str
    created_at: float
    updated_at: float
    n_messages: int
    usage: Usage
    cost_usd: float

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.id, "title": self.title, "model": self.model, "created_at": self.created_at,
                "updated_at": self.updated_at, "n_messages": self.n_messages, "usage": self.usage.to_dict(),
                "cost_usd": round(self.cost_usd, 6)}


class SessionStore:
    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self._ready = False

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise PermissionDenied(f"cannot open {self.path}: {exc}", hint="Set CARL_HOME to a writable directory.",
                                   context={"path": str(self.path)}) from None
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            if not self._ready:
                con.executescript(SCHEMA)
                self._ready = True
            with con:
                yield con
        finally:
            con.close()

    # ---------------------------------------------------------------- sessions
    def create(self, model: str = "", title: str = "") -> str:
        """A new session; its id is 12 hex digits (not secret: ``random``, so seeded tests are reproducible)."""
        now = self.clock()
        with self._db() as con:
            while True:
                sid = f"{random.getrandbits(48):012x}"
                try:
                    con.execute("INSERT INTO sessions (id, title, model, created_at, updated_at) VALUES (?,?,?,?,?)",
                                (sid, title[:120], model, now, now))
                    return sid
                except sqlite3.IntegrityError:
                    continue

    def resolve(self, ref: str) -> str:
        """A session id or an unambiguous prefix of one."""
        ref = (ref or "").strip()
        if not ref:
            raise ValidationError("empty session id", hint="List sessions with `carl --batch chat sessions`.")
        with self._db() as con:
            rows = [r["id"] for r in con.execute("SELECT id FROM sessions WHERE id LIKE ? ORDER BY id",
                                                 (ref.replace("%", "").replace("_", "") + "%",))]
        if ref in rows:
            return ref
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise SessionNotFound(f"no chat session {ref!r}", context={"session": ref})
        raise ValidationError(f"session prefix {ref!r} is ambiguous ({len(rows)} match)",
                              hint="Give more characters of the id.", context={"matches": rows[:10]})

    def touch(self, sid: str, *, title: str | None = None, model: str | None = None) -> None:
        with self._db() as con:
            con.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (self.clock(), sid))
            if title is not None:
                con.execute("UPDATE sessions SET title = ? WHERE id = ? AND title = ''", (title[:120], sid))
            if model is not None:
                con.execute("UPDATE sessions SET model = ? WHERE id = ?", (model, sid))

    def info(self, sid: str) -> SessionInfo:
        sid = self.resolve(sid)
        return next(s for s in self.list(_only=sid))

    def list(self, _only: str | None = None) -> list[SessionInfo]:
        fields = ", ".join(f"COALESCE((SELECT SUM({f}) FROM usage u WHERE u.session_id = s.id), 0) AS {f}"
                           for f in USAGE_FIELDS)
        sql = (f"SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS n_messages, {fields}, "
               "COALESCE((SELECT SUM(cost_usd) FROM usage u WHERE u.session_id = s.id), 0) AS cost_usd "
               "FROM sessions s" + (" WHERE s.id = ?" if _only else "") + " ORDER BY s.updated_at DESC, s.id")
        with self._db() as con:
            rows = con.execute(sql, (_only,) if _only else ()).fetchall()
        return [SessionInfo(r["id"], r["title"], r["model"], r["created_at"], r["updated_at"], r["n_messages"],
                            Usage(**{f: int(r[f]) for f in USAGE_FIELDS}), float(r["cost_usd"])) for r in rows]

    def delete(self, sid: str) -> str:
        sid = self.resolve(sid)
        with self._db() as con:
            con.execute("DELETE FROM sessions WHERE id = ?", (sid,))
        return sid

    # ---------------------------------------------------------------- content
    def add_message(self, sid: str, role: str, content: Any) -> None:
        with self._db() as con:
            con.execute("INSERT INTO messages (session_id, role, content, ts) VALUES (?,?,?,?)",
                        (sid, role, json.dumps(content, ensure_ascii=False), self.clock()))
            con.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (self.clock(), sid))

    def messages(self, sid: str) -> list[dict[str, Any]]:
        with self._db() as con:
            rows = con.execute("SELECT role, content FROM messages WHERE session_id = ? ORDER BY id", (sid,))
            return [{"role": r["role"], "content": json.loads(r["content"])} for r in rows]

    def add_tool_call(self, sid: str, *, tool_use_id: str, name: str, input: Any, ok: bool, result: Any,
                      effectful: bool = False, approved: bool | None = None) -> None:
        with self._db() as con:
            con.execute("INSERT INTO tool_calls (session_id, tool_use_id, name, input, ok, result, effectful, "
                        "approved, ts) VALUES (?,?,?,?,?,?,?,?,?)",
                        (sid, tool_use_id, name, json.dumps(input, ensure_ascii=False), int(ok),
                         json.dumps(result, ensure_ascii=False, default=str), int(effectful),
                         None if approved is None else int(approved), self.clock()))

    def tool_calls(self, sid: str) -> list[dict[str, Any]]:
        with self._db() as con:
            rows = con.execute("SELECT * FROM tool_calls WHERE session_id = ? ORDER BY id", (sid,)).fetchall()
        return [{"tool_use_id": r["tool_use_id"], "name": r["name"], "input": json.loads(r["input"]),
                 "ok": bool(r["ok"]), "result": json.loads(r["result"]), "effectful": bool(r["effectful"]),
                 "approved": None if r["approved"] is None else bool(r["approved"]), "ts": r["ts"]} for r in rows]

    def add_usage(self, sid: str, model: str, usage: Usage, cost: float) -> None:
        with self._db() as con:
            con.execute("INSERT INTO usage (session_id, model, input_tokens, output_tokens, cache_read_input_tokens, "
                        "cache_creation_input_tokens, cost_usd, ts) VALUES (?,?,?,?,?,?,?,?)",
                        (sid, model, usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
                         usage.cache_creation_input_tokens, cost, self.clock()))

    def cost(self, sid: str) -> float:
        with self._db() as con:
            row = con.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE session_id = ?", (sid,)).fetchone()
        return float(row[0])

    # ---------------------------------------------------------------- export
    def export_markdown(self, sid: str) -> str:
        info = self.info(sid)
        calls = {c["tool_use_id"]: c for c in self.tool_calls(info.id)}
        out = [f"# {info.title or 'carl chat'}", "",
               f"- session: `{info.id}`", f"- model: `{info.model}`",
               f"- cost: ${info.cost_usd:.4f} ({info.usage.input_tokens} in, {info.usage.output_tokens} out, "
               f"{info.usage.cache_read_input_tokens} cache read, {info.usage.cache_creation_input_tokens} "
               "cache write tokens)", ""]
        for msg in self.messages(info.id):
            blocks = msg["content"] if isinstance(msg["content"], list) else [{"type": "text", "text": msg["content"]}]
            for b in blocks:
                kind = b.get("type")
                if kind == "text" and b.get("text", "").strip():
                    out += [f"## {'You' if msg['role'] == 'user' else 'carl'}", "", b["text"].strip(), ""]
                elif kind == "tool_use":
                    c = calls.get(b.get("id"), {})
                    status = "ok" if c.get("ok") else "error"
                    out += [f"### tool `{b.get('name')}` ({status})", "", "```json",
                            json.dumps(b.get("input", {}), indent=2, ensure_ascii=False), "```", ""]
                elif kind == "tool_result":
                    text = _result_text(b.get("content"))
                    out += ["<details><summary>result</summary>", "", "```json", text, "```", "", "</details>", ""]
        return "\n".join(out).rstrip() + "\n"


def _result_text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content or "")
