"""carl's MCP server end to end with the SDK's own client: `carl --batch mcp` spawned over stdio and over
streamable HTTP on loopback, against real runs written with engine.runs / engine.frames and the real ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from engine.chat.tools import build_registry
from engine.config import load_config
from engine.frames import Frame, FrameWriter
from engine.home import CarlHome
from engine.ledger import Ledger
from engine.observe import open_source, summarize
from engine.runs import RunStore, update_meta
from tests._signals import default_sigint
from tests.conftest import REPO

pytestmark = pytest.mark.anyio
N_FRAMES = 30


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def home() -> CarlHome:
    return CarlHome.from_env()  # conftest points CARL_HOME at this test's tmp dir


@pytest.fixture
def project(tmp_path) -> Path:
    d = tmp_path / "project"  # no carl.yaml: the tiny demo config is in force
    d.mkdir()
    return d


def _env(home: CarlHome) -> dict[str, str]:
    return {"CARL_HOME": str(home.root), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _params(home: CarlHome, cwd: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "carl_tui", "--batch", "mcp", *extra],
                                 env=_env(home), cwd=str(cwd))


def make_run(home: CarlHome, project: Path, *, n: int = N_FRAMES) -> str:
    """A finished run the way the trainer leaves one: RunStore.create, frames via FrameWriter, meta updated."""
    cfg, _ = load_config(None, cwd=project)
    store = RunStore(home)
    run_id = store.create(cfg.to_yaml(), {"max_steps": n})
    d = store.run_dir(run_id)
    t0 = time.time() - n
    with FrameWriter(d / "frames.jsonl") as w:
        for step in range(1, n + 1):
            phi = 0.05 + 0.30 * step / n  # rises through SIGMA = 3/16
            w.write(Frame(step=step, phi=phi, entropy=2.5 - 4 * phi, reward_mean=0.2 + phi, task_reward=0.2 + phi,
                          carl_reward=phi, gate="A" if step <= n // 2 else "B", loss=1.0 / step, lr=1e-5,
                          timestamp=t0 + step))
    update_meta(d, status="completed", started_at=t0, ended_at=t0 + n, last_step=n)
    return run_id


def make_running_run(home: CarlHome, project: Path) -> tuple[str, subprocess.Popen]:
    """A run whose 'worker' is a live process (a sleeper standing in for the trainer), status running."""
    run_id = make_run(home, project, n=5)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    update_meta(RunStore(home).run_dir(run_id), status="running", pid=proc.pid, heartbeat=time.time(),
                started_at=time.time(), ended_at=None)
    return run_id, proc


def tool_blocks(home: CarlHome, tool: str | None = None) -> list[dict]:
    return [b for b in Ledger(home).blocks(action="mcp.tool_call") if tool is None or b["payload"]["tool"] == tool]


def body(result) -> dict:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return json.loads(result.content[0].text)


# ------------------------------------------------------------------------------------------------ stdio
async def test_stdio_tools_resources_and_refusal(home, project):
    """Legacy handshake (what Claude Code / Desktop speak today): tools = the chat registry, read-only calls on a
    real run, resources, and an effectful call refused with the approval it needs — each call a ledger block."""
    run_id = make_run(home, project)
    running_id, sleeper = make_running_run(home, project)
    registry = build_registry()
    try:
        async with Client(_params(home, project), mode="legacy", read_timeout_seconds=120) as client:
            assert client.server_info.name == "carl"
            # -- tools: the same names, descriptions and input schemas as the chat agent's
            tools = (await client.list_tools()).tools
            assert [t.name for t in tools] == registry.names()
            for t in tools:
                spec = registry.get(t.name)
                assert t.input_schema == spec.input_schema(), t.name
                assert t.description == spec.description
                assert t.annotations.read_only_hint is (not spec.effectful)
            assert {t.name for t in tools if not t.annotations.read_only_hint} >= {"start_training", "stop_run"}
            # remote jobs can be watched, not only submitted: status and logs are read-only tools
            assert {t.name for t in tools if t.annotations.read_only_hint} >= {"list_jobs", "job_status", "job_logs"}

            # -- read-only tools on the real run: the same summary engine.observe computes here
            src = open_source(run=run_id, home=home)
            frames, skipped = src.load()
            expected = json.loads(json.dumps(summarize(frames, source=src.label, run=run_id, skipped=skipped)))
            observed = await client.call_tool("observe_run", {"run": run_id})
            assert observed.is_error is False
            assert body(observed) == expected == observed.structured_content
            assert expected["n_frames"] == N_FRAMES and expected["last_step"] == N_FRAMES
            shown = body(await client.call_tool("show_run", {"run": run_id}))
            assert shown["run_id"] == run_id and shown["status"] == "completed" and shown["last_step"] == N_FRAMES
            listed = body(await client.call_tool("list_runs", {"limit": 5}))
            assert {r["run_id"] for r in listed["runs"]} == {run_id, running_id}
            # invalid input is a tool error the model can read, not a protocol failure
            bad = await client.call_tool("list_runs", {"limit": 0})
            assert bad.is_error and body(bad)["error"]["code"] == "carl.validation"

            # -- resources
            uris = [r.uri for r in (await client.list_resources()).resources]
            assert uris[:3] == ["carl://runs", "carl://config", "carl://ledger/tail"]
            assert f"carl://runs/{run_id}" in uris and f"carl://runs/{running_id}" in uris
            templates = (await client.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["carl://runs/{run_id}"]
            read = await client.read_resource(f"carl://runs/{run_id}")
            assert read.contents[0].mime_type == "application/json"
            run_doc = json.loads(read.contents[0].text)
            assert run_doc["run"]["run_id"] == run_id and run_doc["summary"] == expected
            assert [f["step"] for f in run_doc["recent_frames"]] == list(range(N_FRAMES - 19, N_FRAMES + 1))
            assert run_doc["recent_frames"][-1]["phi"] == pytest.approx(frames[-1].phi)
            config = json.loads((await client.read_resource("carl://config")).contents[0].text)
            assert config["source"] == "built-in tiny demo"
            assert config["config"] == load_config(None, cwd=project)[0].model_dump(mode="json")
            with pytest.raises(MCPError) as missing:
                await client.read_resource("carl://runs/no-such-run")
            assert "no-such-run" in missing.value.message

            # -- an effectful tool without --allow: refused, naming the approval; nothing happens to the run
            refused = await client.call_tool("stop_run", {"run": running_id})
            assert refused.is_error is True
            err = body(refused)["error"]
            assert err["code"] == "carl.approval.required" and err["approval_needed"] == "run.stop"
            assert "--allow run.stop" in err["hint"]
            assert sleeper.poll() is None and not (RunStore(home).run_dir(running_id) / "stop.request").exists()

            # -- the ledger tail resource shows the calls just made
            tail = json.loads((await client.read_resource("carl://ledger/tail")).contents[0].text)
            assert tail["blocks"][-1]["action"] == "mcp.tool_call"
            assert tail["blocks"][-1]["payload"]["tool"] == "stop_run"
    finally:
        sleeper.kill()
        sleeper.wait()

    # every tool call is one block, in order, with the surface, the outcome and the approval
    blocks = tool_blocks(home)
    assert [b["payload"]["tool"] for b in blocks] == ["observe_run", "show_run", "list_runs", "list_runs", "stop_run"]
    assert [b["payload"]["ok"] for b in blocks] == [True, True, True, False, False]
    stop = blocks[-1]["payload"]
    assert stop["action"] == "run.stop" and stop["effectful"] is True and stop["approved"] is False
    assert stop["error"] == "carl.approval.required" and stop["session"].startswith("mcp-")
    assert not Ledger(home).blocks(action="mcp.serve")  # no approvals were granted: no grant block
    assert Ledger(home).verify().ok


async def test_stdio_allow_runs_the_effect_and_records_it(home, project):
    """`--allow run.stop`: stop_run is done (stop requested, worker signalled) and its ledger block says approved;
    an action not allowed (run.start) is still refused."""
    running_id, sleeper = make_running_run(home, project)
    try:
        async with Client(_params(home, project, "--allow", "run.stop"), read_timeout_seconds=120) as client:
            done = await client.call_tool("stop_run", {"run": running_id})
            assert done.is_error is False, done.content
            assert body(done) == {"run_id": running_id, "status": "running", "stopped": False}
            assert sleeper.wait(timeout=30) == -signal.SIGTERM  # the graceful-stop signal reached the worker
            assert (RunStore(home).run_dir(running_id) / "stop.request").is_file()

            other = await client.call_tool("start_training", {"preset": "tiny-cpu", "max_steps": 1})
            assert other.is_error and body(other)["error"]["approval_needed"] == "run.start"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()
    assert RunStore(home).ids() == [running_id]  # nothing was started

    grant = Ledger(home).blocks(action="mcp.serve")
    assert len(grant) == 1 and grant[0]["payload"]["allow"] == ["run.stop"]
    stop = tool_blocks(home, "stop_run")
    assert len(stop) == 1
    p = stop[0]["payload"]
    assert p["ok"] is True and p["approved"] is True and p["action"] == "run.stop"
    assert p["input"] == {"run": running_id} and p["session"] == grant[0]["payload"]["session"]
    assert tool_blocks(home, "start_training")[0]["payload"]["approved"] is False
    assert Ledger(home).verify().ok


# ------------------------------------------------------------------------------------------------ HTTP
async def test_streamable_http_on_loopback(home, project):
    run_id = make_run(home, project)
    proc = subprocess.Popen([sys.executable, "-m", "carl_tui", "--batch", "mcp", "--http", "0"], cwd=project,
                            env={**os.environ, **_env(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)  # SIGINT works in a background suite too
    try:
        with anyio.fail_after(120):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
        ready = json.loads(line)
        assert ready["transport"] == "http" and ready["allow"] == []
        assert ready["url"].startswith("http://127.0.0.1:") and ready["url"].endswith("/mcp")
        async with Client(ready["url"], read_timeout_seconds=120) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == build_registry().names()
            shown = await client.call_tool("show_run", {"run": run_id})
            assert shown.is_error is False and body(shown)["last_step"] == N_FRAMES
            doc = json.loads((await client.read_resource(f"carl://runs/{run_id}")).contents[0].text)
            assert doc["summary"]["n_frames"] == N_FRAMES
            refused = await client.call_tool("stop_run", {"run": run_id})
            assert refused.is_error and body(refused)["error"]["code"] == "carl.approval.required"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 130, err  # interrupted: the contract's exit code
    assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == "carl.interrupted"
    assert [b["payload"]["tool"] for b in tool_blocks(home)] == ["show_run", "stop_run"]
