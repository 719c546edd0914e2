"""Phase, crystallization step, health detectors and diff on synthetic trajectories with known answers."""

from __future__ import annotations

import math

import pytest

from engine.frames import Frame
from engine.observe import analysis as A
from engine.observe.diff import diff_runs


def run(n: int, **series) -> list[Frame]:
    """Frames 0..n-1; each keyword is a function step -> value (or a constant)."""
    out = []
    for s in range(n):
        kw = {k: (v(s) if callable(v) else v) for k, v in series.items()}
        out.append(Frame(step=s, **kw))
    return out


def codes(frames):
    return {f["code"]: f for f in A.health(frames)["findings"]}


def test_sigma_is_three_sixteenths_and_has_one_home():
    import ast
    from pathlib import Path

    from engine import probe
    from engine.config import Config

    assert probe.SIGMA == 3 / 16
    assert A.SIGMA is probe.SIGMA  # imported, not declared again
    assert Config().eval.phi_min == probe.SIGMA  # the eval gate's default (config stays numpy-free)
    root = Path(__file__).resolve().parent.parent
    again = []
    for path in [*root.glob("engine/**/*.py"), *root.glob("screens/**/*.py"), *root.glob("carl_tui/**/*.py")]:
        rel = str(path.relative_to(root))
        if rel == "engine/probe/constants.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = [t.id for t in (node.targets if isinstance(node, ast.Assign) else
                                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                     if isinstance(t, ast.Name)]
            if "SIGMA" in named:
                again.append(f"{rel}:{node.lineno}: SIGMA declared again")
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                    and [getattr(node.left, "value", None), getattr(node.right, "value", None)] == [3, 16]
                    and rel != "engine/config_schema.py"):  # numpy-free: the eval gate's phi_min default
                again.append(f"{rel}:{node.lineno}: 3 / 16 written out")
    assert again == []


def test_phases_on_known_trajectories():
    """Phase from change-points in the run's own Phi trajectory (engine.observe.trajectory), not from SIGMA."""
    assert A.phase([]) is None
    assert A.phase(run(30, phi=0.05)) == "guessing"
    # flat at a high level: a trained LM's Phi is above SIGMA from step 1, which says nothing
    assert A.phase(run(30, phi=0.40)) == "guessing"
    # rising away from its start, still rising
    assert A.phase(run(30, phi=lambda s: 0.01 * s)) == "crystallizing"
    # rose, then levelled off above its start
    assert A.phase(run(100, phi=lambda s: 0.35 if s >= 40 else 0.05)) == "knowing"
    # rose and fell back to where it started
    assert A.phase(run(80, phi=lambda s: 0.35 if 20 <= s < 50 else 0.05)) == "guessing"
    # fell from its start: no rise
    assert A.phase(run(60, phi=lambda s: 0.4 if s < 30 else 0.05)) == "guessing"
    # too short to know its start
    assert A.phase(run(5, phi=0.3)) == "guessing"


def test_crystallization_step_is_where_the_rise_began():
    frames = run(100, phi=lambda s: 0.35 if s >= 40 else 0.05)
    assert A.crystallization_step(frames) == 40
    # a brief spike (2 frames) is not a change-point; the later sustained rise is
    spiky = run(100, phi=lambda s: 0.5 if 20 <= s < 22 else (0.35 if s >= 60 else 0.05))
    assert A.crystallization_step(spiky) == 60
    assert A.crystallization_step(run(50, phi=0.05)) is None
    assert A.crystallization_step(run(50, phi=0.5)) is None
    # noise around a flat level: no change-point; a rise of a few noise widths is found where it starts
    import random

    rng = random.Random(0)
    noisy = [0.5 + rng.gauss(0, 0.02) for _ in range(300)]
    assert A.crystallization_step(run(300, phi=lambda s: noisy[s])) is None
    risen = run(300, phi=lambda s: noisy[s] + (0.08 if s >= 150 else 0.0))
    assert 125 <= A.crystallization_step(risen) <= 160  # where the CUSUM last left 0: close to, not exactly, 150
    # steps need not be contiguous: the answer is a step, not an index
    sparse = [Frame(step=10 * i, phi=f.phi) for i, f in enumerate(frames)]
    assert A.crystallization_step(sparse) == 400


