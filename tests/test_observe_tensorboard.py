"""TensorBoard event directories as an observe source: the committed events of a real TRL GRPOTrainer run
(report_to="tensorboard", made by tests/data/make_tb_events.py) and a live directory written by torch's
SummaryWriter while the source follows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ValidationError
from engine.observe import file_source, parse_source_spec, summarize
from engine.observe.tensorboard import TensorBoardSource
from tests.conftest import REPO

TB_DIR = Path(__file__).parent / "data" / "trl_grpo_tb"


def test_real_trl_tensorboard_events():
    src = file_source(TB_DIR)
    assert isinstance(src, TensorBoardSource) and src.kind == "tensorboard"
    frames, skipped = src.load()
    assert skipped == 0 and [f.step for f in frames] == [1, 2, 3, 4, 5, 6]  # max_steps=6, logging_steps=1
    assert {"train/reward", "train/kl", "train/frac_reward_zero_std", "train/grad_norm"} <= set(src.tags)
    for f in frames[:6]:
        # TRL logs reward as the sum of the reward functions' means (weights 1): the events agree (float32)
        assert f.reward_mean == pytest.approx(f.rewards["has_seven"] + f.rewards["short"], abs=1e-5)
        assert 0.0 <= f.frac_reward_zero_std <= 1.0 and 0.0 <= f.clipped_ratio <= 1.0
        assert f.kl is not None and f.kl >= 0 and f.entropy > 0 and f.lr is not None
        assert f.extra["grad_norm"] >= 0 and "clip_ratio/region_mean" in f.extra
        assert f.completion_length is not None and f.timestamp is not None
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)
    s = summarize(frames, source=src.label, run=src.run)
    assert {"frac_reward_zero_std", "kl", "clipped_ratio", "grad_norm"} <= set(s["metrics"])
    assert parse_source_spec(f"tb:{TB_DIR}").run == src.run
    one = next(TB_DIR.glob("events.out.tfevents.*"))
    assert isinstance(file_source(one), TensorBoardSource) and len(file_source(one).load()[0]) == 6


def test_no_event_files_is_a_validation_error(tmp_path):
    with pytest.raises(ValidationError, match="no TensorBoard event files"):
        TensorBoardSource(tmp_path)


def test_follows_a_growing_event_dir_and_picks_the_newest_run(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    old = SummaryWriter(str(tmp_path / "runs" / "a-old"))
    old.add_scalar("train/loss", 1.0, 1)
    old.close()
    w = SummaryWriter(str(tmp_path / "runs" / "b-new"), flush_secs=3600)
    for step in (1, 2):
        w.add_scalar("train/reward", 0.1 * step, step)
        w.add_scalar("train/grad_norm", 2.0 / step, step)
    w.flush()
    src = file_source(tmp_path / "runs")
    assert isinstance(src, TensorBoardSource) and src.run == "b-new"
    frames, _ = src.load()
    assert [(f.step, f.reward_mean) for f in frames] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
    assert src.poll() == ([], 0, False)
    w.add_scalar("train/reward", 0.3, 3)
    w.add_scalar("train/frac_reward_zero_std", 0.5, 3)
    w.flush()
    new, skipped, reset = src.poll()
    assert [f.step for f in new] == [3] and new[0].frac_reward_zero_std == 0.5 and not reset
    w.close()


def test_batch_observe_reads_tensorboard(tmp_path):
    r = subprocess.run([sys.executable, "-m", "carl_tui.cli", "--batch", "observe", "--file", str(TB_DIR)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_frames"] == 6 and out["kind"] == "tensorboard" and out["last_step"] == 6
    assert {"frac_reward_zero_std", "grad_norm", "kl"} <= set(out["metrics"])
