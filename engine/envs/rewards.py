"""Task rewards that read the environment, and the three agent numbers.

Reward functions have TRL's shape (``f(prompts, completions, **kwargs) -> list[float]``) and read the
per-rollout ``environments`` TRL passes them (one instance per completion, after its tool loop):

* ``sql_result`` — 1 when the last SELECT the model ran returned the row's ``answer`` (or what the row's
  ``answer_query`` returns on a fresh copy of the database), else 0. ``answer`` may be a scalar (the result must be
  one cell), a list of scalars (one column) or a list of rows; rows compare as a multiset unless the row says
  ``ordered: true``; numbers compare within 1e-6.
* ``code_tests`` — 1 when the row's ``tests`` (Python source) pass, else 0. They run in a *fresh* sandbox that
  holds copies of the regular files the model left (not its running processes, symlinks or directory), through a
  harness read from stdin (nothing of it is on disk or on a command line) that runs the tests and then, after the
  last assertion, writes a random per-call nonce: a pass is exit code 0 *and* that nonce on stdout. A
  ``solution.py`` that calls ``os._exit(0)`` or ``sys.exit(0)`` on import, or kills its own process, scores 0;
  a test run stopped at a limit scores 0. The nonce is not a string anywhere in the process before the tests end
  (it is computed from two random halves after the last assertion; nothing of it is in ``__main__``). Not
  covered: model code written to reverse-engineer the harness from the interpreter's own frames
  (``sys._getframe``) and recompute it — the tests are ordinary Python run in the same process.

:func:`agent_metrics` computes, per batch, the seed's three numbers (docs/agents.md):

* ``task_completion`` — the fraction of rollouts whose environment reward is 1;
* ``tool_format`` — tool calls that reached a tool with arguments it accepts, over every tool call the model
  attempted (parsed calls plus ``<tool_call>`` blocks the parser could not read);
* ``tool_calls_per_task`` — attempted tool calls per rollout.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Sequence

_UNPARSED_CALL = re.compile(r"<tool_call>", re.I)


# ------------------------------------------------------------------------------------------------ sql


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in "[{" or s in ("true", "false", "null") or re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", s):
            try:
                return json.loads(s)
            except json.JSONDecodeError:
                return value
    return value


def _cell_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(a, (int, float)) != isinstance(b, (int, float)):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return str(a).strip() == str(b).strip()


def _rows_eq(got: list[list[Any]], want: list[list[Any]], ordered: bool) -> bool:
    if len(got) != len(want) or any(len(g) != len(w) for g, w in zip(got, want)):
        return False
    if ordered:
        return all(_cell_eq(x, y) for g, w in zip(got, want) for x, y in zip(g, w))
    left = list(want)
    for g in got:
        for i, w in enumerate(left):
            if all(_cell_eq(x, y) for x, y in zip(g, w)):
                del left[i]
                break
        else:
            return False
    return not left


def sql_matches(result: dict[str, Any] | None, row: dict[str, Any]) -> bool:
    """Whether an execute_query result (``{"columns", "rows"}``) answers the row's task."""
    if not result or result.get("truncated"):
        return False
    rows = [list(r) for r in result.get("rows") or []]
    ordered = bool(row.get("ordered", False))
    if row.get("answer_query"):
        from engine.envs.sql import build_database

        conn = build_database(row)
        try:
            want = [list(r) for r in conn.execute(str(row["answer_query"])).fetchall()]
        finally:
            conn.close()
        return _rows_eq(rows, want, ordered)
    answer = _maybe_json(row.get("answer"))
    if answer is None:
        return False
    if isinstance(answer, list):
        want = [list(a) if isinstance(a, (list, tuple)) else [a] for a in answer]
        return _rows_eq(rows, want, ordered)
    if isinstance(answer, dict):
        return False
    return len(rows) == 1 and len(rows[0]) == 1 and _cell_eq(rows[0][0], answer)


def _sql_scores(prompts, completions, environments=None, **kwargs) -> list[float]:
    envs = environments or [None] * len(completions)
    return [float(env is not None and sql_matches(getattr(env, "last_result", None), getattr(env, "row", {})))
            for env in envs]


# ------------------------------------------------------------------------------------------------ code


