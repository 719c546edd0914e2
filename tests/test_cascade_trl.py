"""The varied_groups sentence, checked on TRL's OWN advantage computation (GRPOTrainer._generate_and_score_completions
of the installed TRL), not on a re-implementation: CARL's part of any advantage is at most carl_cap (advantages are
in units of the group's reward std); in a group whose task rewards tie it is exactly 0. And what it is not: a
bound relative to each completion's own advantage."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cascade import AlwaysOpen, Cascade, check_bound_settings, combine_varied_groups
from engine.errors import ConfigError

pytestmark = pytest.mark.slow

G = 8
GROUPS = 48  # one TRL call scores GROUPS × G completions


@pytest.fixture(scope="module")
def trl_scorer(tmp_path_factory):
    """A real TRL GRPOTrainer on a local random-init tiny model; its reward functions return what the test feeds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from engine.trainer.data import to_dataset
    from engine.trainer.tiny import ensure_tiny, rows, split_pairs

    root = tmp_path_factory.mktemp("tiny-untrained")
    path = ensure_tiny(root, sft_steps=0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    feed: dict[str, list] = {}

    def task(prompts, completions, **kwargs):
        return feed["task"]

    def carl(prompts, completions, **kwargs):
        return feed["carl"]

    args = GRPOConfig(output_dir=str(root / "out"), per_device_train_batch_size=GROUPS * G, num_generations=G,
                      max_completion_length=1, use_cpu=True, bf16=False, report_to="none", disable_tqdm=True,
                      reward_weights=[1.0, 1.0])
    train, _ = split_pairs()
    ds = to_dataset(rows(train[:GROUPS]))
    trainer = GRPOTrainer(model=model, reward_funcs=[task, carl], args=args, train_dataset=ds,
                          processing_class=tok)
    model.train()
    inputs = [ds[i // G] for i in range(GROUPS * G)]

    def advantages(task_values: list, carl_terms: list[float]) -> np.ndarray:
        feed["task"], feed["carl"] = task_values, carl_terms
        out = trainer._generate_and_score_completions(inputs)
        return out["advantages"].detach().cpu().numpy().astype(np.float64)

    advantages.trainer = trainer
    return advantages


def _cases(rng: np.random.Generator, n: int):
    """Groups built to stress the cap: one success of 8, binary, continuous, tied, unscorable; CARL spreads from
    tiny to huge, weights from 0.01 to 5."""
    for _ in range(n):
        kind = rng.choice(["one_of_g", "binary", "continuous", "tied", "nan"])
        if kind == "one_of_g":
            t = [0.0] * G
            t[int(rng.integers(G))] = 1.0
        elif kind == "binary":
            t = list(rng.integers(0, 2, G).astype(float))
        elif kind == "continuous":
            t = list(rng.random(G))
        elif kind == "tied":
            t = [float(rng.integers(0, 2))] * G
        else:
            t = list(rng.integers(0, 2, G).astype(float))
            t[int(rng.integers(G))] = float("nan")
        spread = float(rng.choice([0.01, 0.2, 1.0, 20.0]))
        c = list(0.5 + spread * (rng.random(G) - 0.5))
        yield t, c, float(rng.choice([0.01, 1.0, 5.0]))


def test_carl_part_of_trls_advantage_is_within_the_cap_and_zero_in_tied_groups(trl_scorer):
    cap = 0.25
    rng = np.random.default_rng(20261201)
    worst = 0.0
    checked_varied = 0
    for _call in range(3):
        cases = list(_cases(rng, GROUPS))
        task = [x for t, _, _ in cases for x in t]
        terms = [x for t, c, w in cases for x in combine_varied_groups(c, t, G, w, cap)]
        adv = trl_scorer([None if x != x else x for x in task], terms)
        for g, (t, c, w) in enumerate(cases):
            sl = slice(g * G, (g + 1) * G)
            a, e = adv[sl], np.asarray(terms[sl])
            r = np.asarray(t, dtype=np.float64) + e
            if len(set(t)) == 1 or any(x != x for x in t):  # tied or unscorable: no CARL term at all
                assert np.all(e == 0.0)
                if len(set(t)) == 1:
                    assert np.all(a == 0.0)  # TRL's own advantage there is exactly 0
                continue
            # TRL's advantage is (r - mean r) / S per group; read S off TRL's output, check it is one S per group
            dev = r - r.mean()
            j = int(np.argmax(np.abs(dev)))
            s = dev[j] / a[j]
            assert s > 0 and np.allclose(a * s, dev, atol=1e-5 * max(1.0, abs(s)))
            carl_part = (e - e.mean()) / s
            worst = max(worst, float(np.abs(carl_part).max()))
            checked_varied += 1
    assert checked_varied > 60
    assert worst <= cap + 1e-5
    assert worst > 0.8 * cap  # the cases reach near the cap (the scaling targets k = cap/(1 + c·cap) ≈ 0.2)


def test_it_is_not_a_share_of_each_completions_advantage(trl_scorer):
    """In a group with one success of 8, a failure's task advantage is about -0.35: CARL (at the cap) can cancel
    ~70% of it. The docs say so; this keeps them honest."""
    t = [1.0] + [0.0] * (G - 1)
    c = [0.5, 1.0] + [0.0] * (G - 2)  # failure 1 is the one CARL likes most
    task = t * GROUPS
    terms = combine_varied_groups(c * GROUPS, task, G, 5.0, 0.25)
    adv = trl_scorer(task, terms)[:G]
    only_task = trl_scorer(task, [0.0] * len(task))[:G]
    assert only_task[1] == pytest.approx(-0.354, abs=0.01)
    share = (adv[1] - only_task[1]) / abs(only_task[1])
    assert 0.5 < share < 0.8


def test_add_turns_a_tied_groups_tiny_carl_spread_into_a_unit_advantage(trl_scorer):
    # the mechanism behind issue 9, with TRL's own normalisation: why `add` is not safe
    carl = [0.80, 0.81, 0.79, 0.80, 0.82, 0.78, 0.80, 0.81]
    c = Cascade(AlwaysOpen(), 1.0, 0, combine="add", group=G)
    c.observe(1, {})
    adv = trl_scorer([0.0] * (G * GROUPS), c.combine(carl * GROUPS, 1, [0.0] * (G * GROUPS)))
    assert float(np.abs(adv).max()) > 1.0


def test_the_trl_settings_the_bound_needs_are_checked_at_start_up(trl_scorer):
    trainer = trl_scorer.trainer
    cascade = Cascade(AlwaysOpen(), 1.0, 0, combine="varied_groups", group=G)
    check_bound_settings(trainer, cascade)  # TRL 1.16's defaults: in force
    for attr, value in (("scale_rewards", "batch"), ("multi_objective_aggregation", "normalize_then_sum"),
                        ("num_generations", 4)):
        old = getattr(trainer, attr)
        setattr(trainer, attr, value)
        try:
            with pytest.raises(ConfigError) as info:
                check_bound_settings(trainer, cascade)
            assert attr in info.value.message
        finally:
            setattr(trainer, attr, old)
    check_bound_settings(trainer, Cascade(AlwaysOpen(), combine="add", group=4))  # add promises nothing