def test_healthy_run_has_no_findings():
    frames = run(60, phi=lambda s: min(0.4, 0.01 * s), entropy=lambda s: 2.0 - 0.01 * s, loss=0.5,
                 reward_mean=lambda s: 0.01 * s, completion_length=lambda s: 100 + (s % 3), clipped_ratio=0.02,
                 frac_reward_zero_std=0.1, kl=lambda s: 0.01 + 0.001 * s)
    h = A.health(frames)
    assert h == {"status": "ok", "findings": []}


def test_no_frames_is_empty_never_ok():
    assert A.health([]) == {"status": "empty", "findings": []}
    s = A.summarize([], source="x", run=None, skipped=24)
    assert s["health"]["status"] == "empty" and s["n_frames"] == 0 and s["skipped_lines"] == 24


def test_entropy_collapse_early_is_bad_late_is_warn():
    early = codes(run(50, entropy=lambda s: 2.0 if s < 10 else 0.01))
    f = early["entropy_collapse"]
    assert f["severity"] == "bad" and f["first_step"] == 10 and f["last_step"] == 49
    late = codes(run(50, entropy=lambda s: 2.0 if s < 40 else 0.01))["entropy_collapse"]
    assert late["severity"] == "warn" and late["first_step"] == 40
    # two frames of low entropy are noise, not a collapse
    assert "entropy_collapse" not in codes(run(50, entropy=lambda s: 0.01 if s in (20, 21) else 2.0))


def test_length_hacking():
    hacked = codes(run(40, reward_mean=lambda s: 0.02 * s, completion_length=lambda s: 50 + 10 * s,
                       clipped_ratio=lambda s: min(1.0, s / 30)))
    f = hacked["length_hacking"]
    assert f["severity"] == "bad" and f["first_step"] == 20 and f["last_step"] == 39 and f["hint"]
    # reward up, length flat: fine
    assert "length_hacking" not in codes(run(40, reward_mean=lambda s: 0.02 * s,
                                             completion_length=lambda s: 100 + (s % 2)))
    # length up, reward down: not hacking
    assert "length_hacking" not in codes(run(40, reward_mean=lambda s: -0.02 * s,
                                             completion_length=lambda s: 50 + 10 * s))


def test_zero_std_and_clipped_ratios():
    z = codes(run(30, frac_reward_zero_std=lambda s: 1.0 if s >= 10 else 0.0))["zero_std_rewards"]
    # the rolling mean (window 5) reaches 0.5 at step 12 (3 of 5)
    assert z["first_step"] == 12 and z["last_step"] == 29 and z["severity"] == "bad"
    warn = codes(run(30, frac_reward_zero_std=0.6))["zero_std_rewards"]
    assert warn["severity"] == "warn" and warn["first_step"] == 0
    c = codes(run(30, clipped_ratio=0.3))["clipped_completions"]
    assert c["severity"] == "warn"
    assert codes(run(30, clipped_ratio=0.9))["clipped_completions"]["severity"] == "bad"


def test_nonfinite_loss_stalled_phi_kl_blowup():
    nan = codes(run(20, loss=lambda s: math.nan if s in (7, 9) else 1.0))["nonfinite_loss"]
    assert (nan["severity"], nan["first_step"], nan["last_step"]) == ("bad", 7, 9)
    assert codes(run(20, loss=lambda s: math.inf if s == 3 else 1.0))["nonfinite_loss"]["first_step"] == 3
    stalled = codes(run(40, phi=0.1))["stalled_phi"]
    assert (stalled["first_step"], stalled["last_step"], stalled["severity"]) == (20, 39, "warn")
    # rose, then levelled off (knowing): that is the goal, not a stall
    assert "stalled_phi" not in codes(run(40, phi=lambda s: 0.05 if s < 12 else 0.4))
    kl = codes(run(30, kl=lambda s: 0.01 if s < 20 else 0.5))["kl_blowup"]
    assert kl["first_step"] == 20 and kl["severity"] == "warn"
    assert codes(run(30, kl=lambda s: 0.01 if s < 20 else 50.0))["kl_blowup"]["severity"] == "bad"


