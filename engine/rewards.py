"""CARL reward on the policy's own next-token distributions for the completion tokens, conditioned on the prompt.

The per-token field is the probe's: ``phi_t = 1 - H(p_t) / log V`` (p_t the policy's next-token distribution at
completion position t, given the prompt and the completion so far; V the vocabulary size) and ``s_t`` the
probability the policy gave the token it actually produced. The sequence components (coherence, cloud,
discontinuity) are reductions of that field computed by :func:`engine.probe.carl_components_torch`; the CARL
reward is ``w_c·coherence + w_k·cloud + w_d·discontinuity`` (default weights 0.5 / 0.3 / 0.2).

Two ways to get the field, both vectorised on torch over the whole batch:

* :class:`GenerationCapture` — a logits processor attached to the policy's ``generate`` call: it keeps the
  field of the very distributions the completions were sampled from (no extra forward). Used when sampling is
  untempered (temperature 1, no top-k/top-p/min-p, no repetition penalty), where those scores are the
  policy's own distribution.
* :func:`field_from_forward` — no-grad forwards of the policy over prompt + completion, in chunks whose
  logits fit ``compute.logits_budget_mb`` (engine.memory); only per-token scalars are kept.

Never a re-tokenised completion without its prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

COMPONENTS = ("coherence", "cloud", "discontinuity")


def field_stats(logits, tokens):
    """``logits`` [..., V] and ``tokens`` [...] → (phi, entropy, selected_prob), each [...] float32: the probe's
    own kernel (:func:`engine.probe.token_stats`, one pass over V, on the logits' device).

    ``-inf`` logits count as probability 0 (masked vocabulary); V stays the full last dimension. Memory: a few
    float32 working copies of the vocabulary rows — :data:`engine.memory.WORK_COPIES` bounds it.
    """
    from engine.probe import token_stats

    x = logits if logits.dim() in (2, 3) else logits.reshape(-1, logits.shape[-1])
    tok = tokens.long().clamp(min=0).reshape(x.shape[:-1])
    phi, ent, sel, _ = token_stats(x, tok, allow_masked=True)
    shape = tokens.shape
    return phi.float().clamp(0.0, 1.0).reshape(shape), ent.float().reshape(shape), sel.float().reshape(shape)


def phi_and_selected(logits, tokens):
    """``logits`` [..., V] and ``tokens`` [...] → (phi [...], selected_prob [...]) as float32 tensors
    (:func:`field_stats` without the entropy)."""
    phi, _, sel = field_stats(logits, tokens)
    return phi, sel


def carl_from_field(phi, selected, mask, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Per-sequence CARL components and reward, each a [B] tensor, from the probe's torch formulas, plus
    ``phi_mean`` (mean Phi over the completion tokens) and ``crystallizations`` (count of ΔPhi > the probe's
    DEFECT_THRESHOLD between neighbouring completion tokens)."""
    from engine.probe import DEFECT_THRESHOLD, carl_components_torch

    comps = carl_components_torch(phi, selected, mask, weights=weights)
    out = {k: comps[k].float() for k in (*COMPONENTS, "carl")}
    m = mask.float()
    out["phi_mean"] = (phi * m).sum(-1) / m.sum(-1).clamp(min=1)
    if phi.shape[1] >= 2:
        pair = mask[:, 1:] & mask[:, :-1]
        out["crystallizations"] = (((phi[:, 1:] - phi[:, :-1]) > DEFECT_THRESHOLD) & pair).sum(-1).float()
    else:
        out["crystallizations"] = phi.new_zeros(phi.shape[0])
    return out


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    core = getattr(model, "module", model)  # DDP / accelerate wrappers
    core = core.get_base_model() if hasattr(core, "get_base_model") else core
    try:
        return "logits_to_keep" in inspect.signature(core.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def field_from_forward(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                       pad_id: int = 0, *, budget_mb: float | None = None, entropy: bool = False):
    """No-grad forwards over prompt+completion → (phi [B,T], selected [B,T], mask [B,T]) for the completion
    tokens (T = the longest completion), plus entropy [B,T] when ``entropy``. Rows are right-padded; the logit
    at position ``len(prompt)+t-1`` gives the distribution of completion token t.

    Memory is bounded by ``budget_mb`` (``compute.logits_budget_mb``; None = the device default, see
    engine.memory): rows go through the model in groups whose completion logits fit the budget, the model
    projects only the completion positions onto the vocabulary (``logits_to_keep`` with per-row positions), a
    completion longer than the budget allows is split into position ranges (one forward each), and only the
    per-token scalars are kept — never [B, T, V]. An out-of-memory is ``carl.resource.oom``.
    """
    import torch

    from engine import memory

    b = len(completion_ids)
    plens = [len(p) for p in prompt_ids]
    clens = [len(c) for c in completion_ids]
    tcomp = max([1, *clens])
    phi = torch.zeros((b, tcomp), dtype=torch.float32)
    sel = torch.zeros((b, tcomp), dtype=torch.float32)
    ent = torch.zeros((b, tcomp), dtype=torch.float32)
    mask = torch.arange(tcomp).unsqueeze(0) < torch.tensor(clens, dtype=torch.long).reshape(-1, 1)
    live = [i for i in range(b) if clens[i] > 0]
    if not live:
        return (phi, sel, mask, ent) if entropy else (phi, sel, mask)
    device = next(model.parameters()).device
    budget = memory.budget_mb(budget_mb, device.type)
    vocab = memory.vocab_size(getattr(model, "module", model))
    cap = memory.positions_per_chunk(budget, vocab, memory.output_bytes(model))
    keep = _accepts_logits_to_keep(model)
    # without logits_to_keep the model projects every position: a row costs its whole length
    cost = [clens[i] if keep else plens[i] + clens[i] for i in live]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), memory.oom_guard("the per-token field forward", budget, rows=b, vocab=vocab):
            for group, lo, hi in memory.plan_chunks(cost, cap):
                rows = [live[g] for g in group]
                if not keep:
                    if lo > 0:
                        continue  # the whole row was done with its first piece
                    lo, hi = 0, max(clens[i] for i in rows)
                hi = min(hi, max(clens[i] for i in rows))
                n = hi - lo
                seqs = [(list(prompt_ids[i]) + list(completion_ids[i]))[: max(1, plens[i] + min(clens[i], hi) - 1)]
                        for i in rows]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                attn = torch.zeros((len(rows), width), dtype=torch.long)
                pos = torch.zeros((len(rows), n), dtype=torch.long)
                toks = torch.zeros((len(rows), n), dtype=torch.long)
                for j, (i, s) in enumerate(zip(rows, seqs)):
                    ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
                    attn[j, : len(s)] = 1
                    t = torch.arange(lo, hi)
                    pos[j] = (plens[i] - 1 + t).clamp(min=0, max=len(s) - 1)
                    c = list(completion_ids[i])[lo:hi]
                    toks[j, : len(c)] = torch.tensor(c, dtype=torch.long)
                ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
                logits = None
                if keep:
                    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=pos).logits
                    if tuple(logits.shape[:2]) != (len(rows), n):  # a model that reads logits_to_keep otherwise
                        logits = None
                if logits is None:
                    full = model(input_ids=ids, attention_mask=attn).logits
                    logits = full.gather(1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
                    del full
                p_c, e_c, s_c = field_stats(logits, toks.to(device))
                del logits
                idx = torch.tensor(rows)
                phi[idx, lo:hi], ent[idx, lo:hi], sel[idx, lo:hi] = p_c.cpu(), e_c.cpu(), s_c.cpu()
    finally:
        if was_training:
            model.train()
    phi, sel, ent = phi * mask, sel * mask, ent * mask
    return (phi, sel, mask, ent) if entropy else (phi, sel, mask)


class GenerationCapture:
    """A logits processor that records the per-token field of the distributions ``generate`` samples from.

    At each decoding step it receives the scores for the next token; the token chosen at step t is known at
    step t+1 (the last column of ``input_ids``) or, for the final step, from the completion ids. Memory: a reference
    to the last step's [B, V] scores (no copy) plus [B] floats per step, on the scores' device.
    """

    def __init__(self) -> None:
        self.seconds = 0.0  # time spent in __call__, accumulated until the reader resets it (overhead accounting)
        self.reset()

    def reset(self) -> None:
        self.phi: list[Any] = []  # per step, [B]
        self.sel: list[Any] = []  # per step, [B] (resolved one step late)
        self._pending = None  # (the last step's scores [B, V], their log-normaliser [B])
        self.rows = 0
        self.active = False

    def __call__(self, input_ids, scores):
        """One pass of the probe's kernel over this step's scores (entropy and log-normaliser per row); the token
        sampled from the previous step's scores is read back with one gather. Nothing leaves the device here:
        the per-step vectors are stacked and copied to the host once, in :meth:`field`."""
        if not self.active:
            return scores
        import time

        import torch

        from engine.probe import _token_stats_torch, phi_from_entropy

        t0 = time.perf_counter()
        with torch.no_grad():
            if self._pending is not None:
                prev, lse = self._pending
                tok = input_ids[:, -1].long().unsqueeze(-1)
                self.sel.append((prev.gather(-1, tok).squeeze(-1).to(lse.dtype) - lse).exp())
            ent, _, _, lse = _token_stats_torch(scores, None, True, check=False, with_lse=True)
            self.phi.append(phi_from_entropy(ent, scores.shape[-1]).clamp(0.0, 1.0))
            # the scores themselves, not a copy: generate only reads them after the last processor (this one)
            self._pending = (scores, lse)
            self.rows = scores.shape[0]
        self.seconds += time.perf_counter() - t0
        return scores

    def field(self, completion_ids: Sequence[Sequence[int]]):
        """(phi, selected, mask) [B, T] for the captured generation, or None when it does not match the batch."""
        import torch

        b = len(completion_ids)
        if not self.phi or self.rows != b:
            return None
        sel = list(self.sel)
        if self._pending is not None:  # the last step's chosen token is in the completion ids
            prev, lse = self._pending
            last = len(self.phi) - 1
            tok = torch.tensor([c[last] if len(c) > last else 0 for c in completion_ids], dtype=torch.long,
                               device=prev.device)
            sel.append((prev.gather(-1, tok.unsqueeze(-1)).squeeze(-1).to(lse.dtype) - lse).exp())
        both = torch.stack([torch.stack(self.phi, dim=1), torch.stack(sel, dim=1)]).float().cpu()  # one copy
        phi, sel_t = both[0], both[1]
        clens = torch.tensor([len(c) for c in completion_ids])
        if int(clens.max()) > phi.shape[1]:
            return None
        mask = torch.arange(phi.shape[1]).unsqueeze(0) < clens.unsqueeze(1)
        return phi, sel_t, mask
