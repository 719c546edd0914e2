"""Best-of-N: sample N candidates, score each, keep one (issue 16; the scores as published: issue 27).

Every candidate's per-token field comes from the probe's kernel (:func:`engine.probe.token_scores`) on the raw
logits of the step that produced each token (temperature 1), and its sequence scores from
:func:`engine.probe.sequence_scores` — each computed once, each under its own name. Selections (``--select``):

* ``self_certainty`` — the highest mean KL(U ‖ P) (Kang, Zhao & Song 2025, "Scalable Best-of-N Selection for Large
  Language Models via Self-Certainty");
* ``borda`` — Kang et al.'s Borda voting: candidates ranked by self-certainty, rank r (1 = best) gives its
  extracted answer (N − r + 1)^p votes (``p``, default 0.5 as in their code), the answer with most votes wins;
  p = 0 is majority voting;
* ``deepconf`` — DeepConf offline (Fu, Wang, Tian & Zhao 2025, "Deep Think with Confidence"): keep the traces whose
  lowest group confidence is at or above the (1 − η) percentile (``eta``: 0.1 = DeepConf-low, 0.9 = DeepConf-high),
  then vote their answers weighted by that confidence;
* ``phi`` — the highest mean Phi = 1 − H/log V (normalised entropy; the same ranking as ``neg_entropy``);
* ``carl`` — the highest CARL reward of the candidate's field;
* ``logprob`` — the highest mean log-probability of the sampled tokens;
* ``majority`` — the most frequent extracted answer (exactly ``borda`` with p = 0);
* ``random`` — one drawn uniformly (seeded).

Answers are the task's own extraction (``extract``: a callable text → answer or None, e.g.
``engine.trainer.task_rewards.extract_answer`` with the task's ``extract``); the default is the text with its
whitespace collapsed. A candidate whose answer is None casts no vote. A voting selection returns the earliest
candidate with the winning answer (``deepconf``: the most confident one among the kept); ties between answers go
to the answer seen first; ties between scores to the earliest candidate; a missing score (empty candidate)
ranks last.

This module never imports engine.infer (the infer verb imports it): a loaded model is duck-typed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

SELECTIONS = ("logprob", "majority", "random", "phi", "carl", "self_certainty", "borda", "deepconf")
"""In the try panel's cycle order (``s``): the older five first, so their order is unchanged."""
DEFAULT_SELECT = "logprob"  # the evidence: docs/coherence.md, best-of-N table
BORDA_P = 0.5
"""Kang et al.'s default power in their Borda code (``--power 0.5``)."""
DEEPCONF_ETA = 0.1
"""DeepConf-low: keep the top 10 % of traces by lowest group confidence."""

Extract = Callable[[str], "str | None"]


def task_extractor(how: str = "auto") -> Extract | None:
    """The task's own answer extraction (engine.trainer.task_rewards.extract_answer with the task's ``extract``:
    auto | gsm8k | boxed | last_number | answer_tag) as a callable; None for ``auto`` (the whole text)."""
    if how == "auto":
        return None
    from engine.trainer.task_rewards import extract_answer

    extract_answer("", how)  # an unknown name raises carl.config here, before any sampling
    return lambda text: extract_answer(text, how)


