"""A real agent GRPO run on CPU through carl's worker: a tiny Qwen2-architecture model with a tool-speaking chat
template, warm-started on an SQL transcript, trains with TRL's environment_factory (one SqlEnvironment per
rollout), the sql_result reward reading each rollout's database, TRL's tool mask reaching CARL, the agent
numbers in every frame, and eval through the agent evaluator."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

SCHEMA = "CREATE TABLE emp(id INTEGER PRIMARY KEY, name TEXT, dept TEXT);"
DATA = {"emp": [{"name": "ana", "dept": "eng"}, {"name": "bo", "dept": "eng"}, {"name": "cy", "dept": "ops"}]}
QUESTION = "How many employees are in eng?"
QUERY = "SELECT COUNT(*) FROM emp WHERE dept='eng'"


def _build_model(path):
    from engine.envs.factory import make_factory, tool_names
    from engine.envs.tiny_agent import build_model, build_tokenizer, save, transcript_ids, warm_start

    env = make_factory("sql")()
    tools = [getattr(env, n) for n in tool_names("sql")]
    prompt = [{"role": "user", "content": QUESTION}]
    call = {"type": "function", "function": {"name": "execute_query", "arguments": {"query": QUERY}}}
    reply = [{"role": "assistant", "content": "", "tool_calls": [call]}]
    text = build_tokenizer().apply_chat_template(prompt + reply, tools=tools, tokenize=False)
    tok = build_tokenizer([text] * 20, vocab_size=1024)
    ids, plen = transcript_ids(tok, prompt, reply, tools)
    assert plen < 200, plen  # the tool-schema system prompt is compressed by the trained merges
    model = build_model(tok)
    losses = warm_start(model, tok, [(prompt, reply)], tools, steps=300, batch=1, lr=3e-3,
                        stop=lambda step, loss: loss < 0.01)
    assert losses[-1] < 0.05, losses[-5:]
    return save(model, tok, path)


def test_agent_grpo_run_uses_the_sql_tool(tmp_path, monkeypatch):
    from engine.config import load_config
    from engine.runs import RunStore
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("CARL_LEDGER_PASSPHRASE", "test")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    model_dir = _build_model(tmp_path / "agent-model")
    rows = tmp_path / "tasks.jsonl"
    row = {"prompt": [{"role": "user", "content": QUESTION}], "schema": SCHEMA, "data": json.dumps(DATA),
           "answer": "2"}
    rows.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    sets = [f"model.name_or_path={model_dir}", f"model.tokenizer={model_dir / 'tokenizer'}", f"dataset.source={rows}", "dataset.eval_fraction=0.25",
            "environment.kind=sql", "environment.max_tool_calls=2",
            "grpo.max_steps=2", "grpo.batch_size=2", "grpo.num_generations=2", "grpo.max_completion_length=96",
            "grpo.learning_rate=1e-4", "cascade.mode=fixed", "cascade.fixed_step=1", "cascade.warmup_steps=0",
            "cascade.min_steps=1", "tracking.trackio=false", "eval.n_samples=2"]
    cfg_path = tmp_path / "carl.yaml"
    cfg_path.write_text("task:\n  rewards:\n    - kind: python\n      function: engine.envs.rewards:sql_result\n")
    cfg, path = load_config(cfg_path, sets)
    assert cfg.environment.kind == "sql"
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, path))
    d = store.run_dir(run_id)
    status = Worker(d).run()
    assert status == "completed", (d / "stdout.log").read_text()[-3000:] if (d / "stdout.log").exists() else d
    from engine.runs import read_json

    meta = read_json(d / "meta.json")
    for phase in ("before", "after"):  # eval runs the same tool loop, scored by the environment
        ev = meta["eval"][phase]
        assert ev["task_metric_name"] == "sql_result", ev
        assert 0.0 <= ev["task_completion"] <= 1.0 and ev["tool_calls_per_task"] >= 0.0
    frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
    assert [f["step"] for f in frames] == [1, 2]
    for f in frames:
        extra = f["extra"]
        assert extra["agent/tool_calls_per_task"] >= 1.0  # the warm-started model calls the tool in training
        assert extra["tools/call_frequency"] > 0  # TRL ran its tool loop on our environment
        assert 0.0 <= extra["agent/tool_format"] <= 1.0
        assert 0.0 <= extra["agent/task_completion"] <= 1.0
        assert f["rewards"]["sql_result"] == pytest.approx(extra["agent/task_completion"])
        assert 0.0 < extra["agent/generated_fraction"] < 1.0  # tool-result tokens were masked out of CARL
        assert 0.0 <= f["phi"] <= 1.0
    assert meta["eval"]["before"]["tool_calls_per_task"] >= 1.0  # greedy eval rollouts call the tool too
