"""The train screen's plan line says the seed is fixed (identical config → identical numbers) and how to vary it
(issue 28 §11)."""

from __future__ import annotations

import json

import pytest

from tests import test_train_screen as trn

RUN = "20250101-120000-seed"


@pytest.mark.anyio
async def test_the_plan_line_names_the_fixed_seed_and_how_to_change_it(tmp_path):
    d = trn.make_run(tmp_path / "home", RUN, range(1, 4))
    plan = json.loads((d / "plan.json").read_text())
    plan["grpo"]["seed"] = 7
    (d / "plan.json").write_text(json.dumps(plan))
    app = trn.make_app(tmp_path, run=RUN)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await trn.settle(pilot, 3)
        line = " ".join(str(screen.query_one("#plan").render()).split())
        assert "seed 7 (fixed: same config, same numbers; --set grpo.seed=N)" in line


def test_the_real_plan_carries_the_configs_seed(tmp_path):
    from engine.config import load_config
    from engine.trainer.plan import plan

    cfg, path = load_config(None, ["grpo.seed=3"])
    assert plan(cfg, path)["grpo"]["seed"] == 3
