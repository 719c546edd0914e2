"""The SQL environment: an in-memory SQLite database per rollout, built from the dataset row.

A TRL 1.16 environment (``environment_factory``): ``reset(**row)`` builds the database; the public methods
``execute_query``, ``list_tables``, ``describe_table`` and ``insert_data`` are the tools (their docstrings are the
tool schemas the model sees). The row's columns:

- ``schema`` — SQL DDL (one string, several statements) or a list of statements;
- ``data`` — ``{table: [{column: value, …}, …]}`` rows to insert (optional; an object or its JSON text);
- ``allow_writes`` — ``true`` lets queries and ``insert_data`` change the database (default: read-only);
- ``answer`` — what the final query must return (see engine/envs/rewards.py).

Read-only is enforced by SQLite itself (``PRAGMA query_only``), and an authorizer refuses ``ATTACH`` (which
would create files), ``PRAGMA`` and extension loading in model queries. A query runs at most ``timeout_s`` seconds
(a progress handler interrupts it); results are cut at ``max_rows`` rows and ``max_result_chars`` characters.
SQLite itself bounds what one query can build: no string or blob longer than ``max_value_bytes``
(``sqlite3`` ``setlimit``: ``randomblob(999999999)``, ``zeroblob``, a ``group_concat`` over a recursive CTE fail
at once), no statement longer than ``max_sql_chars``, bounded expression depth and compound selects, temporary
tables and sorts kept in memory, and the SQLite heap of the whole process capped at ``heap_mb``
(``PRAGMA hard_heap_limit``: a recursive CTE that sorts or de-duplicates without end fails with
``carl.sandbox.memory`` instead of taking the trainer's memory). The heap limit is process-wide (SQLite has no
per-connection one): the trainer's other SQLite users share it, and it is only ever lowered, never raised.
Refusals and failures raise :class:`~engine.envs.sandbox.SandboxError` (``carl.sandbox.sql``,
``carl.sandbox.read_only``, ``carl.sandbox.timeout``), which TRL turns into ``{"error": …}`` tool results.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from engine.envs.sandbox import SandboxError, limits_from_dict


@dataclass
class SqlLimits:
    max_rows: int = 50
    max_result_chars: int = 4000
    timeout_s: float = 2.0
    max_value_bytes: int = 1_000_000
    max_sql_chars: int = 100_000
    heap_mb: int = 256

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SqlLimits":
        return limits_from_dict(cls, data, "sql")


_DENIED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA}
_WRITES = {getattr(sqlite3, n) for n in (
    "SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_CREATE_TABLE", "SQLITE_CREATE_INDEX",
    "SQLITE_CREATE_VIEW", "SQLITE_CREATE_TRIGGER", "SQLITE_CREATE_TEMP_TABLE", "SQLITE_CREATE_TEMP_INDEX",
    "SQLITE_CREATE_TEMP_VIEW", "SQLITE_CREATE_TEMP_TRIGGER", "SQLITE_DROP_TABLE", "SQLITE_DROP_INDEX",
    "SQLITE_DROP_VIEW", "SQLITE_DROP_TRIGGER", "SQLITE_DROP_TEMP_TABLE", "SQLITE_DROP_TEMP_INDEX",
    "SQLITE_DROP_TEMP_VIEW", "SQLITE_DROP_TEMP_TRIGGER", "SQLITE_ALTER_TABLE", "SQLITE_REINDEX",
    "SQLITE_ANALYZE", "SQLITE_CREATE_VTABLE", "SQLITE_DROP_VTABLE") if hasattr(sqlite3, n)}


def _ident(name: str) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise SandboxError(f"not a table or column name: {name!r}", code="carl.sandbox.sql")
    return '"' + name.replace('"', '""') + '"'


def build_database(row: dict[str, Any]) -> sqlite3.Connection:
    """A fresh in-memory database from a row's ``schema`` and ``data`` (writable; the caller locks it)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    schema = row.get("schema") or []
    data = row.get("data") or {}
    if isinstance(data, str):  # datasets keep a per-row {table: rows} most simply as JSON text
        try:
            data = json.loads(data) if data.strip() else {}
        except json.JSONDecodeError:
            raise SandboxError("the row's data is not valid JSON", code="carl.sandbox.row") from None
    statements = [schema] if isinstance(schema, str) else list(schema)
    try:
        for stmt in statements:
            conn.executescript(str(stmt))
        for table, rows in dict(data).items():
            for r in rows or []:
                cols = list(r)
                conn.execute(f"INSERT INTO {_ident(table)} ({', '.join(_ident(c) for c in cols)}) "
                             f"VALUES ({', '.join('?' for _ in cols)})", [r[c] for c in cols])
        conn.commit()
    except sqlite3.Error as exc:
        conn.close()
        raise SandboxError(f"the row's schema/data do not build a database: {exc}", code="carl.sandbox.row",
                           hint="Check the dataset row's schema (SQL DDL) and data ({table: [rows]}).") from None
    return conn


