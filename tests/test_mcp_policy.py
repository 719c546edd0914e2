"""The MCP server's approval rules in process (the SDK client connected to the server object, no subprocess):
policy denials win over --allow, policy-required approvals apply to read-only tools too, and bad flags are
carl.validation errors. Plus: `carl --batch --help` does not import the SDK."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mcp import Client

from carl_tui.batch import main as batch_main
from engine.chat.tools import build_registry
from engine.errors import ValidationError
from engine.home import CarlHome
from engine.ledger import Ledger
from engine.mcpserver import resources
from engine.mcpserver.gate import parse_allow
from engine.mcpserver.server import CarlMCP, ServerOptions, parse_http
from tests.conftest import REPO

pytestmark = pytest.mark.anyio


def server(tmp_path, policy: str = "", allow: tuple[str, ...] = ()) -> CarlMCP:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    if policy:
        (project / "carl.yaml").write_text(policy)
    return CarlMCP(ServerOptions(home=CarlHome.from_env(), cwd=project, allow=allow, session="test-session"))


def error_of(result) -> dict:
    assert result.is_error is True
    return json.loads(result.content[0].text)["error"]


async def test_policy_denial_wins_over_allow(tmp_path):
    carl = server(tmp_path, "policy:\n  blocked_tools: [stop_run]\n  deny_kinds: [run.start]\n",
                  allow=("run.stop", "start_training"))
    assert carl.allow == {"run.stop", "run.start"}
    async with Client(carl.server) as client:
        blocked = error_of(await client.call_tool("stop_run", {"run": "whatever"}))
        assert blocked["code"] == "carl.permission" and "blocked" in blocked["message"]
        denied = error_of(await client.call_tool("start_training", {"max_steps": 1}))
        assert denied["code"] == "carl.permission" and "run.start" in denied["message"]
    p = [b["payload"] for b in Ledger(CarlHome.from_env()).blocks(action="mcp.tool_call")]
    assert [(x["tool"], x["ok"], x["error"], x["session"]) for x in p] == [
        ("stop_run", False, "carl.permission", "test-session"), ("start_training", False, "carl.permission",
                                                                 "test-session")]


async def test_policy_can_require_approval_for_a_read_only_tool(tmp_path):
    policy = "policy:\n  tools_need_approval: [list_runs]\n"
    async with Client(server(tmp_path, policy).server) as client:
        err = error_of(await client.call_tool("list_runs", {}))
        assert err["code"] == "carl.approval.required" and err["approval_needed"] == "run.list"
        ok = await client.call_tool("show_config", {})  # other reads are untouched
        assert ok.is_error is False
    async with Client(server(tmp_path, policy, allow=("list_runs",)).server) as client:
        listed = await client.call_tool("list_runs", {})
        assert listed.is_error is False and listed.structured_content == {"runs": [], "total": 0}


async def test_unknown_tool_and_config_resource_with_a_broken_carl_yaml(tmp_path):
    carl = server(tmp_path, "grpo:\n  max_steps: -3\n")
    async with Client(carl.server) as client:
        err = error_of(await client.call_tool("rm_rf", {}))
        assert err["code"] == "carl.validation" and "unknown tool" in err["message"]
        doc = json.loads((await client.read_resource("carl://config")).contents[0].text)
        assert doc["path"].endswith("carl.yaml") and doc["error"]["code"] == "carl.config"
        assert "grpo.max_steps" in json.dumps(doc["error"])
        runs = json.loads((await client.read_resource("carl://runs")).contents[0].text)
        assert runs == {"runs": [], "total": 0}


def test_allow_and_http_parsing():
    registry = build_registry()
    assert parse_allow(["run.stop,start_training", "remote.submit"], registry) == {
        "run.stop", "run.start", "remote.submit"}
    with pytest.raises(ValidationError) as e:
        parse_allow(["everything"], registry)
    assert "run.stop" in e.value.hint
    assert parse_http("8765") == ("127.0.0.1", 8765)
    assert parse_http("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_http("[::1]:0") == ("::1", 0)
    for bad in ("http", "1:2:x", "70000", ":"):
        with pytest.raises(ValidationError):
            parse_http(bad)
    with pytest.raises(resources.ResourceNotFound):
        resources.read("carl://nothing", server_ctx())


def server_ctx():
    from pathlib import Path

    from engine.chat.tools import ToolContext

    return ToolContext(home=CarlHome.from_env(), cwd=Path.cwd())


@pytest.mark.parametrize("argv, needle", [(["mcp", "--allow", "everything"], "--allow everything"),
                                          (["mcp", "--http", "port"], "--http port")])
def test_batch_verb_usage_errors(argv, needle, capsys):
    assert batch_main(argv) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["code"] == "carl.validation" and needle in err["message"]


def test_batch_help_does_not_import_the_sdk():
    code = ("import sys, contextlib, io\nfrom carl_tui.batch import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['mcp', '--help'])\n    except SystemExit: pass\n"
            "print(sorted(m for m in ('mcp', 'engine.mcpserver.server', 'uvicorn') if m in sys.modules))\n"
            "print('--allow' in out.getvalue() and '--http' in out.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # handshake era: elicitation request; 2026-07-28: input_required
async def test_ask_puts_effects_to_the_user_by_elicitation(tmp_path, mode):
    """`--ask`: an effect --allow does not cover becomes an approval form on the client; the answer decides the
    call and is itself a ledger block. Without the client capability it is a plain refusal."""
    import mcp.types as types

    from engine.runs import RunStore

    home = CarlHome.from_env()
    project = tmp_path / "project"
    project.mkdir()
    store = RunStore(home)
    run_id = store.create("project: {name: demo}\n", {})  # a created (never started) run: stop is a no-op
    asked: list[types.ElicitRequestParams] = []
    answers = iter([{"approve": False}, {"approve": True}])

    async def on_elicit(context, params):
        asked.append(params)
        return types.ElicitResult(action="accept", content=next(answers))

    carl = CarlMCP(ServerOptions(home=home, cwd=project, ask=True, session="ask-session"))
    async with Client(carl.server, mode=mode, elicitation_callback=on_elicit) as client:
        assert (client.protocol_version == "2026-07-28") is (mode == "auto")
        no = error_of(await client.call_tool("stop_run", {"run": run_id}))
        assert no["code"] == "carl.approval.required"
        yes = await client.call_tool("stop_run", {"run": run_id})
        assert yes.is_error is False
        assert yes.structured_content == {"run_id": run_id, "status": "created", "stopped": False}
        assert (await client.call_tool("list_runs", {})).is_error is False  # reads never ask
    assert len(asked) == 2 and "stop_run (run.stop)" in asked[0].message and run_id in asked[0].message
    assert asked[0].requested_schema["required"] == ["approve"]
    led = Ledger(home)
    assert [(b["payload"]["approved"], b["payload"]["response"]) for b in led.blocks(action="mcp.approval")] == [
        (False, "accept"), (True, "accept")]
    assert [b["payload"]["approved"] for b in led.blocks(action="mcp.tool_call")] == [False, True, None]

    async with Client(carl.server, mode=mode) as client:  # no elicitation capability: refused, nothing asked
        assert error_of(await client.call_tool("stop_run", {"run": run_id}))["code"] == "carl.approval.required"
    assert len(led.blocks(action="mcp.approval")) == 2
