"""`carl --batch env call|tools` as real subprocesses: JSON on stdout, carl.sandbox.* errors on stderr."""

from __future__ import annotations

import json

from tests._isolation import needs_isolation
from tests.test_cli_contract import carl, ok_json

ROW = json.dumps({"schema": "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);",
                  "data": {"t": [{"name": "a"}, {"name": "b"}]}})


def _err(res, code, exit_code=1):
    assert res.returncode == exit_code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stdout == ""
    err = json.loads(res.stderr.strip().splitlines()[-1])["error"]
    assert err["code"] == code, err
    return err


def test_env_call_sql():
    out = ok_json(carl("--batch", "env", "call", "sql", "execute_query", "--args",
                       '{"query": "SELECT name FROM t ORDER BY id"}', "--row", ROW))
    assert out["kind"] == "sql" and out["tool"] == "execute_query"
    assert out["result"] == {"columns": ["name"], "rows": [["a"], ["b"]], "truncated": False}
    _err(carl("--batch", "env", "call", "sql", "execute_query", "--args", '{"query": "DELETE FROM t"}',
              "--row", ROW), "carl.sandbox.read_only")


@needs_isolation
def test_env_call_code(tmp_path):
    row = tmp_path / "row.json"
    row.write_text(json.dumps({"files": {"a.txt": "hello"}}))
    out = ok_json(carl("--batch", "env", "call", "code", "run_shell", "--args", '{"command": "cat a.txt"}',
                       "--row", f"@{row}"))
    assert out["result"]["exit_code"] == 0 and out["result"]["stdout"] == "hello"
    err = _err(carl("--batch", "env", "call", "code", "execute_code", "--args", '{"code": "while True: pass"}',
                    "--limits", '{"cpu_s": 1, "wall_s": 120}'), "carl.sandbox.cpu")
    assert "CPU-time limit" in err["message"]


def test_env_call_bad_input():
    _err(carl("--batch", "env", "call", "sql", "execute_query", "--args", "{not json"), "carl.validation", 2)
    _err(carl("--batch", "env", "call", "sql", "drop_everything"), "carl.sandbox.tool")
    _err(carl("--batch", "env", "call", "code", "read_file", "--args", '{"path": "/etc/passwd"}'),
         "carl.sandbox.path")


def test_env_tools():
    out = ok_json(carl("--batch", "env", "tools", "code"))
    assert out["tools"] == ["execute_code", "read_file", "run_shell", "write_file"]
    assert {s["function"]["name"] for s in out["schemas"]} == set(out["tools"])