def test_summary_fields_and_status():
    frames = run(30, phi=lambda s: 0.35 if s >= 10 else 0.05, loss=lambda s: math.nan if s == 29 else 0.3,
                 rewards=lambda s: {"acc": 0.1}, extra=lambda s: {"grad_norm": 1.0})
    out = A.summarize(frames, source="x.jsonl", run="x", skipped=2)
    assert out["n_frames"] == 30 and out["first_step"] == 0 and out["last_step"] == 29
    assert out["phi"] == {"first": 0.05, "last": 0.35, "min": 0.05, "max": 0.35,
                          "mean": pytest.approx((10 * 0.05 + 20 * 0.35) / 30)}
    assert out["phase"] == "knowing" and out["crystallization_step"] == 10
    assert out["health"]["status"] == "bad" and out["skipped_lines"] == 2
    assert out["metrics"] == ["phi", "loss", "rewards/acc", "grad_norm"]
    assert A.summarize([], source="e", run=None)["phase"] is None


def test_diff_runs_aligned_by_step():
    a = run(50, phi=lambda s: 0.35 if s >= 20 else 0.05, reward_mean=lambda s: 0.1, rewards=lambda s: {"acc": 0.2})
    b = run(60, phi=lambda s: 0.35 if s >= 10 else 0.05, reward_mean=lambda s: 0.3, rewards=lambda s: {"acc": 0.5})
    d = diff_runs(a, b)
    assert d["aligned_steps"] == 50 and d["only_a"] == 0 and d["only_b"] == 10
    assert d["crystallization_step"] == {"a": 20, "b": 10, "delta": -10}
    assert d["phi"]["mean_delta"] == pytest.approx(10 * 0.3 / 50)
    assert d["phi"]["last_delta"] == 0 and d["phi"]["max_abs_delta"] == pytest.approx(0.3)
    assert d["rewards"]["reward_mean"]["mean_delta"] == pytest.approx(0.2)
    assert d["rewards"]["rewards/acc"]["mean_delta"] == pytest.approx(0.3)
    assert d["phase"] == {"a": "knowing", "b": "knowing"}
    assert len(d["series"]) == 50 and d["series"][15] == {"step": 15, "phi_a": 0.05, "phi_b": 0.35,
                                                         "reward_a": 0.1, "reward_b": 0.3}


def test_collapse_monitor_on_trl_metrics_and_recovery():
    """Runs without distinct counts (TRL): tied groups rising, reward spread and length falling, entropy falling,
    reward flat → collapse.onset; the conditions stop holding for RECOVER frames → recovered_at."""
    from engine.observe.collapse import RECOVER, CollapseMonitor, detect_collapse

    def f(s, bad):
        return Frame(step=s, entropy=0.3 if bad else 1.0, reward_mean=0.5, frac_reward_zero_std=0.9 if bad else 0.1,
                     completion_length=20.0 if bad else 100.0, extra={"reward_std": 0.05 if bad else 0.5})

    frames = [f(s, 20 <= s < 60) for s in range(100)]
    alarm = detect_collapse(frames)
    assert alarm is not None and 20 < alarm.step < 40
    assert {"zero_std", "reward_std", "completion_length", "entropy"} <= set(alarm.evidence)
    assert alarm.recovered_at is not None and 60 <= alarm.recovered_at <= 60 + RECOVER
    still = detect_collapse([f(s, s >= 20) for s in range(100)])
    assert still is not None and still.recovered_at is None
    # a reward that rises (the run learns) is not a collapse, whatever entropy does
    learning = [Frame(step=s, entropy=1.0 if s < 20 else 0.3, reward_mean=0.01 * s, frac_reward_zero_std=0.1,
                      completion_length=100.0) for s in range(100)]
    assert detect_collapse(learning) is None
    mon = CollapseMonitor()
    fired = [a.step for a in (mon.update(x) for x in frames) if a is not None]
    assert fired == [alarm.step]  # causal: fires once, live, where the replay says


