"""Chat engine parts without the API: config validation, pricing, the SQLite session store, the tool registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chat.config import DEFAULT_MODEL, ChatConfig, chat_config
from engine.chat.pricing import Usage, cost_usd, price_for
from engine.chat.sessions import SessionNotFound, SessionStore
from engine.chat.tools import TOOL_SPECS, ToolContext, ToolSpec, build_registry, NoInput
from engine.config import load_config
from engine.errors import ConfigError, ValidationError
from engine.home import carl_home


# ------------------------------------------------------------------------------------------------ config
def test_chat_config_defaults_and_field_paths():
    cfg = chat_config(None)
    assert cfg.model == DEFAULT_MODEL and cfg.step_cap >= 1 and cfg.session_cap_usd > 0
    assert DEFAULT_MODEL in cfg.price_table()
    with pytest.raises(ConfigError) as e:
        chat_config({"step_cap": 0})
    assert "chat.step_cap" in e.value.message
    with pytest.raises(ConfigError) as e:
        chat_config({"prices": {"my-model": {"input": 1, "output": 2, "cache_read": -1, "cache_write": 1}}})
    assert e.value.context["errors"][0]["field"] == "chat.prices.my-model.cache_read"
    with pytest.raises(ConfigError) as e:
        chat_config({"modle": "x"})
    assert e.value.context["errors"][0]["field"] == "chat.modle"


def test_chat_config_from_carl_yaml(tmp_path):
    (tmp_path / "carl.yaml").write_text("chat:\n  model: my-model\n  prices:\n    my-model: {input: 2, output: 4, "
                                        "cache_read: 0.2, cache_write: 2.5}\n")
    cfg, _ = load_config(cwd=tmp_path)
    ccfg = chat_config(cfg)
    assert ccfg.model == "my-model"
    assert price_for("my-model", ccfg.price_table()).output == 4
    assert price_for("claude-haiku-4-5", ccfg.price_table()).input == 1.0  # defaults kept


# ------------------------------------------------------------------------------------------------ pricing
def test_cost_formula_to_the_cent_and_beyond():
    table = ChatConfig().price_table()
    u = Usage(input_tokens=123_456, output_tokens=7_890, cache_read_input_tokens=50_000,
              cache_creation_input_tokens=20_000)
    # 123456·3 + 7890·15 + 50000·0.30 + 20000·3.75 = 578718 micro-dollars
    assert cost_usd(u, price_for("claude-sonnet-4-6", table)) == pytest.approx(0.578718, abs=1e-9)
    # a dated id prices as its family; haiku 4.5: 1 / 5 / 0.10 / 1.25
    assert cost_usd(u, price_for("claude-haiku-4-5-20251001", table)) == pytest.approx(
        (123_456 * 1 + 7_890 * 5 + 50_000 * 0.10 + 20_000 * 1.25) / 1e6)
    with pytest.raises(ConfigError) as e:
        price_for("gpt-9", table)
    assert "chat.prices.gpt-9" in e.value.hint
    assert (u + u).output_tokens == 15_780
    assert Usage.from_api({"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": None}).to_dict() == {
        "input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


# ------------------------------------------------------------------------------------------------ sessions
def test_session_store_round_trip_list_resolve_delete_export(tmp_path):
    t = iter(range(1000, 2000))
    store = SessionStore(tmp_path / "sessions.db", clock=lambda: float(next(t)))
    a = store.create(model="claude-sonnet-4-6", title="is run 7 collapsing?")
    b = store.create(model="claude-sonnet-4-6", title="second")
    store.add_message(a, "user", [{"type": "text", "text": "is run 7 collapsing?"}])
    store.add_message(a, "assistant", [{"type": "text", "text": "Let me check."},
                                       {"type": "tool_use", "id": "tu1", "name": "observe_run", "input": {"run": "7"}}])
    store.add_tool_call(a, tool_use_id="tu1", name="observe_run", input={"run": "7"}, ok=True,
                        result={"phase": "knowing"})
    store.add_message(a, "user", [{"type": "tool_result", "tool_use_id": "tu1", "content": '{"phase":"knowing"}'}])
    store.add_message(a, "assistant", [{"type": "text", "text": "No: it is **knowing**."}])
    store.add_usage(a, "claude-sonnet-4-6", Usage(100, 20, 5, 7), 0.0123)
    store.add_usage(a, "claude-sonnet-4-6", Usage(50, 10, 0, 0), 0.0011)

    assert store.resolve(a[:6]) == a
    info = store.info(a)
    assert info.n_messages == 4 and info.usage == Usage(150, 30, 5, 7)
    assert info.cost_usd == pytest.approx(0.0134)
    assert [s.id for s in store.list()][0] == a  # most recently updated first
    assert store.messages(a)[1]["content"][1]["name"] == "observe_run"
    assert store.tool_calls(a)[0]["result"] == {"phase": "knowing"}
    md = store.export_markdown(a)
    assert "# is run 7 collapsing?" in md and "No: it is **knowing**." in md and "tool `observe_run` (ok)" in md
    assert "$0.0134" in md

    assert store.delete(b) == b
    with pytest.raises(SessionNotFound):
        store.resolve(b)
    assert store.messages(b) == []
    with pytest.raises(ValidationError):
        store.resolve("")


# ------------------------------------------------------------------------------------------------ registry
def _ctx(tmp_path, approver=None, **kw):
    return ToolContext(home=carl_home(), cwd=tmp_path, approver=approver, **kw)


def test_registry_generated_from_specs_reports_unavailable():
    reg = build_registry()
    assert set(reg.names()) | set(reg.unavailable) == {s.name for s in TOOL_SPECS}
    assert "show_config" in reg.names() and "validate_config" in reg.names()
    for name, why in reg.unavailable.items():
        assert "not available" in why, (name, why)
    for tool in reg.anthropic_tools():
        schema = tool["input_schema"]
        assert schema["type"] == "object" and schema.get("additionalProperties") is False
        assert tool["description"]
    # a tool whose entry point does not import is skipped, not fatal
    fake = ToolSpec("nope", "x", NoInput, ("engine.no_such_module:thing",), lambda a, c, d: {})
    reg2 = build_registry((fake,))
    assert reg2.names() == [] and "engine.no_such_module:thing" in reg2.unavailable["nope"]


def test_config_tools_on_a_real_project(tmp_path):
    (tmp_path / "carl.yaml").write_text("project:\n  name: my-proj\ngrpo:\n  max_steps: 7\n")
    (tmp_path / "bad.yaml").write_text("grpo:\n  batch_size: 30\n  num_generations: 8\n")
    reg = build_registry()
    ctx = _ctx(tmp_path)
    shown = reg.call("show_config", {}, ctx)
    assert shown.ok and shown.result["config"]["project"]["name"] == "my-proj"
    assert shown.result["config"]["grpo"]["max_steps"] == 7
    ok = reg.call("validate_config", {}, ctx)
    assert ok.ok and ok.result["ok"] is True
    bad = reg.call("validate_config", {"path": "bad.yaml"}, ctx)
    assert bad.ok and bad.result["ok"] is False
    assert any(e["field"].startswith("grpo") for e in bad.result["errors"])
    # every call is a ledger block
    from engine.ledger import Ledger

    blocks = Ledger(ctx.home).blocks(action="chat.tool_call")
    assert [b["payload"]["tool"] for b in blocks] == ["show_config", "validate_config", "validate_config"]
    assert shown.ledger == "recorded"


def test_tool_errors_are_results_not_exceptions(tmp_path):
    reg = build_registry()
    ctx = _ctx(tmp_path)
    out = reg.call("validate_config", {"path": "/etc/passwd"}, ctx)  # wrong suffix: refused by the schema
    assert not out.ok and out.error["code"] == "carl.validation" and out.error["fields"][0]["field"] == "path"
    out = reg.call("validate_config", {"path": "x.yaml", "extra": 1}, ctx)
    assert not out.ok and "extra" in out.error["message"]
    out = reg.call("rm_rf", {}, ctx)
    assert not out.ok and "unknown tool" in out.error["message"]
    out = reg.call("validate_config", {"path": "missing.yaml"}, ctx)
    assert out.ok and out.result["ok"] is False and "not found" in out.result["message"]
    assert json.loads(reg.call("rm_rf", {}, ctx).content_text())["error"]["code"] == "carl.validation"


def test_effectful_tool_needs_policy_and_approval(tmp_path):
    """An effectful spec (here: one that appends a real ledger block) runs only when approved; the policy can
    deny it outright (policy.blocked_tools)."""
    from engine.ledger import Ledger, record

    def handler(args, ctx, deps):
        return {"index": record("project.change", {"note": "from chat"}, home=ctx.home)["index"]}

    spec = ToolSpec("touch_project", "append a project.change block", NoInput, ("engine.ledger:record",), handler,
                    effectful=True, ledger_action="project.change")
    reg = build_registry((spec,))
    asked = []
    refused = reg.call("touch_project", {}, _ctx(tmp_path, approver=lambda s, i, d: asked.append(d) or False))
    assert not refused.ok and refused.error["code"] == "carl.approval.required" and refused.refused
    assert asked and asked[0]["decision"] == "needs_approval"
    assert not refused.ok and refused.approved is False
    assert reg.call("touch_project", {}, _ctx(tmp_path)).error["code"] == "carl.approval.required"  # no approver
    done = reg.call("touch_project", {}, _ctx(tmp_path, approver=lambda s, i, d: True))
    assert done.ok and done.approved is True
    led = Ledger(carl_home())
    assert len(led.blocks(action="project.change")) == 1
    assert [b["payload"]["approved"] for b in led.blocks(action="chat.tool_call")] == [False, False, True]

    (tmp_path / "carl.yaml").write_text("policy:\n  blocked_tools: [touch_project]\n")
    denied = reg.call("touch_project", {}, _ctx(tmp_path, approver=lambda s, i, d: True))
    assert not denied.ok and denied.error["code"] == "carl.permission" and "policy" in denied.error["message"]
    assert len(led.blocks(action="project.change")) == 1


def test_job_tools_watch_a_remote_job_read_only(hub, tmp_path):
    """A job submitted to the loopback HF Jobs server: list_jobs, job_status and job_logs see it, need no
    approval (read-only), and each call is one chat.tool_call block; nothing is submitted or stopped by them."""
    import json as _json

    import yaml

    from engine.ledger import Ledger
    from engine.remote.jobs import submit_job

    cfg_path = tmp_path / "carl.yaml"
    cfg_path.write_text(yaml.safe_dump({"project": {"name": "remote-demo"}, "remote": {
        "retries": {"max_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.002, "timeout_s": 2.0},
        "poll_interval_s": 0.01, "setup": "", "hf": {"flavor": "a10g-large"}, "hours": 2}}), encoding="utf-8")
    from engine.config import load_config

    cfg, _ = load_config(cfg_path)
    job = submit_job(cfg, "hf", approve=True, config_path=cfg_path)
    hub.set_stage(job["remote_id"], "RUNNING")
    hub.logs[job["remote_id"]] += ["loading model", _json.dumps({"type": "frame", "step": 7, "phi": 0.3}), "x"]
    reg = build_registry()
    assert {"list_jobs", "job_status", "job_logs"} <= set(reg.names())
    ctx = _ctx(tmp_path, approver=None, config_path=cfg_path)  # no approver: any effect would be refused
    listed = reg.call("list_jobs", {}, ctx)
    assert listed.ok and [j["run_id"] for j in listed.result["jobs"]] == [job["run_id"]]
    status = reg.call("job_status", {"job": job["run_id"][:12]}, ctx)
    assert status.ok, status.error
    assert status.result["status"] == "running" and status.result["remote_id"] == job["remote_id"]
    logs = reg.call("job_logs", {"job": job["run_id"], "tail": 2}, ctx)
    assert logs.ok, logs.error
    assert logs.result["n_lines"] == 3 and logs.result["shown"] == 2 and logs.result["last_step"] == 7
    assert logs.result["lines"][-1] == "x"
    missing = reg.call("job_status", {"job": "no-such-job"}, ctx)
    assert not missing.ok and missing.error["code"] == "carl.run.not_found"
    assert len(hub.calls("POST", "/api/jobs/alice")) == 1  # only the submit above
    calls = [b["payload"]["tool"] for b in Ledger(ctx.home).iter_blocks() if b["action"] == "chat.tool_call"]
    assert calls == ["list_jobs", "job_status", "job_logs", "job_status"]