# The harness fed to ``python3 -`` on stdin. The nonce is never a string in the process before the tests end: it
# is the XOR of two random halves, computed after the last assertion, inside a function (nothing in ``__main__``).
_HARNESS = """\
import os as _o, sys as _s
def _carl_run(_src, _a, _b):
    _w = _o.write
    exec(compile(_src, "tests.py", "exec"), {{"__name__": "__main__", "__file__": "tests.py"}})
    _s.stdout.flush()
    _w(1, ("\\ncarl-tests-passed-%032x\\n" % (int(_a, 16) ^ int(_b, 16))).encode())
_carl_run({tests!r}, {a!r}, {b!r})
"""


def run_code_tests(env: Any) -> tuple[bool, str]:
    """Run the row's tests against the model's files (see the module docstring); ``(passed, why)``."""
    import secrets

    from engine.envs.sandbox import Sandbox, SandboxError, sandbox_python

    tests = (getattr(env, "row", None) or {}).get("tests")
    if not tests:
        return False, "the row has no tests"
    a, b = secrets.token_hex(16), secrets.token_hex(16)
    nonce = "carl-tests-passed-%032x" % (int(a, 16) ^ int(b, 16))
    source = env.sandbox
    fresh = Sandbox(source.limits)
    try:
        fresh.copy_files_from(source)
        harness = _HARNESS.format(tests=str(tests), a=a, b=b).encode("utf-8")
        res = fresh.run([sandbox_python(), "-E", "-s", "-B", "-"], stdin=harness)
    except SandboxError as exc:
        return False, exc.code
    finally:
        fresh.close()
    if res.exit_code != 0:
        return False, f"exit code {res.exit_code}"
    if res.truncated or nonce not in res.stdout.splitlines():
        return False, "the tests did not run to the end (no nonce after the last assertion)"
    return True, "passed"


def code_passes(env: Any) -> bool:
    return run_code_tests(env)[0]


def _code_scores(prompts, completions, environments=None, **kwargs) -> list[float]:
    envs = environments or [None] * len(completions)
    return [float(env is not None and code_passes(env)) for env in envs]


ENV_REWARDS: dict[str, tuple[str, Callable[..., list[float]]]] = {
    "sql": ("sql_result", _sql_scores),
    "code": ("code_tests", _code_scores),
}


# ------------------------------------------------------------------------------------------------ metrics


def _messages(completion: Any) -> list[dict[str, Any]]:
    return [m for m in completion if isinstance(m, dict)] if isinstance(completion, list) else []


def attempted_calls(completion: Any) -> int:
    """Tool calls the model attempted in one rollout: parsed ones plus unreadable ``<tool_call>`` blocks."""
    if isinstance(completion, str):
        return len(_UNPARSED_CALL.findall(completion))
    n = 0
    for m in _messages(completion):
        if m.get("role") != "assistant":
            continue
        n += len(m.get("tool_calls") or [])
        n += len(_UNPARSED_CALL.findall(str(m.get("content") or "")))
    return n


def agent_metrics(completions: Sequence[Any], environments: Sequence[Any] | None,
                  completed: Sequence[float]) -> dict[str, float]:
    """The seed's three numbers for one batch (see the module docstring)."""
    n = len(completions)
    if not n:
        return {"task_completion": float("nan"), "tool_format": float("nan"), "tool_calls_per_task": float("nan")}
    attempts = [attempted_calls(c) for c in completions]
    reached = [len(getattr(e, "calls", []) or []) for e in (environments or [None] * n)]
    total = sum(attempts)
    # a call that reached a tool counts as well-formed; more reached than parsed means the parser saw fewer
    good = sum(min(r, a) if a else 0 for r, a in zip(reached, attempts))
    return {
        "task_completion": sum(1.0 for v in completed if v >= 1.0) / n,
        "tool_format": good / total if total else float("nan"),
        "tool_calls_per_task": total / n,
    }


def make_env_reward(kind: str) -> tuple[str, Callable[..., list[float]]]:
    """The environment's task reward, wrapped to also log the three agent numbers each step."""
    name, fn = ENV_REWARDS[kind]

    def reward(prompts, completions, environments=None, log_metric=None, **kwargs):
        values = fn(prompts, completions, environments=environments, **kwargs)
        if log_metric is not None:
            for key, value in agent_metrics(completions, environments, values).items():
                if value == value:
                    log_metric(f"agent/{key}", value)
        return values

    reward.__name__ = name
    return name, reward


# What carl.yaml names (``task.rewards: [{kind: python, function: "engine.envs.rewards:sql_result"}]``): the
# environment's score, which also logs agent/task_completion, agent/tool_format, agent/tool_calls_per_task.
sql_result = make_env_reward("sql")[1]
code_tests = make_env_reward("code")[1]
