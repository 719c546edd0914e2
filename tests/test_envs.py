"""The SQL and code environments as TRL environments, their task rewards and the three agent numbers."""

from __future__ import annotations

import inspect
import json

import pytest

from engine.envs.code import CodeEnvironment
from engine.envs.factory import call_tool, make_factory, tool_names, tool_schemas
from engine.envs.rewards import agent_metrics, attempted_calls, code_tests, make_env_reward, sql_matches, sql_result
from engine.envs.sandbox import SandboxError
from engine.envs.sql import SqlEnvironment
from tests._isolation import needs_isolation


ROW = {
    "schema": "CREATE TABLE emp(id INTEGER PRIMARY KEY, name TEXT, dept TEXT, salary REAL);"
              "CREATE TABLE dept(name TEXT PRIMARY KEY, floor INT);",
    "data": {"emp": [{"name": "ana", "dept": "eng", "salary": 120.0}, {"name": "bo", "dept": "eng", "salary": 100.0},
                     {"name": "cy", "dept": "ops", "salary": 90.0}],
             "dept": [{"name": "eng", "floor": 3}, {"name": "ops", "floor": 1}]},
    "answer": 2,
}


def _env(row=ROW, **limits):
    env = make_factory("sql", limits)()
    env.reset(**row)
    return env


def test_sql_tools_are_the_public_methods_trl_will_expose():
    assert tool_names("sql") == ["describe_table", "execute_query", "insert_data", "list_tables"]
    assert tool_names("code") == ["execute_code", "read_file", "run_shell", "write_file"]
    # TRL's rule: public functions on the class other than reset/get_reward become tools
    for cls in (SqlEnvironment, CodeEnvironment):
        public = {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}
        assert "reset" in public and "get_reward" not in public
    schemas = {s["function"]["name"]: s for s in tool_schemas("sql")}
    assert schemas["execute_query"]["function"]["parameters"]["required"] == ["query"]
    assert schemas["insert_data"]["function"]["parameters"]["properties"]["rows"]["type"] == "array"


def test_sql_query_list_describe():
    env = _env()
    assert json.loads(env.list_tables()) == ["dept", "emp"]
    d = json.loads(env.describe_table("emp"))
    assert d["row_count"] == 3 and [c["name"] for c in d["columns"]] == ["id", "name", "dept", "salary"]
    out = json.loads(env.execute_query("SELECT COUNT(*) FROM emp WHERE dept = 'eng'"))
    assert out == {"columns": ["COUNT(*)"], "rows": [[2]], "truncated": False}
    assert env.last_result["rows"] == [[2]]
    assert [c["tool"] for c in env.calls] == ["list_tables", "describe_table", "execute_query"]
    with pytest.raises(SandboxError) as err:
        env.describe_table("nope")
    assert err.value.code == "carl.sandbox.sql"
    with pytest.raises(SandboxError) as err:
        env.execute_query("SELEC 1")
    assert err.value.code == "carl.sandbox.sql"
    assert env.calls[-1]["ok"] is False


@pytest.mark.parametrize("query", ["DELETE FROM emp", "UPDATE emp SET salary = 0", "DROP TABLE emp",
                                   "INSERT INTO emp(name) VALUES ('x')", "CREATE TABLE x(a)",
                                   "ATTACH DATABASE '/tmp/carl-attack.db' AS a", "PRAGMA query_only = OFF"])
def test_sql_read_only_unless_the_row_allows_writes(query, tmp_path):
    env = _env()
    with pytest.raises(SandboxError) as err:
        env.execute_query(query)
    assert err.value.code in ("carl.sandbox.read_only", "carl.sandbox.sql")
    assert json.loads(env.execute_query("SELECT COUNT(*) FROM emp"))["rows"] == [[3]]
    with pytest.raises(SandboxError) as err:
        env.insert_data("emp", [{"name": "x"}])
    assert err.value.code == "carl.sandbox.read_only"


def test_sql_writes_when_allowed_but_never_attach():
    env = _env({**ROW, "allow_writes": True})
    assert json.loads(env.insert_data("emp", [{"name": "dee", "dept": "ops", "salary": 80}])) == {"inserted": 1}
    assert json.loads(env.execute_query("UPDATE emp SET salary = salary + 1"))["rows_affected"] == 4
    with pytest.raises(SandboxError):
        env.execute_query("ATTACH DATABASE ':memory:' AS other")
    with pytest.raises(SandboxError):
        env.execute_query("PRAGMA table_info(emp)")


def test_sql_results_cut_at_limits_and_slow_queries_stopped():
    env = _env(max_rows=2)
    out = json.loads(env.execute_query("SELECT * FROM emp"))
    assert len(out["rows"]) == 2 and out["truncated"] is True
    env = _env(max_result_chars=60)
    text = env.execute_query("SELECT * FROM emp")
    assert len(text) <= 60
    env = _env(timeout_s=0.2)
    with pytest.raises(SandboxError) as err:  # an endless recursive CTE
        env.execute_query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT MAX(x) FROM c")
    assert err.value.code == "carl.sandbox.timeout"


