"""carl.yaml ``environment:`` and its wiring into GRPO: TRL's tool-loop cap, the environment factory, CARL over
generated tokens only, and the agent block of the observe summary."""

from __future__ import annotations

import pytest
import torch

from engine.config import validate_dict
from engine.envs.metrics import agent_summary
from engine.envs.sql import SqlEnvironment
from engine.envs.training import apply_tool_mask, factory_for, generated_fraction
from engine.errors import ConfigError
from engine.frames import Frame
from engine.observe.analysis import summarize
from engine.trainer.grpo import grpo_args
from engine.trainer.plan import plan


def _cfg(**env):
    return validate_dict({"environment": {"kind": "sql", "max_tool_calls": 5, **env},
                          "task": {"rewards": [{"kind": "python", "function": "engine.envs.rewards:sql_result"}]}})


def test_environment_section_validates():
    cfg = _cfg(limits={"max_rows": 3})
    assert cfg.environment.kind == "sql" and cfg.environment.max_tool_calls == 5
    with pytest.raises(ConfigError) as err:
        _cfg(limits={"wall_s": 3})  # a code limit under kind sql
    assert "environment" in str(err.value) and "wall_s" in str(err.value)
    with pytest.raises(ConfigError):
        validate_dict({"environment": {"kind": "shell"}})
    assert validate_dict({}).environment is None


def test_environment_reaches_grpo_args_plan_and_factory():
    cfg = _cfg(limits={"max_rows": 3})
    assert grpo_args(cfg, "/tmp/x", "cpu")["max_tool_calling_iterations"] == 5
    assert "max_tool_calling_iterations" not in grpo_args(validate_dict({}), "/tmp/x", "cpu")
    p = plan(cfg, None)
    assert p["environment"] == {"kind": "sql", "max_tool_calls": 5, "limits": {"max_rows": 3}}
    assert p["task_metric"] == "sql_result"  # the cascade watches task completion
    env = factory_for(cfg)()
    assert isinstance(env, SqlEnvironment) and env._limits.max_rows == 3
    assert factory_for(validate_dict({})) is None


def test_carl_mask_drops_tool_result_tokens():
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    tool_mask = [[1, 0, 0, 1, 1], [1, 1, 1]]
    assert apply_tool_mask(mask, tool_mask).tolist() == [[1, 0, 0, 1, 1], [1, 1, 1, 0, 0]]
    assert apply_tool_mask(mask, None) is mask
    assert apply_tool_mask(mask, [[1]]) is mask  # a batch that does not line up is left alone
    assert generated_fraction(tool_mask) == pytest.approx(6 / 8)
    assert generated_fraction(None) is None


def test_agent_block_in_the_observe_summary():
    frames = [Frame(step=s, extra={"agent/task_completion": tc, "agent/tool_format": 1.0,
                                   "agent/tool_calls_per_task": n, "tools/call_frequency": n})
              for s, tc, n in ((1, 0.25, 2.0), (2, 0.5, 3.0), (3, 0.75, 4.0))]
    out = summarize(frames, source="test", run=None)
    assert out["agent"]["task_completion"] == {"first": 0.25, "last": 0.75, "mean": 0.5, "steps": 3}
    assert out["agent"]["tool_calls_per_task"]["last"] == 4.0
    assert set(out["agent"]) == {"task_completion", "tool_format", "tool_calls_per_task", "call_frequency"}
    assert "agent" not in summarize([Frame(step=1, phi=0.5)], source="test", run=None)
    assert agent_summary([]) is None
    turned = [Frame(step=s, extra={"agent/task_completion": 0.5, "agent/phi_turn_1": 0.8, "agent/phi_turn_2": p})
              for s, p in ((1, 0.6), (2, 0.7))]
    block = summarize(turned, source="test", run=None)["agent"]
    assert block["phi_turn_1"]["last"] == 0.8 and block["phi_turn_2"] == {"first": 0.6, "last": 0.7,
                                                                           "mean": pytest.approx(0.65), "steps": 2}


def test_phi_per_assistant_turn_over_generated_tokens():
    from engine.envs.training import phi_per_turn, turn_index

    assert turn_index([1, 1, 0, 0, 1, 1, 1, 0, 1]) == [1, 1, 0, 0, 2, 2, 2, 0, 3]
    assert turn_index([0, 1]) == [0, 1] and turn_index([]) == []
    # two rollouts, padded to 6: row 0 = turn 1 (2 tokens), a tool result (2), turn 2 (2); row 1 = one turn of
    # 3 tokens and padding (mask 0) whose Phi must not count
    phi = torch.tensor([[0.2, 0.4, 0.9, 0.9, 0.8, 1.0], [0.6, 0.6, 0.9, 0.1, 0.1, 0.1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    tool_mask = [[1, 1, 0, 0, 1, 1], [1, 1, 1]]
    masked = apply_tool_mask(mask, tool_mask)
    turns = phi_per_turn(phi, masked, tool_mask)
    assert turns == pytest.approx([(0.3 + 0.7) / 2, 0.9])  # turn 1: mean of the rollouts' means; turn 2: row 0
    assert phi_per_turn(phi, mask, None) == pytest.approx([(0.7 + 0.7) / 2])  # no tool mask: one turn each
    assert phi_per_turn(phi, torch.zeros_like(mask), tool_mask) == []
