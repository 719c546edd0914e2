"""Best-of-N: sample N candidates, score each, keep one (issue 16).

Selections (``--select``), each a score per candidate — the highest wins, ties go to the earliest candidate:

* ``phi``      — mean Phi over the candidate's tokens (the model's own certainty: Phi = 1 − H/log V, an affine
  map of the mean entropy, so the ranking is that of self-certainty / negative entropy; Kang, Zhao & Song 2025);
* ``carl``     — the CARL reward of the candidate's field (0.5·coherence + 0.3·cloud + 0.2·discontinuity);
* ``logprob``  — mean log-probability of the sampled tokens;
* ``majority`` — how many of the N candidates give the same answer (normalised text: stripped, whitespace
  collapsed); ties broken by mean log-probability;
* ``random``   — one drawn uniformly (seeded).

Every candidate keeps its text, field summary and all five scores, so a caller can show why one was chosen.
The field of a sampled token is read on the raw logits of the step that produced it (temperature 1), exactly as
:mod:`engine.infer` does for a single generation.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

SELECTIONS = ("phi", "carl", "logprob", "majority", "random")
DEFAULT_SELECT = "logprob"  # the evidence: docs/coherence.md, best-of-N table (phi picked worst)


def normalise_answer(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Candidate:
    index: int
    text: str
    phi: list[float]
    selected_prob: list[float]
    seed: int | None = None
    finish_reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return normalise_answer(self.text)

    def as_dict(self) -> dict[str, Any]:
        n = len(self.phi)
        return {"index": self.index, "text": self.text, "answer": self.answer, "n_tokens": n,
                "phi_mean": sum(self.phi) / n if n else None, "seed": self.seed,
                "finish_reason": self.finish_reason, "scores": dict(self.scores)}


def score_candidates(cands: Sequence[Candidate], weights: dict[str, float] | None = None) -> None:
    """Fill every candidate's ``scores`` (phi, carl, logprob, majority; random is a draw, not a score)."""
    from engine.probe import carl_reward

    votes = Counter(c.answer for c in cands)
    for c in cands:
        n = len(c.phi)
        logp = [math.log(max(p, 1e-12)) for p in c.selected_prob]
        c.scores = {
            "phi": sum(c.phi) / n if n else 0.0,
            "carl": float(carl_reward(list(c.phi), list(c.selected_prob), weights=weights)["carl"]) if n else 0.0,
            "logprob": sum(logp) / n if n else -math.inf,
            "majority": float(votes[c.answer]),
        }


def choose(cands: Sequence[Candidate], select: str, *, seed: int | None = None) -> int:
    """Index (into ``cands``) of the selected candidate; scores must be filled."""
    if select not in SELECTIONS:
        from engine.errors import ValidationError

        raise ValidationError(f"unknown selection {select!r}", hint=f"Use one of {', '.join(SELECTIONS)}.",
                              context={"select": select})
    if not cands:
        raise ValueError("no candidates")
    if select == "random":
        return random.Random(seed).randrange(len(cands))
    if select == "majority":
        key = lambda i: (cands[i].scores["majority"], cands[i].scores["logprob"])  # noqa: E731
    else:
        key = lambda i: cands[i].scores[select]  # noqa: E731
    best = 0
    for i in range(1, len(cands)):
        if key(i) > key(best):
            best = i
    return best


def generate_candidates(lm, prompt: str, n: int, select: str, sampling, *, weights: dict[str, float] | None = None,
                        fmt: Any = None, cancel: Any = None, progress: Any = None):
    """Best-of-N on a loaded model (engine.infer.LoadedModel), one candidate after another: candidate ``i`` is
    the single generation with seed ``sampling.seed + i`` (so ``infer --seed S`` reproduces any of them).
    ``progress(i, result)`` after each candidate; a set ``cancel`` stops between two candidates (the ones done
    are scored and one of them chosen). Returns (results, candidates, chosen index); results are InferResults."""
    from engine.infer import Sampling

    s = sampling
    results, cands = [], []
    for i in range(n):
        if cancel is not None and cancel.is_set():
            break
        si = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, greedy=s.greedy,
                      seed=None if s.seed is None else s.seed + i)
        r = lm.generate(prompt, si, fmt=fmt, weights=weights)
        results.append(r)
        cands.append(Candidate(i, r.text, list(r.phi), list(r.selected_prob), seed=si.seed,
                               finish_reason=r.finish_reason))
        if progress is not None:
            progress(i, r)
    if not cands:
        return results, cands, None
    score_candidates(cands, weights)
    return results, cands, choose(cands, select, seed=s.seed)


def sample_batch(model, tok, prompts: Sequence[str], n: int, max_new_tokens: int, seed: int, *,
                 temperature: float = 1.0, fmt: Any = None):
    """N samples per prompt in one batched ``generate`` (left-padded), with the field of each sampled token read
    on the raw logits of its step: (texts [P][N], phi [P][N][T], selected_prob [P][N][T])."""
    import torch

    from engine.rewards import phi_and_selected

    from engine.models.stops import cut_at_stop, stop_ids
    from engine.prompts import RAW, encode_many

    torch.manual_seed(seed)
    # the prompts rendered as training renders them (engine.prompts; ``fmt`` None: raw), left-padded
    ids = encode_many(list(prompts), tok, fmt or RAW)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = stop_ids(model, tok)
    w = max(len(x) for x in ids)
    device = next(model.parameters()).device
    enc = {"input_ids": torch.tensor([[pad] * (w - len(x)) + x for x in ids], device=device),
           "attention_mask": torch.tensor([[0] * (w - len(x)) + [1] * len(x) for x in ids], device=device)}
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, num_return_sequences=n, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=pad, eos_token_id=stops)
    width = enc["input_ids"].shape[1]
    seqs = out.sequences[:, width:]
    phi, sel = phi_and_selected(torch.stack(out.logits, dim=1), seqs)
    texts, phis, sels = [], [], []
    for r in range(seqs.shape[0]):
        k = len(cut_at_stop(seqs[r].tolist(), stops)[0])
        texts.append(tok.decode(seqs[r, :k].tolist(), skip_special_tokens=True))
        phis.append(phi[r, :k].tolist())
        sels.append(sel[r, :k].tolist())
    group = lambda xs: [xs[i * n:(i + 1) * n] for i in range(len(prompts))]  # noqa: E731
    return group(texts), group(phis), group(sels)


def best_of_texts(model, tok, prompts: Sequence[str], n: int, select: str, max_new_tokens: int, seed: int = 0,
                  weights: dict[str, float] | None = None, fmt: Any = None) -> list[str]:
    """The selected completion per prompt (the eval verb's ``--best-of``; ``fmt``: the run's prompt format)."""
    texts, phis, sels = sample_batch(model, tok, prompts, n, max_new_tokens, seed, fmt=fmt)
    chosen = []
    for p in range(len(prompts)):
        cands = [Candidate(i, texts[p][i], phis[p][i], sels[p][i]) for i in range(n)]
        score_candidates(cands, weights)
        chosen.append(cands[choose(cands, select, seed=seed * 100003 + p)].text)
    return chosen
