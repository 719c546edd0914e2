"""observe's verdict on every run of the corpus (tests/data/real/SOURCES.md; docs/observe.md has the table):
public RL runs of LLMs other people published, read as they were published. A healthy run gets no open warn/bad
finding; a broken one gets the finding that names what broke."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.observe import file_source, summarize

REAL = Path(__file__).parent / "data" / "real"

# file → (status, codes that must be open, codes that must not appear open)
CORPUS = {
    "trl_dapo_vl3b_120531.console.log": ("bad", {"length_collapse", "entropy_collapse", "zero_std_rewards"}, set()),
    "trl_dapo_vl3b_120223.console.log": ("bad", {"length_collapse"}, set()),
    "trl_dapo_vl3b_181457.console.log": ("bad", {"clipped_completions"}, set()),
    "scu_tsc_qwen05b_7934f1b.console.log": ("bad", {"zero_std_rewards"}, {"kl_blowup"}),
    "scu_tsc_qwen05b_4308fd8.console.log": ("ok", set(), {"kl_blowup", "zero_std_rewards"}),
    "aaipl_grpo_ckpt500/trainer_state.json": ("bad", {"clipped_completions"}, set()),
    "chaos_economy_grpo/trainer_state.json": ("bad", {"clipped_completions"}, set()),
    "memredteam_finance_grpo_stage1.jsonl": ("ok", set(), set()),
    "unsloth_grpo_ckpt250/trainer_state.json": ("ok", set(), {"kl_blowup"}),
    "gemma3_grpo_ckpt250/trainer_state.json": ("ok", set(), set()),
    "wordle_grpo_stage2_ckpt160/trainer_state.json": ("ok", set(), {"kl_blowup"}),
    # a disagreement (docs/observe.md): expected warn, carl says ok — see DISAGREEMENTS
    "xling_openrs_rs2_ckpt50/trainer_state.json": ("ok", set(), set()),
    "selfreward_dpo_m2_ckpt100/trainer_state.json": ("ok", set(), set()),
    # a disagreement: expected bad (nothing trains), carl says ok — see DISAGREEMENTS
    "selfreward_dpo_m2v2_ckpt100/trainer_state.json": ("ok", set(), set()),
}

# file → (the verdict a person gives it, why carl cannot give it today). The CORPUS entry above holds carl's
# verdict, so the docs table stays true; when a rule learns to see it, the CORPUS entry moves to the expected one.
DISAGREEMENTS = {
    "xling_openrs_rs2_ckpt50/trainer_state.json": (
        "warn",
        "mean length 88-96 % of the 3584-token cap, but the log has no clipped_ratio/max_length: "
        "the cap is only in the repository's config",
    ),
    "selfreward_dpo_m2v2_ckpt100/trainer_state.json": (
        "bad",
        "grad_norm 0.0 and loss ln 2 on every step: no rule reads a run that never updates",
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_verdict(name):
    status, must, must_not = CORPUS[name]
    src = file_source(REAL / name)
    frames, skipped = src.load()
    out = summarize(frames, source=src.label, run=src.run, skipped=skipped)
    open_codes = {f["code"] for f in out["health"]["findings"] if "recovered_at" not in f}
    assert out["health"]["status"] == status, out["health"]
    assert must <= open_codes, out["health"]
    assert not (must_not & open_codes), out["health"]


def test_disagreements_are_corpus_runs_with_another_verdict():
    for name, (expected, why) in DISAGREEMENTS.items():
        assert name in CORPUS and why
        assert expected != CORPUS[name][0]


def test_every_corpus_file_has_provenance():
    sources = (REAL / "SOURCES.md").read_text()
    for name in CORPUS:
        assert f"`{name}`" in sources


def test_long_healthy_demo_run_has_no_collapse_finding():
    """carl's demo at lr 4e-4 for 3000 steps (`carl --batch train --set grpo.learning_rate=4e-4 --set
    grpo.max_steps=3000 --set grpo.save_steps=100000 --set tracking.trackio=false`, branch observe, 2026-12-07;
    held-out exact 0.435 → 0.820): it learns, so no collapse.onset (the detector before this round fired at step
    199 and stayed) and nothing open at the end — its dead-group stretch (task reward 0.06–0.14 for the first
    ~800 steps) has recovered."""
    import gzip
    import json

    from engine.frames import Frame

    path = Path(__file__).parent / "data" / "coherence" / "frames" / "demo-lr4e-4-3000.jsonl.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    frames = [Frame.from_dict(json.loads(x)) for x in lines if x.strip()]
    assert len(frames) == 3000
    out = summarize(frames, source=str(path), run="demo-lr4e-4-3000")
    codes = {f["code"] for f in out["health"]["findings"]}
    assert "collapse.onset" not in codes and "entropy_collapse" not in codes
    assert out["health"]["status"] == "ok"
    assert all("recovered_at" in f for f in out["health"]["findings"])
