"""grpo.save_total_limit: a default that bounds the checkpoints a long run keeps (issue 28 §11: 282 MB by step
1360 with save_steps 20), wired into trl's GRPOConfig so the trainer deletes the oldest."""

from __future__ import annotations

from engine.config import load_config
from engine.trainer.grpo import grpo_args


def test_the_default_keeps_ten_checkpoints_and_trl_gets_it(tmp_path):
    from trl import GRPOConfig

    cfg, _ = load_config(None, [])
    assert cfg.grpo.save_total_limit == 10
    args = GRPOConfig(**grpo_args(cfg, tmp_path / "checkpoints", "cpu"))
    assert args.save_total_limit == 10 and args.save_steps == cfg.grpo.save_steps


def test_a_project_can_keep_fewer_or_all(tmp_path):
    from trl import GRPOConfig

    cfg, _ = load_config(None, ["grpo.save_total_limit=2"])
    assert GRPOConfig(**grpo_args(cfg, tmp_path / "a", "cpu")).save_total_limit == 2
    cfg, _ = load_config(None, ["grpo.save_total_limit=null"])
    assert GRPOConfig(**grpo_args(cfg, tmp_path / "b", "cpu")).save_total_limit is None