def test_kl_near_zero_start_growing_is_not_a_blowup():
    """A run that learns multiplies its KL from ~0: never a finding below the absolute level."""
    grows = codes(run(100, kl=lambda s: 0.0002 * 1.08 ** s))  # 0.0002 → 0.41
    assert "kl_blowup" not in grows
    spike = codes(run(40, kl=lambda s: 2.5 if s in (30, 31) else 0.02))["kl_blowup"]
    assert spike["first_step"] == 30 and spike["recovered_at"] == 32
    assert A.health(run(40, kl=lambda s: 2.5 if s in (30, 31) else 0.02))["status"] == "ok"  # recovered: not open


def test_solved_groups_are_not_dead_ones():
    # carl-style task reward: 95 % tied groups while the accuracy is ~1.0 — solved prompts
    solved = run(40, frac_reward_zero_std=0.95, task_reward=lambda s: min(1.0, 0.1 + 0.05 * s))
    z = codes(solved).get("zero_std_rewards")
    assert z is None or z.get("recovered_at") is not None
    dead = run(40, frac_reward_zero_std=0.95, task_reward=0.0)
    assert codes(dead)["zero_std_rewards"]["severity"] == "bad"


def test_column_replay_equals_the_live_monitor():
    """detect_collapse (column-wise) decides exactly what CollapseMonitor fed frame by frame decides: the alarm
    step, its start, its evidence and its recovery (here: collapse, recovery, a relapse, a second recovery)."""
    from engine.observe.collapse import CollapseMonitor, detect_collapse

    def f(s, bad):
        return Frame(step=s, entropy=0.3 if bad else 1.0, reward_mean=0.5, frac_reward_zero_std=0.9 if bad else 0.1,
                     completion_length=20.0 if bad else 100.0, extra={"reward_std": 0.05 if bad else 0.5})

    for frames in ([f(s, (20 <= s < 60) or (75 <= s < 85)) for s in range(120)],
                   [f(s, s >= 20) for s in range(100)], [f(s, False) for s in range(100)]):
        mon = CollapseMonitor()
        for x in frames:
            mon.update(x)
        a, b = mon.alarm, detect_collapse(frames)
        assert (a is None) == (b is None)
        if a is not None:
            assert (a.step, a.since, a.recovered_at, a.evidence) == (b.step, b.since, b.recovered_at, b.evidence)


def test_trl_signals_sampling_drift_and_tool_failures():
    frames = run(30, entropy=lambda s: 2.0 - 0.05 * s, frac_reward_zero_std=0.25,
                 extra=lambda s: {"sampling/importance_sampling_ratio/mean": 1.0 if s < 15 else 0.6,
                                  "tools/failure_frequency": 0.1 if s < 10 else 0.95, "clip_ratio/region_mean": 0.01})
    c = codes(frames)
    assert c["sampling_drift"]["severity"] == "bad" and 15 <= c["sampling_drift"]["first_step"] <= 19
    assert c["tool_failures"]["severity"] == "bad"
    sig = A.summarize(frames, source="x", run="x")["signals"]
    assert sig["entropy_share_of_start"] == pytest.approx((2.0 - 0.05 * 29) / 2.0, rel=1e-3)
    assert sig["frac_reward_zero_std"] == 0.25 and "kl" not in sig  # KL only when logged
    assert A.summarize(run(5, loss=1.0), source="x", run="x")["signals"] is None
