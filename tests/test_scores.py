"""The intrinsic scores (engine.probe) against values computed by hand on fixed logits, on both backends.

Row p = [0.1, 0.2, 0.3, 0.4] (logits log p + any constant), V = 4:
  H = -Σ p log p = 1.2798542258336676 nats, Phi = 1 - H / log 4 = 0.07679...
  self-certainty KL(U ‖ P) = -log 4 - ¼ Σ log p = 0.12177727428716856 nats
    (= logsumexp(z) - mean(z) - log V, the formula of Kang, Zhao & Song 2025 / Intuitor minus its constant)
  DeepConf token confidence, k = 2: -(log 0.4 + log 0.3) / 2 = 1.0601317681000455
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.jsonable import to_jsonable
from engine.probe import CoherenceProbe, lowest_group_confidence, sequence_scores, token_scores

P = np.array([0.1, 0.2, 0.3, 0.4])
H = 1.2798542258336676
KL = 0.12177727428716856
CONF2 = 1.0601317681000455


def _row(shift: float = 0.0) -> np.ndarray:
    return (np.log(P) + shift).astype(np.float64)


def test_hand_values():  # the constants above, from their definitions
    assert -(P * np.log(P)).sum() == pytest.approx(H, abs=1e-15)
    assert -math.log(4) - np.log(P).mean() == pytest.approx(KL, abs=1e-15)
    assert -(math.log(0.4) + math.log(0.3)) / 2 == pytest.approx(CONF2, abs=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-tensor"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_token_scores_fixed_logits(backend, dtype):
    x = np.stack([_row(), _row(5.0), np.zeros(4)]).astype(dtype)  # the shift changes nothing; uniform last
    tol = 1e-6 if dtype == "float32" else 1e-12
    tokens = np.array([3, 0, 2])
    inp = torch.from_numpy(x) if backend == "torch-tensor" else x
    r = token_scores(inp, tokens, backend="torch" if backend == "torch" else "auto", topk=2)
    r = {k: (v.double().numpy() if torch.is_tensor(v) and k != "token_ids" else np.asarray(v)) for k, v in r.items()}
    assert r["entropy"] == pytest.approx([H, H, math.log(4)], abs=tol)
    assert r["phi"] == pytest.approx([1 - H / math.log(4)] * 2 + [0.0], abs=tol)
    assert r["self_certainty"] == pytest.approx([KL, KL, 0.0], abs=tol)
    assert r["confidence"] == pytest.approx([CONF2, CONF2, math.log(4)], abs=tol)
    assert r["selected_prob"] == pytest.approx([0.4, 0.1, 0.25], abs=tol)
    assert list(r["token_ids"]) == [3, 0, 2]


def test_self_certainty_is_the_published_formula_on_random_logits():
    """logsumexp(z) - mean(z) - log V (Intuitor's self_certainty_from_logits less its constant log V), float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 50)) * 4
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    want = lse - x.mean(-1) - math.log(50)
    got = token_scores(x, topk=20)
    assert got["self_certainty"] == pytest.approx(want, abs=1e-10)
    logp = x - lse[..., None]
    top = -np.sort(logp, axis=-1)[..., -20:].mean(-1)
    assert got["confidence"] == pytest.approx(top, abs=1e-10)
    tt = token_scores(torch.from_numpy(x), topk=20)
    assert tt["self_certainty"].numpy() == pytest.approx(want, abs=1e-10)
    assert tt["confidence"].numpy() == pytest.approx(top, abs=1e-10)


def test_topk_capped_at_v_and_negative_rejected():
    r = token_scores(_row()[None, :], topk=100)
    assert r["confidence"][0] == pytest.approx(-np.log(P).mean(), abs=1e-12)
    from engine.errors import ValidationError

    with pytest.raises(ValidationError):
        token_scores(_row()[None, :], topk=-1)


def test_masked_entry_makes_self_certainty_infinite_and_json_null():
    x = np.array([[0.0, 0.0, -np.inf, 0.0]])
    r = token_scores(x, allow_masked=True, topk=2)
    assert r["self_certainty"][0] == math.inf  # KL(U ‖ P) with a zero of P
    assert r["entropy"][0] == pytest.approx(math.log(3))
    snap = CoherenceProbe(allow_masked=True).measure(x)
    assert json.loads(json.dumps(to_jsonable(snap.to_dict())))["self_certainty"] is None


def test_lowest_group_confidence():
    c = [1.0, 2.0, 3.0, 4.0, 5.0, 0.5]
    assert lowest_group_confidence(c, 2) == pytest.approx(min(1.5, 2.5, 3.5, 4.5, 2.75))  # window means
    assert lowest_group_confidence(c, 3) == pytest.approx(2.0)  # (1+2+3)/3; the last (4+5+.5)/3 = 3.17
    assert lowest_group_confidence(c, 6) == pytest.approx(np.mean(c))
    assert lowest_group_confidence(c, 2048) == pytest.approx(np.mean(c))  # shorter than the window: one group
    assert lowest_group_confidence([], 4) is None


def test_sequence_scores_by_hand():
    s = sequence_scores(phi=[0.2, 0.4], entropy=[1.0, 3.0], selected_prob=[0.5, 0.25], self_certainty=[0.1, 0.3],
                        confidence=[2.0, 1.0], window=1)
    assert s == pytest.approx({"phi": 0.3, "self_certainty": 0.2, "neg_entropy": -2.0,
                               "logprob": (math.log(0.5) + math.log(0.25)) / 2, "group_confidence": 1.0})
    empty = sequence_scores([], [], [], [], [])
    assert empty == {"phi": None, "self_certainty": None, "neg_entropy": None, "logprob": None,
                     "group_confidence": None}


def test_probe_reports_scores_per_sequence_then_averaged():
    a = np.stack([_row(), _row()])  # sequence 0: KL per token = KL
    b = np.zeros((2, 4))  # sequence 1: uniform, KL = 0
    snap = CoherenceProbe(topk=2, window=1).measure(np.stack([a, b]))
    d = snap.to_dict()
    assert d["self_certainty"] == pytest.approx(KL / 2)
    assert [q["scores"]["self_certainty"] for q in d["per_sequence"]] == pytest.approx([KL, 0.0])
    assert d["neg_entropy"] == pytest.approx(-(H + math.log(4)) / 2)
    assert d["group_confidence"] == pytest.approx((CONF2 + math.log(4)) / 2)
    assert d["logprob_mean"] == pytest.approx((math.log(0.4) + math.log(0.25)) / 2)  # argmax tokens
    assert d["deepconf"] == {"topk": 2, "window": 1}
    single = CoherenceProbe(topk=2).measure(a).to_dict()
    assert single["self_certainty"] == pytest.approx(KL)


# ----------------------------------------------------------------------------------------------------------
# Selections (engine.bestof) on candidates whose per-token field is fixed by hand
# ----------------------------------------------------------------------------------------------------------

from engine.bestof import Candidate, borda_votes, choose, deepconf_kept, score_candidates, task_extractor  # noqa: E402


def _cands():
    """Five one-token candidates: (answer, self-certainty, DeepConf confidence, phi, p[token])."""
    rows = [("A", 3.0, 1.0, 0.9, 0.2), ("B", 2.0, 5.0, 0.1, 0.9), ("B", 1.0, 4.0, 0.5, 0.5),
            ("C", 0.5, 8.0, 0.3, 0.3), (None, 4.0, 9.0, 0.2, 0.1)]
    c = [Candidate(i, f"text {a}", [phi], [q], [1.0], [sc], [cf], answer=a)
         for i, (a, sc, cf, phi, q) in enumerate(rows)]
    score_candidates(c)
    return c


def test_score_selections_by_hand():
    c = _cands()
    assert [x.scores["self_certainty"] for x in c] == [3.0, 2.0, 1.0, 0.5, 4.0]
    assert [x.scores["group_confidence"] for x in c] == [1.0, 5.0, 4.0, 8.0, 9.0]
    assert choose(c, "self_certainty") == 4
    assert choose(c, "phi") == 0
    assert choose(c, "logprob") == 1  # log 0.9
    assert [x.scores["votes"] for x in c] == [1.0, 2.0, 2.0, 1.0, 0.0]


def test_borda_by_hand():
    """Ranks by self-certainty: #4 (r1), #0 (r2), #1 (r3), #2 (r4), #3 (r5); #4 has no answer, so no vote.
    p = 1: A 4, B 3+2 = 5, C 1 → B.  p = 3: A 64, B 27+8 = 35, C 1 → A.  p = 0.5: A 2, B √3+√2 → B.
    p = 0: A 1, B 2, C 1 (majority) → B."""
    c = _cands()
    assert borda_votes(c, 1.0) == {"A": 4.0, "B": 5.0, "C": 1.0}
    assert borda_votes(c, 3.0) == {"A": 64.0, "B": 35.0, "C": 1.0}
    assert borda_votes(c, 0.5) == pytest.approx({"A": 2.0, "B": math.sqrt(3) + math.sqrt(2), "C": 1.0})
    assert choose(c, "borda", p=1.0) == 1  # the first candidate answering B
    assert choose(c, "borda", p=3.0) == 0
    assert choose(c, "borda") == 1  # p = 0.5
    assert choose(c, "borda", p=0.0) == choose(c, "majority") == 1


def test_deepconf_by_hand():
    """Candidates with an answer: confidences [1, 5, 4, 8] (#4 has none and is dropped).
    eta 0.1: 90th percentile (linear) of [1, 4, 5, 8] = 5 + 0.7·3 = 7.1 → keep #3 → C.
    eta 0.5: median 4.5 → keep #1 (5), #3 (8) → B 5 < C 8 → C.
    eta 0.9: 10th percentile 1 + 0.3·3 = 1.9 → keep #1, #2, #3 → B 9 > C 8 → B, its most confident: #1."""
    c = _cands()
    assert deepconf_kept(c, 0.1) == [3] and choose(c, "deepconf") == 3
    assert deepconf_kept(c, 0.5) == [1, 3] and choose(c, "deepconf", eta=0.5) == 3
    assert deepconf_kept(c, 0.9) == [1, 2, 3] and choose(c, "deepconf", eta=0.9) == 1
    assert deepconf_kept(c, 1.0) == [0, 1, 2, 3]


def test_no_answers_and_empty_candidates():
    c = [Candidate(0, "", [], [], [], [], [], answer=None), Candidate(1, "x", [0.5], [0.5], [1.0], [0.2], [1.5],
                                                                      answer=None)]
    score_candidates(c)
    assert c[0].scores["self_certainty"] is None and c[0].scores["carl"] is None
    assert choose(c, "self_certainty") == 1 and choose(c, "logprob") == 1  # a missing score ranks last
    assert choose(c, "borda") == 1 and choose(c, "deepconf") == 1 and choose(c, "majority") == 0


def test_task_extractor_votes_on_the_extracted_answer():
    ex = task_extractor("last_number")
    c = [Candidate(i, t, [0.5], [0.5], [1.0], [s], [1.0], answer=ex(t))
         for i, (t, s) in enumerate([("so 12", 3.0), ("it is 19", 2.0), ("19!", 1.0), ("none", 0.0)])]
    score_candidates(c)
    assert [x.answer for x in c] == ["12", "19", "19", None]
    assert choose(c, "majority") == 1 and choose(c, "borda", p=1.0) == 1  # 19: 3+2 votes, 12: 4
    assert task_extractor("auto") is None
    from engine.errors import ConfigError

    with pytest.raises(ConfigError):
        task_extractor("vibes")
