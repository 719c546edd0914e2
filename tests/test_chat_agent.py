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


# ------------------------------------------------------------------------------------------------ real engine tools
def _make_run(phis, store=None):
    """A real run directory (RunStore.create) with a frames.jsonl written by engine.frames.FrameWriter."""
    from engine.config import Config
    from engine.frames import Frame, FrameWriter
    from engine.runs import RunStore

    store = store or RunStore(carl_home())
    run_id = store.create(Config().to_yaml(), {"preset": "tiny-cpu"})
    with FrameWriter(store.run_dir(run_id) / "frames.jsonl") as w:
        for i, phi in enumerate(phis):
            w.write(Frame(step=i + 1, phi=phi, entropy=1.0 - phi, reward_mean=0.1 + phi, task_reward=phi,
                          gate="A" if i < len(phis) // 2 else "B", loss=0.5 - phi / 2, lr=1e-4, timestamp=1.0 + i))
    return run_id


def _tool_results(srv, i):
    return srv.requests[i]["body"]["messages"][-1]["content"]


def test_observe_list_show_diff_on_real_runs(project, server, capsys):
    pytest.importorskip("engine.runs")
    from engine.observe.analysis import summarize
    from engine.observe.diff import diff_runs
    from engine.observe.sources import open_source

    rising = [0.02 + 0.5 * i / 39 for i in range(40)]
    flat = [0.05] * 40
    run_a, run_b = _make_run(rising), _make_run(flat)
    srv = server([tool_use("list_runs", {}, tid="l"), tool_use("observe_run", {"run": run_a}, tid="o"),
                  tool_use("show_run", {"run": run_b}, tid="s"),
                  tool_use("diff_runs", {"run_a": run_a, "run_b": run_b}, tid="d"),
                  text("Run A crystallized; run B is stuck guessing.")])
    code, (out,), err = ask(capsys, "is run A collapsing? compare it with B")
    assert code == 0, err
    assert [(c["name"], c["ok"]) for c in out["tool_calls"]] == [
        ("list_runs", True), ("observe_run", True), ("show_run", True), ("diff_runs", True)]
    listed = json.loads(_tool_results(srv, 1)[0]["content"])
    assert {r["run_id"] for r in listed["runs"]} == {run_a, run_b}
    observed = json.loads(_tool_results(srv, 2)[0]["content"])
    src = open_source(run=run_a, home=carl_home())
    frames, skipped = src.load()
    expect = json.loads(json.dumps(summarize(frames, source=src.label, run=src.run, skipped=skipped)))
    assert observed == expect and observed["n_frames"] == 40 and observed["phase"] is not None
    shown = json.loads(_tool_results(srv, 3)[0]["content"])
    assert shown["run_id"] == run_b and shown["last_step"] == 40
    diffed = json.loads(_tool_results(srv, 4)[0]["content"])
    fb, _ = open_source(run=run_b, home=carl_home()).load()
    assert diffed["run_a"] == run_a and diffed["run_b"] == run_b
    assert {k: v for k, v in diffed.items() if k not in ("run_a", "run_b")} == json.loads(
        json.dumps(diff_runs(frames, fb)))


def test_probe_tool_on_a_real_logits_file(project, server, capsys):
    np = pytest.importorskip("numpy")
    from engine.probe import CoherenceProbe

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 12, 50)).astype(np.float32)
    logits[:, 6:, 3] += 12.0  # the second half is confident: high phi
    np.save(project / "logits.npy", logits)
    srv = server([tool_use("probe_logits", {"logits": "logits.npy"}), text("Phi rises in the second half.")])
    code, (out,), err = ask(capsys, "probe logits.npy")
    assert code == 0, err and out["tool_calls"][0]["ok"] is True
    got = json.loads(_tool_results(srv, 1)[0]["content"])
    want = json.loads(json.dumps(CoherenceProbe().measure(logits).to_dict()))
    assert got["n_tokens"] == 24 and got["vocab_size"] == 50
    for k in ("phi_mean", "phi_std", "phi_min", "phi_max", "entropy_mean", "crystallized_fraction", "rewards"):
        assert got[k] == pytest.approx(want[k]), k
    assert got["phi"] == pytest.approx(want["phi"])


def test_effectful_tools_refused_in_batch_without_approve(project, server, capsys):
    pytest.importorskip("engine.runs")
    from engine.ledger import Ledger
    from engine.runs import RunStore

    srv = server([tool_use("start_training", {"preset": "tiny-cpu", "lora": True}, tid="st"),
                  text("I could not start it: it needs your approval.")])
    code, (out,), err = ask(capsys, "start the tiny demo with LoRA")
    assert code == 5
    assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == "carl.approval.required"
    assert out["tool_calls"] == [{"name": "start_training", "input": {"preset": "tiny-cpu", "lora": True,
                                                                     "sets": []},
                                  "ok": False, "error": "carl.approval.required"}]
    assert out["reply"] == "I could not start it: it needs your approval."
    res = _tool_results(srv, 1)[0]
    assert res["is_error"] is True and "carl.approval.required" in res["content"]
    assert RunStore(carl_home()).ids() == []  # nothing started
    (block,) = Ledger(carl_home()).blocks(action="chat.tool_call")
    assert block["payload"]["tool"] == "start_training" and block["payload"]["approved"] is False
    assert block["payload"]["error"] == "carl.approval.required"


def test_effectful_tool_with_approve_runs(project, server, capsys):
    pytest.importorskip("engine.runs")
    from engine.ledger import Ledger

    run_id = _make_run([0.1, 0.2])
    srv = server([tool_use("stop_run", {"run": run_id}), text("It was never started, nothing to stop.")])
    code, (out,), err = ask(capsys, "stop that run", "--approve")
    assert code == 0, err
    assert out["tool_calls"][0]["ok"] is True
    got = json.loads(_tool_results(srv, 1)[0]["content"])
    assert got == {"run_id": run_id, "status": "created", "stopped": False}
    (block,) = Ledger(carl_home()).blocks(action="chat.tool_call")
    assert block["payload"]["approved"] is True and block["payload"]["action"] == "run.stop"


def test_remote_submit_goes_through_the_estimate_and_policy(project, server, capsys, monkeypatch):
    """Approved, but no HF token: the engine's own credential error reaches the model as a tool error."""
    pytest.importorskip("engine.remote.jobs")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(project / "hf-home"))
    srv = server([tool_use("submit_remote_job", {"backend": "hf"}), text("No token.")])
    code, (out,), err = ask(capsys, "run it on HF", "--approve")
    assert code == 0, err
    call = out["tool_calls"][0]
    assert call["ok"] is False and call["error"] == "carl.credential"
    assert _tool_results(srv, 1)[0]["is_error"] is True
