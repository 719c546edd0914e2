"""The observe screen opens what the new readers read (pilot, no snapshot: the screen is newcomer's; this checks
the engine feeds it): a TRL console log, a trainer_state.json with bare Infinity, a W&B offline run and a public
MLflow store — each shows all its frames and a summary of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine.home import CarlHome
from screens.context import WorkbenchContext
from screens.observe import ObserveScreen

DATA = Path(__file__).parent / "data"
CASES = {
    "console": (DATA / "trl_grpo_console" / "train.log", 8),
    "trainer_state": (next((DATA / "trl_grpo_nan").glob("checkpoint-*/trainer_state.json")), 6),
    "wandb": (DATA / "trl_grpo_wandb", 8),
    "mlflow": (DATA / "real" / "mlflow_llm_self_training" / "mlruns", 1),
}


@pytest.mark.anyio
@pytest.mark.parametrize("reader", sorted(CASES))
async def test_observe_screen_opens_each_reader(tmp_path, reader):
    path, n = CASES[reader]
    ctx = WorkbenchContext(home=CarlHome(tmp_path / "home"), cwd=tmp_path, screen_args={"file": str(path)},
                           clock=lambda: 1_700_000_000.0)
    app = CarlApp(ctx=ctx, screen="observe")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, ObserveScreen)
        for _ in range(3000):
            if len(screen.frames) >= n and not screen.loading and screen.summary_current:
                break
            await pilot.pause(0.02)
        assert len(screen.frames) == n
        assert screen.summary["n_frames"] == n
        if reader == "trainer_state":
            assert screen.summary["health"]["status"] == "bad"  # nonfinite_reward