def normalise_answer(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Candidate:
    index: int
    text: str
    phi: list[float]
    selected_prob: list[float]
    entropy: list[float] = field(default_factory=list)
    self_certainty: list[float] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    seed: int | None = None
    finish_reason: str | None = None
    answer: str | None = ""  # "" (the default): the whitespace-normalised text; None: no answer (casts no vote)
    scores: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.answer == "":
            self.answer = normalise_answer(self.text)

    def as_dict(self) -> dict[str, Any]:
        n = len(self.phi)
        return {"index": self.index, "text": self.text, "answer": self.answer, "n_tokens": n,
                "phi_mean": sum(self.phi) / n if n else None, "seed": self.seed,
                "finish_reason": self.finish_reason, "scores": dict(self.scores)}


def candidate_from_result(i: int, r: Any, *, seed: int | None = None, extract: Extract | None = None) -> Candidate:
    """A candidate from an engine.infer.InferResult (duck-typed)."""
    return Candidate(i, r.text, list(r.phi), list(r.selected_prob), list(r.entropy), list(r.self_certainty),
                     list(r.confidence), seed=seed, finish_reason=r.finish_reason,
                     answer=_answer(r.text, extract))


def _answer(text: str, extract: Extract | None) -> str | None:
    got = normalise_answer(text) if extract is None else extract(text)
    return None if got is None else normalise_answer(str(got))


def score_candidates(cands: Sequence[Candidate], weights: dict[str, float] | None = None, *,
                     window: int | None = None) -> None:
    """Fill every candidate's ``scores``: the probe's sequence scores (engine.probe.SCORES) plus ``carl`` and
    ``votes`` (how many candidates share its answer; 0 when it has none)."""
    from collections import Counter

    from engine.probe import DEEPCONF_WINDOW, carl_reward, sequence_scores

    votes = Counter(c.answer for c in cands if c.answer is not None)
    for c in cands:
        n = len(c.phi)
        ent = c.entropy if len(c.entropy) == n else [math.nan] * n
        sc = sequence_scores(c.phi, ent, c.selected_prob, c.self_certainty if len(c.self_certainty) == n else None,
                             c.confidence if len(c.confidence) == n else None,
                             window=window or DEEPCONF_WINDOW)
        c.scores = {**sc, "carl": float(carl_reward(list(c.phi), list(c.selected_prob), weights=weights)["carl"])
                    if n else None, "votes": float(votes[c.answer]) if c.answer is not None else 0.0}


def _key(v: float | None) -> float:
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _argmax(vals: Sequence[float | None]) -> int:
    best = 0
    for i in range(1, len(vals)):
        if _key(vals[i]) > _key(vals[best]):
            best = i
    return best


def borda_votes(cands: Sequence[Candidate], p: float = BORDA_P, by: str = "self_certainty") -> dict[str, float]:
    """Kang et al.'s Borda count: rank candidates by ``by`` (1 = best; ties keep candidate order), rank r gives
    (N − r + 1)^p votes to its answer. Returns answer → votes, in order of first appearance."""
    n = len(cands)
    order = sorted(range(n), key=lambda i: _key(cands[i].scores.get(by)), reverse=True)  # stable
    weight = {i: float(n - r) ** p for r, i in enumerate(order)}  # rank r+1 → (N − (r+1) + 1)^p
    out: dict[str, float] = {}
    for i, c in enumerate(cands):
        if c.answer is not None:
            out[c.answer] = out.get(c.answer, 0.0) + weight[i]
    return out


def deepconf_kept(cands: Sequence[Candidate], eta: float = DEEPCONF_ETA) -> list[int]:
    """DeepConf's filter: indices of the candidates with an answer whose lowest group confidence is at or above
    the (1 − eta)·100 percentile (numpy's linear interpolation) of those candidates' confidences."""
    import numpy as np

    valid = [i for i, c in enumerate(cands) if c.answer is not None and cands[i].scores.get("group_confidence")
             is not None]
    if not valid:
        return []
    conf = [float(cands[i].scores["group_confidence"]) for i in valid]
    thr = float(np.percentile(conf, (1.0 - eta) * 100.0))
    return [i for i, c in zip(valid, conf) if c >= thr]


def _vote_winner(tally: dict[str, float]) -> str | None:
    best = None
    for a, v in tally.items():  # insertion order = first appearance: ties go to the earlier answer
        if best is None or v > tally[best]:
            best = a
    return best


def choose(cands: Sequence[Candidate], select: str, *, seed: int | None = None, p: float = BORDA_P,
           eta: float = DEEPCONF_ETA) -> int:
    """Index (into ``cands``) of the selected candidate; scores must be filled (:func:`score_candidates`)."""
    if select not in SELECTIONS:
        from engine.errors import ValidationError

        raise ValidationError(f"unknown selection {select!r}", hint=f"Use one of {', '.join(SELECTIONS)}.",
                              context={"select": select})
    if not cands:
        raise ValueError("no candidates")
    if select == "random":
        return random.Random(seed).randrange(len(cands))
    if select in ("borda", "majority"):
        tally = borda_votes(cands, p if select == "borda" else 0.0)
        win = _vote_winner(tally)
        if win is None:  # no candidate has an answer: the best-ranked one
            return _argmax([c.scores.get("self_certainty") for c in cands]) if select == "borda" else 0
        return next(i for i, c in enumerate(cands) if c.answer == win)
    if select == "deepconf":
        kept = deepconf_kept(cands, eta)
        if not kept:  # no answer anywhere: the most confident trace
            return _argmax([c.scores.get("group_confidence") for c in cands])
        tally: dict[str, float] = {}
        for i in kept:
            tally[cands[i].answer] = tally.get(cands[i].answer, 0.0) + float(cands[i].scores["group_confidence"])
        win = _vote_winner(tally)
        among = [i for i in kept if cands[i].answer == win]
        return among[_argmax([cands[i].scores["group_confidence"] for i in among])]
    return _argmax([c.scores.get(select) for c in cands])


def generate_candidates(lm, prompt: str, n: int, select: str, sampling, *, weights: dict[str, float] | None = None,
                        fmt: Any = None, cancel: Any = None, progress: Any = None, extract: Extract | None = None,
                        p: float = BORDA_P, eta: float = DEEPCONF_ETA, window: int | None = None):
    """Best-of-N on a loaded model (engine.infer.LoadedModel), one candidate after another: candidate ``i`` is
    the single generation with seed ``sampling.seed + i`` (so ``infer --seed S`` reproduces any of them).
    ``progress(i, result)`` after each candidate; a set ``cancel`` stops between two candidates (the ones done
    are scored and one of them chosen). Returns (results, candidates, chosen index); results are InferResults."""
    s = sampling
    results, cands = [], []
    for i in range(n):
        if cancel is not None and cancel.is_set():
            break
        si = dataclasses.replace(s, seed=None if s.seed is None else s.seed + i)
        r = lm.generate(prompt, si, fmt=fmt, weights=weights)
        results.append(r)
        cands.append(candidate_from_result(i, r, seed=si.seed, extract=extract))
        if progress is not None:
            progress(i, r)
    if not cands:
        return results, cands, None
    score_candidates(cands, weights, window=window)
    return results, cands, choose(cands, select, seed=s.seed, p=p, eta=eta)


def sample_batch(model, tok, prompts: Sequence[str], n: int, max_new_tokens: int, seed: int, *,
                 temperature: float = 1.0, fmt: Any = None, budget_mb: float | None = None
                 ) -> list[list[dict[str, Any]]]:
    """N samples per prompt, batched ``generate`` calls (left-padded), with the field of each sampled token read
    on the raw logits of its step by the probe's kernel: ``[P][N]`` dicts of text and per-token ``phi``,
    ``entropy``, ``selected_prob``, ``self_certainty``, ``confidence`` (up to and including the first stop).

    The prompts go in chunks whose ``prompts × N × max_new_tokens`` step logits fit the logits budget
    (``budget_mb``; None: the device default, engine.memory) — never all P·N·T·V at once; one prompt over the
    budget on its own is a ``carl.resource.oom`` with the budget to lower if the device runs out."""
    import torch

    from engine.memory import budget_mb as resolve_budget, device_of, oom_guard, positions_per_chunk, vocab_size
    from engine.models.stops import cut_at_stop, stop_ids
    from engine.probe import DEEPCONF_TOPK, token_scores
    from engine.prompts import RAW, encode_many

    torch.manual_seed(seed)
    # the prompts rendered as training renders them (engine.prompts; ``fmt`` None: raw), left-padded
    ids = encode_many(list(prompts), tok, fmt or RAW)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = stop_ids(model, tok)
    device = next(model.parameters()).device
    budget = resolve_budget(budget_mb, device_of(model))
    per_chunk = max(1, positions_per_chunk(budget, vocab_size(model)) // max(1, n * max_new_tokens))
    rows: list[dict[str, Any]] = []
    for lo in range(0, len(ids), per_chunk):
        part = ids[lo:lo + per_chunk]
        w = max(len(x) for x in part)
        enc = {"input_ids": torch.tensor([[pad] * (w - len(x)) + x for x in part], device=device),
               "attention_mask": torch.tensor([[0] * (w - len(x)) + [1] * len(x) for x in part], device=device)}
        with torch.no_grad(), oom_guard("best-of sampling", budget, prompts=len(part), n=n):
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, num_return_sequences=n, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=pad, eos_token_id=stops)
            seqs = out.sequences[:, w:]
            f = token_scores(torch.stack(out.logits, dim=1).float(), seqs.clamp(min=0), allow_masked=True,
                             topk=DEEPCONF_TOPK)
            del out
        for r in range(seqs.shape[0]):
            k = len(cut_at_stop(seqs[r].tolist(), stops)[0])
            rows.append({"text": tok.decode(seqs[r, :k].tolist(), skip_special_tokens=True),
                         **{name: f[name][r, :k].double().tolist() for name in
                            ("phi", "entropy", "selected_prob", "self_certainty", "confidence")}})
    return [rows[i * n:(i + 1) * n] for i in range(len(prompts))]


def candidates_of(samples: Sequence[dict[str, Any]], extract: Extract | None = None) -> list[Candidate]:
    """Candidates from one prompt's :func:`sample_batch` rows."""
    return [Candidate(i, s["text"], s["phi"], s["selected_prob"], s["entropy"], s["self_certainty"],
                      s["confidence"], answer=_answer(s["text"], extract)) for i, s in enumerate(samples)]


def best_of_texts(model, tok, prompts: Sequence[str], n: int, select: str, max_new_tokens: int, seed: int = 0,
                  weights: dict[str, float] | None = None, *, extract: Extract | None = None, p: float = BORDA_P,
                  eta: float = DEEPCONF_ETA, window: int | None = None, fmt: Any = None) -> list[str]:
    """The selected completion per prompt (the eval verb's ``--best-of``; ``fmt``: the run's prompt format)."""
    batch = sample_batch(model, tok, prompts, n, max_new_tokens, seed, fmt=fmt)
    chosen = []
    for i, samples in enumerate(batch):
        cands = candidates_of(samples, extract)
        score_candidates(cands, weights, window=window)
        chosen.append(cands[choose(cands, select, seed=seed * 100003 + i, p=p, eta=eta)].text)
    return chosen
