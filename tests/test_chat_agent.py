"""The agent loop and the batch verbs against a real HTTP server on loopback speaking the Messages API,
driven by the real ``anthropic`` client (pointed at it by ANTHROPIC_BASE_URL)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from carl_tui.batch import main as batch_main
from engine.chat.agent import build_agent
from engine.chat.sessions import SessionStore
from engine.home import carl_home
from tests.loopback_anthropic import LoopbackAnthropic, text, tool_use

KEY = "sk-ant-loopback-test-0000000000"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory (fast retries) as cwd, the key in the environment."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "carl.yaml").write_text("project:\n  name: loop-proj\nchat:\n  retry_base_s: 0.001\n")
    monkeypatch.chdir(proj)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return proj


@pytest.fixture
def server(monkeypatch):
    servers = []

    def start(script):
        srv = LoopbackAnthropic(script).start()
        servers.append(srv)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        return srv

    yield start
    for s in servers:
        s.stop()


def ask(capsys, *argv):
    code = batch_main(["ask", *argv])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return code, lines, err


def test_plain_answer(project, server, capsys):
    srv = server([text("Hello from the loopback.", {"input_tokens": 1200, "output_tokens": 80})])
    code, (out,), _ = ask(capsys, "hi there")
    assert code == 0
    assert out["reply"] == "Hello from the loopback." and out["tool_calls"] == []
    assert out["usage"] == {"input_tokens": 1200, "output_tokens": 80, "cache_read_input_tokens": 0,
                            "cache_creation_input_tokens": 0}
    assert out["cost_usd"] == pytest.approx((1200 * 3 + 80 * 15) / 1e6)
    req = srv.requests[0]
    assert req["path"] == "/v1/messages" and KEY in (req["headers"].get("x-api-key", "") + req["headers"].get("authorization", ""))
    assert req["body"]["stream"] is True and req["body"]["model"] == "claude-sonnet-4-6"
    assert req["body"]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]
    assert {t["name"] for t in req["body"]["tools"]} >= {"show_config", "validate_config"}
    store = SessionStore(carl_home().sessions_db)
    assert store.info(out["session"]).n_messages == 2


def test_tool_round_trip_with_a_real_engine_tool(project, server, capsys):
    srv = server([tool_use("show_config", {}, preface="Checking the config."),
                  text("Your project is loop-proj.")])
    code, (out,), err = ask(capsys, "what is my project called?")
    assert code == 0, err
    assert out["tool_calls"] == [{"name": "show_config", "input": {}, "ok": True}]
    assert out["reply"] == "Checking the config.\n\nYour project is loop-proj."
    second = srv.requests[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"][1] == {"type": "tool_use", "id": "toolu_01", "name": "show_config", "input": {}}
    result = second[2]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_01" and "is_error" not in result
    assert json.loads(result["content"])["config"]["project"]["name"] == "loop-proj"
    assert out["requests"] == 2
    from engine.ledger import Ledger

    (block,) = Ledger(carl_home()).blocks(action="chat.tool_call")
    assert block["payload"]["tool"] == "show_config" and block["payload"]["session"] == out["session"]


def test_tool_error_goes_back_as_is_error_and_the_loop_goes_on(project, server, capsys):
    srv = server([tool_use("validate_config", {"path": "/etc/shadow"}, tid="t1"),
                  tool_use("run_shell", {"cmd": "rm -rf /"}, tid="t2"),
                  text("Neither worked.")])
    code, (out,), _ = ask(capsys, "try things")
    assert code == 0 and out["reply"] == "Neither worked."
    assert [(c["name"], c["ok"]) for c in out["tool_calls"]] == [("validate_config", False), ("run_shell", False)]
    r1 = srv.requests[1]["body"]["messages"][-1]["content"][0]
    r2 = srv.requests[2]["body"]["messages"][-1]["content"][0]
    assert r1["is_error"] is True and "carl.validation" in r1["content"]
    assert r2["is_error"] is True and "unknown tool" in r2["content"]


def test_overloaded_then_success_is_retried(project, server, capsys):
    srv = server([{"status": 529}, {"status": 500}, {"stream_error": "overloaded_error", "after_text": "Par"},
                  text("Recovered.")])
    code, lines, err = ask(capsys, "hello", "--stream")
    assert code == 0, err
    final = lines[-1]
    assert final["type"] == "final" and final["reply"] == "Recovered." and final["retries"] == 3
    retries = [line for line in lines if line["type"] == "retry"]
    assert [r["status"] for r in retries] == [529, 500, 200]
    assert retries[-1]["discard_text"] is True  # the partial "Par" is to be dropped by the reader
    assert [r["delay_s"] for r in retries] == [0.001, 0.002, 0.004]
    assert len(srv.requests) == 4


def test_retries_exhausted_is_a_network_error(project, server, capsys):
    server([{"status": 529}] * 3)
    code = batch_main(["ask", "hello", "--set", "chat.max_retries=2"])
    out, err = capsys.readouterr()
    assert code == 4 and out == ""
    assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == "carl.network"


def test_no_key_is_a_credential_error_and_nothing_is_stored(project, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    code = batch_main(["ask", "hello"])
    out, err = capsys.readouterr()
    e = json.loads(err)["error"]
    assert code == 3 and out == "" and e["code"] == "carl.credential" and "ANTHROPIC_API_KEY" in e["hint"]
    assert SessionStore(carl_home().sessions_db).list() == []


def test_api_key_flag_and_rejected_key(project, server, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    srv = server([text("ok"), {"status": 401}])
    code, (out,), _ = ask(capsys, "hello", "--api-key", "sk-ant-flag-key-123456789")
    assert code == 0 and "sk-ant-flag-key-123456789" in str(srv.requests[0]["headers"])
    code = batch_main(["ask", "hello", "--api-key", "sk-ant-flag-key-123456789"])
    _, err = capsys.readouterr()
    assert code == 3 and json.loads(err)["error"]["code"] == "carl.credential"
    assert "sk-ant-flag" not in err


def test_stream_lines(project, server, capsys):
    server([tool_use("show_config", {}, preface="Looking."), text("A fairly long answer, streamed in pieces.")])
    code, lines, _ = ask(capsys, "stream please", "--stream")
    assert code == 0
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "session" and kinds[-1] == "final"
    assert kinds.index("tool_use") < kinds.index("tool_result") < len(kinds) - 1
    deltas = "".join(line["text"] for line in lines if line["type"] == "text")
    assert deltas == "Looking.A fairly long answer, streamed in pieces."
    assert sum(1 for k in kinds if k == "text") > 3  # really streamed
    assert sum(1 for k in kinds if k == "usage") == 2


def test_cost_accounting_to_the_cent_over_requests_and_sessions(project, server, capsys):
    u1 = {"input_tokens": 250_000, "output_tokens": 12_000, "cache_read_input_tokens": 400_000,
          "cache_creation_input_tokens": 30_000}
    u2 = {"input_tokens": 90_000, "output_tokens": 3_000, "cache_read_input_tokens": 100_000,
          "cache_creation_input_tokens": 0}
    server([tool_use("show_config", {}, usage=u1), text("done", u2)])
    code, (out,), _ = ask(capsys, "cost?")
    # sonnet 4.6: 3 / 15 / 0.30 / 3.75 USD per MTok
    expect = (340_000 * 3 + 15_000 * 15 + 500_000 * 0.30 + 30_000 * 3.75) / 1e6
    assert expect == pytest.approx(1.5075)
    assert out["cost_usd"] == pytest.approx(expect, abs=1e-9) and round(out["cost_usd"], 2) == 1.51
    assert out["usage"] == {"input_tokens": 340_000, "output_tokens": 15_000, "cache_read_input_tokens": 500_000,
                            "cache_creation_input_tokens": 30_000}
    batch_main(["chat", "sessions"])
    (listed,) = json.loads(capsys.readouterr()[0])["sessions"]
    assert listed["cost_usd"] == pytest.approx(expect) and listed["usage"] == out["usage"]


def test_session_cap_stops_the_loop(project, server, capsys):
    (project / "carl.yaml").write_text("chat:\n  session_cap_usd: 0.01\n  retry_base_s: 0.001\n")
    big = {"input_tokens": 4000, "output_tokens": 100}  # 0.0135 USD
    srv = server([tool_use("show_config", {}, usage=big), text("never sent")])
    code = batch_main(["ask", "spend"])
    out, err = capsys.readouterr()
    e = json.loads(err)["error"]
    assert code == 5 and e["code"] == "carl.budget" and out == ""
    assert len(srv.requests) == 1  # the tool result was stored, the second request never made
    sid = e["context"]["session"]
    msgs = SessionStore(carl_home().sessions_db).messages(sid)
    assert msgs[-1]["content"][0]["is_error"] is True and "spend cap" in msgs[-1]["content"][0]["content"]
    code = batch_main(["ask", "more", "--session", sid])
    assert code == 5 and len(srv.requests) == 1
    capsys.readouterr()


def test_step_cap(project, server, capsys):
    (project / "carl.yaml").write_text("chat:\n  step_cap: 2\n")
    srv = server([tool_use("show_config", {}, tid="a"), tool_use("show_config", {}, tid="b"), text("unused")])
    code, (out,), _ = ask(capsys, "loop forever")
    assert code == 0 and out["stop_reason"] == "step_cap" and out["requests"] == 2 and len(srv.requests) == 2
    assert len(out["tool_calls"]) == 2 and "step cap" in out["reply"]


def test_resume_show_export_delete(project, server, capsys, tmp_path):
    srv = server([text("First answer."), text("Second answer.")])
    _, (one,), _ = ask(capsys, "first question")
    _, (two,), _ = ask(capsys, "follow-up", "--session", one["session"][:5])
    assert two["session"] == one["session"]
    msgs = srv.requests[1]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"][0]["text"] == "First answer." and msgs[2]["content"][0]["text"] == "follow-up"

    assert batch_main(["chat", "sessions", "show", one["session"]]) == 0
    shown = json.loads(capsys.readouterr()[0])
    assert shown["n_messages"] == 4 and shown["title"] == "first question"
    assert batch_main(["chat", "sessions", "export", one["session"], "--out", str(tmp_path / "s.md")]) == 0
    capsys.readouterr()
    md = (tmp_path / "s.md").read_text()
    assert "## You" in md and "Second answer." in md
    assert batch_main(["chat", "sessions", "delete", one["session"]]) == 0
    assert json.loads(capsys.readouterr()[0]) == {"deleted": one["session"]}
    assert batch_main(["chat", "sessions", "show", one["session"]]) == 2
    assert json.loads(capsys.readouterr()[1])["error"]["code"] == "carl.chat.session_not_found"


def test_cancel_mid_stream_keeps_the_partial_reply(project, server):
    srv = server([text("This reply is long enough to arrive in many small pieces over the stream.")])
    cancel = threading.Event()
    agent = build_agent(home=carl_home(), cwd=project)
    seen = []

    def on_event(e):
        if e["type"] == "text":
            seen.append(e["text"])
            cancel.set()

    res = agent.ask("talk", on_event=on_event, cancel=cancel)
    assert res.stop_reason == "cancelled" and res.reply == seen[0] and len(srv.requests) == 1
    assert SessionStore(carl_home().sessions_db).messages(res.session)[-1] == {
        "role": "assistant", "content": [{"type": "text", "text": seen[0]}]}