def test_sql_reset_gives_each_rollout_a_fresh_database():
    env = _env({**ROW, "allow_writes": True})
    env.execute_query("DELETE FROM emp")
    env.reset(**ROW)
    assert json.loads(env.execute_query("SELECT COUNT(*) FROM emp"))["rows"] == [[3]]
    assert len(env.calls) == 1
    with pytest.raises(SandboxError) as err:
        SqlEnvironment().reset(schema="CREATE TABLE (")
    assert err.value.code == "carl.sandbox.row"


def test_sql_result_reward_reads_the_environment():
    good, wrong, none = _env(), _env(), _env()
    good.execute_query("SELECT COUNT(*) FROM emp WHERE dept = 'eng'")
    wrong.execute_query("SELECT COUNT(*) FROM emp")
    assert sql_result([None] * 3, ["", "", ""], environments=[good, wrong, none]) == [1.0, 0.0, 0.0]
    # list answers: a multiset of rows unless ordered; answer_query against a fresh copy of the database
    env = _env()
    env.execute_query("SELECT name FROM emp WHERE dept = 'eng' ORDER BY salary")
    assert sql_matches(env.last_result, {**ROW, "answer": ["ana", "bo"]})
    assert not sql_matches(env.last_result, {**ROW, "answer": ["ana", "bo"], "ordered": True})
    assert sql_matches(env.last_result, {**ROW, "answer": '["bo", "ana"]', "ordered": True})
    assert sql_matches(env.last_result, {**ROW, "answer": None,
                                         "answer_query": "SELECT name FROM emp WHERE salary > 95"})
    assert not sql_matches(env.last_result, {**ROW, "answer": ["ana"]})
    env.execute_query("SELECT AVG(salary) FROM emp")
    assert sql_matches(env.last_result, {**ROW, "answer": "103.33333333333333"})


@needs_isolation
def test_code_environment_tools_and_tests_reward():
    env = make_factory("code", {"wall_s": 60})()
    row = {"files": {"README.md": "write add(a, b) in solution.py"},
           "tests": "from solution import add\nassert add(2, 3) == 5\n"}
    env.reset(**row)
    assert env.read_file("README.md").startswith("write add")
    assert json.loads(env.write_file("solution.py", "def add(a, b):\n    return a + b\n"))["bytes"] > 0
    res = json.loads(env.execute_code("from solution import add\nprint(add(40, 2))"))
    assert res["exit_code"] == 0 and res["stdout"].strip() == "42"
    assert json.loads(env.run_shell("ls"))["stdout"].split() == ["README.md", "solution.py"]
    broken = make_factory("code", {"wall_s": 60})()
    broken.reset(**row)
    broken.write_file("solution.py", "def add(a, b):\n    return a - b\n")
    missing = make_factory("code", {"wall_s": 60})()
    missing.reset(**row)
    assert code_tests([None] * 3, [""] * 3, environments=[env, broken, missing]) == [1.0, 0.0, 0.0]
    root = env.sandbox.root
    env.reset(**row)  # the previous rollout's directory is gone
    assert not root.exists()
    assert env.calls == []
    with pytest.raises(SandboxError) as err:
        env.read_file("../../etc/passwd")
    assert err.value.code == "carl.sandbox.path"


def test_agent_metrics_from_conversational_completions():
    call = {"type": "function", "function": {"name": "execute_query", "arguments": {"query": "SELECT 1"}}}
    completions = [
        [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "[]"},
         {"role": "assistant", "content": "", "tool_calls": [call, call]}, {"role": "tool", "content": "[]"},
         {"role": "tool", "content": "[]"}, {"role": "assistant", "content": "done"}],
        [{"role": "assistant", "content": "<tool_call>{not json</tool_call>"}],
        [{"role": "assistant", "content": "no tools"}],
    ]

    class Env:
        def __init__(self, n):
            self.calls = [{}] * n

    assert [attempted_calls(c) for c in completions] == [3, 1, 0]
    m = agent_metrics(completions, [Env(3), Env(0), Env(0)], [1.0, 0.0, 0.0])
    assert m == {"task_completion": pytest.approx(1 / 3), "tool_format": 0.75, "tool_calls_per_task": 4 / 3}
    logged = {}
    name, fn = make_env_reward("sql")
    assert name == "sql_result"
    env = _env()
    env.execute_query("SELECT COUNT(*) FROM emp WHERE dept = 'eng'")
    out = fn([None], [completions[0][:2]], environments=[env], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out == [1.0]
    assert logged == {"agent/task_completion": 1.0, "agent/tool_format": 1.0, "agent/tool_calls_per_task": 1.0}


def test_call_tool_and_errors():
    out = call_tool("sql", "execute_query", {"query": "SELECT name FROM dept ORDER BY floor"}, ROW)
    assert out["result"]["rows"] == [["ops"], ["eng"]]
    with pytest.raises(SandboxError) as err:
        call_tool("sql", "nope", {}, ROW)
    assert err.value.code == "carl.sandbox.tool"
    with pytest.raises(SandboxError) as err:
        call_tool("sql", "execute_query", {"sql": "x"}, ROW)
    assert err.value.code == "carl.sandbox.args"
    with pytest.raises(SandboxError) as err:
        make_factory("sql", {"max_rowz": 3})
    assert err.value.code == "carl.sandbox.limits"
