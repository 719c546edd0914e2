"""The agent demo (engine/envs/demo.py, preset agent-sql-cpu): its task split, its transcripts scored by the real
SQL environment, and the preset run end to end through ``carl --batch`` — a quick build (few warm-start steps,
cached apart), two GRPO steps with TRL's tool loop, before/after eval with the three agent numbers and the
per-turn Phi in the frames. The numbers the full demo reaches are in docs/agents.md (bench/agent_demo.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.envs import demo

ROOT = Path(__file__).resolve().parent.parent


def test_split_keeps_heldout_and_dev_questions_out_of_training():
    train, dev, held = demo.combos()
    assert len(held) == demo.HELDOUT_N and len(dev) == demo.DEV_N
    assert not (set(train) & set(held)) and not (set(train) & set(dev)) and not (set(dev) & set(held))
    assert not {k for _, k in held + dev} & set(demo.WARM_KS)
    questions = lambda rows: {r["prompt"][0]["content"] for r in rows}  # noqa: E731
    assert not questions(demo.train_rows()) & questions(demo.heldout_rows())
    assert not questions(demo.warm_rows()) & questions(demo.heldout_rows())
    assert demo.heldout_rows() == demo.heldout_rows()  # seeded: the same held-out tasks in every run


def test_transcripts_answer_their_tasks_in_the_sql_environment():
    from engine.envs.rewards import sql_result
    from engine.envs.sql import SqlEnvironment

    rows = demo.warm_rows()[:4] + demo.heldout_rows()[:4]
    envs, completions = [], []
    for row in rows:
        _, reply = demo.transcript(row)
        env = SqlEnvironment()
        env.reset(**row)
        env.execute_query(reply[0]["tool_calls"][0]["function"]["arguments"]["query"])
        envs.append(env)
        completions.append(reply)
    assert sql_result([r["prompt"] for r in rows], completions, environments=envs) == [1.0] * len(rows)
    wrong = SqlEnvironment()
    wrong.reset(**rows[0])
    wrong.execute_query("SELECT COUNT(*) + 1000 FROM t")
    assert sql_result([rows[0]["prompt"]], [completions[0]], environments=[wrong]) == [0.0]


@pytest.mark.slow
def test_preset_resolves_and_runs_end_to_end(tmp_path, monkeypatch, capsys):
    # the verbs run in this process (carl_tui.batch.main, what `carl --batch` runs); `train` spawns the worker
    # as its own process, as it does for a user
    from carl_tui.batch import main

    env = {"CARL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
           "CARL_AGENT_WARM_STEPS": "5", "TRL_EXPERIMENTAL_SILENCE": "1", "CARL_LEDGER_PASSPHRASE": "test"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)

    def carl(*args):
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, out, err)

    r = carl("project", "init", "--preset", "agent-sql-cpu")
    assert r.returncode == 0, r.stderr
    sets = ["grpo.max_steps=2", "grpo.batch_size=4", "grpo.num_generations=2", "eval.n_samples=4",
            "tracking.trackio=false"]
    flags = [x for s in sets for x in ("--set", s)]
    r = carl("train", "--dry-run", *flags)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["model"] == "builtin:agent-sql" and plan["dataset"] == "builtin:sql-tasks"
    assert plan["environment"]["kind"] == "sql" and plan["task_metric"] == "sql_result"
    assert plan["grpo"]["max_tool_calling_iterations"] == 1
    assert 0 < plan["example_prompt_tokens"] < 128  # the compressed tokenizer, built in memory for the preview
    r = carl("train", *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    done = [x for x in lines if x.get("type") == "done"]
    assert done and done[0]["status"] == "completed", lines[-3:]
    run_dir = Path(env["CARL_HOME"]) / "runs" / done[0]["run_id"]
    assert (Path(env["CARL_HOME"]) / "cache" / f"agent-sql-v{demo.VERSION}-w5" / "carl_agent.json").is_file()
    meta = json.loads((run_dir / "meta.json").read_text())
    for phase in ("before", "after"):
        ev = meta["eval"][phase]
        assert ev["task_metric_name"] == "sql_result" and ev["n"] == 4
        for k in ("task_completion", "tool_format", "tool_calls_per_task"):
            assert k in ev
    frames = [json.loads(x) for x in (run_dir / "frames.jsonl").read_text().splitlines()]
    assert [f["step"] for f in frames] == [1, 2]
    for f in frames:
        assert "agent/task_completion" in f["extra"] and "agent/tool_calls_per_task" in f["extra"]
        if f["extra"]["agent/tool_calls_per_task"] > 0 and "agent/generated_fraction" in f["extra"]:
            assert 0.0 <= f["extra"]["agent/phi_turn_1"] <= 1.0  # per-turn Phi of the first assistant turn

    # The run's own final/ (a Qwen2 config beside the digit-splitting tokenizer) loads the tokenizer it was
    # trained with, so eval --run scores the model on the text it learnt (engine/hf_load.py).
    from engine.hf_load import load_tokenizer

    probe = "SELECT COUNT(*) FROM t WHERE x > 37"
    cached = Path(env["CARL_HOME"]) / "cache" / f"agent-sql-v{demo.VERSION}-w5" / "tokenizer"
    assert load_tokenizer(run_dir / "final")(probe)["input_ids"] == load_tokenizer(cached)(probe)["input_ids"]
    r = carl("eval", "--run", done[0]["run_id"], "--n", "4", "--threshold", "0")
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: the gate's verdict (a 5-step warm start may collapse)
    verdict = json.loads(r.stdout)
    assert verdict["pass"] is (r.returncode == 0)
    for k in ("task_metric", "task_completion", "tool_format", "tool_calls_per_task"):
        a, b = verdict["metrics"][k], meta["eval"]["after"][k]  # the same greedy rollouts the worker scored
        nan = lambda v: v is None or v != v  # noqa: E731 — no tool call at all: no format rate (NaN; JSON null)
        assert a == b or (nan(a) and nan(b)), (k, a, b)