_FIXED_LIMITS = {"SQLITE_LIMIT_EXPR_DEPTH": 200, "SQLITE_LIMIT_COMPOUND_SELECT": 50,
                 "SQLITE_LIMIT_FUNCTION_ARG": 32, "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 1000,
                 "SQLITE_LIMIT_VARIABLE_NUMBER": 1000, "SQLITE_LIMIT_TRIGGER_DEPTH": 10, "SQLITE_LIMIT_ATTACHED": 0}


def bound_connection(conn: sqlite3.Connection, limits: "SqlLimits") -> None:
    """SQLite's own limits on what one query may build (see the module docstring); called before model queries."""
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, int(limits.max_value_bytes))
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, int(limits.max_sql_chars))
    for name, value in _FIXED_LIMITS.items():
        if hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    conn.execute("PRAGMA temp_store = MEMORY")  # sorts and temp b-trees count against the heap limit, not disk
    want = int(limits.heap_mb) * 1024 * 1024
    current = int(conn.execute("PRAGMA hard_heap_limit").fetchone()[0])
    if current == 0 or current > want:
        conn.execute(f"PRAGMA hard_heap_limit = {want}")


class SqlEnvironment:
    """One SQLite database per rollout. Public methods are the model's tools."""

    def __init__(self, limits: SqlLimits | dict[str, Any] | None = None):
        self._limits = limits if isinstance(limits, SqlLimits) else SqlLimits.from_dict(limits)
        self._conn: sqlite3.Connection | None = None
        self._allow_writes = False
        self._internal = False
        self._deadline = 0.0
        self.row: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.last_result: dict[str, Any] | None = None

    # --------------------------------------------------------------------------------------- lifecycle

    def reset(self, **row: Any) -> str | None:
        self._close()
        self.row = dict(row)
        self.calls = []
        self.last_result = None
        self._allow_writes = bool(row.get("allow_writes", False))
        self._conn = build_database(row)
        bound_connection(self._conn, self._limits)
        self._conn.set_authorizer(self._authorize)
        self._conn.set_progress_handler(self._progress, 1000)
        if not self._allow_writes:
            self._internal = True
            try:
                self._conn.execute("PRAGMA query_only = ON")
            finally:
                self._internal = False
        return None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        self._close()

    def _authorize(self, action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
        if self._internal:
            return sqlite3.SQLITE_OK
        if action in _DENIED:
            return sqlite3.SQLITE_DENY
        if action in _WRITES and not self._allow_writes:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.reset()
        assert self._conn is not None
        return self._conn

    def _run(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._deadline = time.monotonic() + self._limits.timeout_s
        try:
            return self._db().execute(sql, params)
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as exc:
            msg = str(exc)
            if "too long" in msg or "too many" in msg or "too deep" in msg:
                raise SandboxError(f"query stopped at an SQLite limit: {msg}", code="carl.sandbox.sql_limit",
                                   hint="Build smaller values: strings and blobs are capped at "
                                        f"{self._limits.max_value_bytes} bytes.") from None
            if "readonly" in msg or "not authorized" in msg or "query_only" in msg:
                if not self._allow_writes:
                    raise SandboxError(f"this database is read-only ({msg})", code="carl.sandbox.read_only",
                                       hint="Only SELECT queries are allowed for this task.") from None
                raise SandboxError(f"not allowed: {msg}", code="carl.sandbox.sql",
                                   hint="ATTACH, PRAGMA and extensions are not available.") from None
            raise self._stopped(exc, hint="Fix the query (list_tables / describe_table show the schema).") from None

    def _fetch(self, cur: sqlite3.Cursor) -> list[Any]:
        try:
            return cur.fetchmany(self._limits.max_rows + 1)
        except (sqlite3.Error, MemoryError) as exc:
            raise self._stopped(exc) from None

    def _stopped(self, exc: BaseException, hint: str | None = None) -> SandboxError:
        """A query (or its fetch) stopped by SQLite: the heap limit, a value-size limit, the time limit, or an
        ordinary SQL error (``hint`` for the last)."""
        msg = str(exc)
        if "out of memory" in msg.lower() or isinstance(exc, MemoryError):
            return SandboxError(f"query stopped at the SQLite heap limit ({self._limits.heap_mb} MB)",
                                code="carl.sandbox.memory", hint="Bound the query (LIMIT, a WHERE on the recursion).")
        if "too big" in msg:
            return SandboxError(f"query stopped at an SQLite limit: {msg}", code="carl.sandbox.sql_limit",
                                hint="Build smaller values: strings and blobs are capped at "
                                     f"{self._limits.max_value_bytes} bytes.")
        if "interrupted" in msg:
            return SandboxError(f"query stopped at the time limit ({self._limits.timeout_s:g} s)",
                                code="carl.sandbox.timeout")
        return SandboxError(f"SQL error: {msg}", code="carl.sandbox.sql", hint=hint)

    def _record(self, tool: str, args: dict[str, Any], ok: bool) -> None:
        self.calls.append({"tool": tool, "args": args, "ok": ok})

    # --------------------------------------------------------------------------------------------- tools

    def execute_query(self, query: str) -> str:
        """Run one SQL statement on the task's database and return the result as JSON.

        Args:
            query: A single SQL statement, e.g. a SELECT. Writes are allowed only when the task says so.

        Returns:
            JSON with "columns" and "rows" (cut to the row limit, "truncated" says so), or "rows_affected".
        """
        ok = False
        try:
            if not isinstance(query, str) or not query.strip():
                raise SandboxError("an SQL query is required", code="carl.sandbox.sql")
            cur = self._run(query)
            if cur.description is None:
                self._db().commit()
                out: dict[str, Any] = {"rows_affected": cur.rowcount}
            else:
                columns = [d[0] for d in cur.description]
                self._deadline = time.monotonic() + self._limits.timeout_s
                rows = self._fetch(cur)
                truncated = len(rows) > self._limits.max_rows
                rows = [list(r) for r in rows[: self._limits.max_rows]]
                out = {"columns": columns, "rows": rows, "truncated": truncated}
                self.last_result = {"columns": columns, "rows": rows, "truncated": truncated, "query": query}
            ok = True
            return self._cut(out)
        finally:
            self._record("execute_query", {"query": query}, ok)

    def list_tables(self) -> str:
        """List the tables in the task's database.

        Returns:
            JSON list of table names.
        """
        self._internal = True
        try:
            names = [r[0] for r in self._run("SELECT name FROM sqlite_master WHERE type='table' "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        finally:
            self._internal = False
        self._record("list_tables", {}, True)
        return json.dumps(names)

    def describe_table(self, table: str) -> str:
        """Describe one table: its columns, their types, and its row count.

        Args:
            table: The table's name, as list_tables shows it.

        Returns:
            JSON with "columns" ([{"name", "type", "primary_key"}]) and "row_count".
        """
        ok = False
        try:
            self._internal = True
            try:
                info = self._run(f"PRAGMA table_info({_ident(table)})").fetchall()
                if not info:
                    raise SandboxError(f"no such table: {table}", code="carl.sandbox.sql",
                                       hint="Call list_tables to see the tables.")
                count = self._run(f"SELECT COUNT(*) FROM {_ident(table)}").fetchone()[0]
            finally:
                self._internal = False
            ok = True
            return json.dumps({"table": table, "row_count": count,
                               "columns": [{"name": c[1], "type": c[2], "primary_key": bool(c[5])} for c in info]})
        finally:
            self._record("describe_table", {"table": table}, ok)

    def insert_data(self, table: str, rows: list[dict]) -> str:
        """Insert rows into a table (only when the task allows writes).

        Args:
            table: The table to insert into.
            rows: The rows, each an object mapping column names to values.

        Returns:
            JSON with "inserted", the number of rows added.
        """
        ok = False
        try:
            if not self._allow_writes:
                raise SandboxError("this database is read-only", code="carl.sandbox.read_only",
                                   hint="Only SELECT queries are allowed for this task.")
            if isinstance(rows, dict):
                rows = [rows]
            if not isinstance(rows, list) or not all(isinstance(r, dict) and r for r in rows):
                raise SandboxError("rows must be a list of non-empty objects", code="carl.sandbox.sql")
            n = 0
            for r in rows:
                cols = list(r)
                self._run(f"INSERT INTO {_ident(table)} ({', '.join(_ident(c) for c in cols)}) "
                          f"VALUES ({', '.join('?' for _ in cols)})", [r[c] for c in cols])
                n += 1
            self._db().commit()
            ok = True
            return json.dumps({"inserted": n})
        finally:
            self._record("insert_data", {"table": table, "rows": rows}, ok)

    def _cut(self, out: dict[str, Any]) -> str:
        text = json.dumps(out, default=str)
        limit = self._limits.max_result_chars
        while len(text) > limit and out.get("rows"):
            out["rows"] = out["rows"][: max(0, len(out["rows"]) // 2)]
            out["truncated"] = True
            text = json.dumps(out, default=str)
        return text[:limit]
