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
* :func:`field_from_forward` — one batched no-grad forward of the policy over prompt + completion.

Never a re-tokenised completion without its prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

COMPONENTS = ("coherence", "cloud", "discontinuity")


def phi_and_selected(logits, tokens):
    """``logits`` [..., V] and ``tokens`` [...] → (phi [...], selected_prob [...]) as float32 tensors: the probe's
    own kernel (:func:`engine.probe.token_stats`, one pass over V, on the logits' device).

    ``-inf`` logits count as probability 0 (masked vocabulary); V stays the full last dimension.
    """
    from engine.probe import token_stats

    x = logits if logits.dim() in (2, 3) else logits.reshape(-1, logits.shape[-1])
    tok = tokens.long().clamp(min=0).reshape(x.shape[:-1])
    phi, _, sel, _ = token_stats(x, tok, allow_masked=True)
    return phi.float().clamp(0.0, 1.0).reshape(tokens.shape), sel.float().reshape(tokens.shape)


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


def field_from_forward(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                       pad_id: int = 0):
    """One batched no-grad forward over prompt+completion → (phi [B,T], selected [B,T], mask [B,T]) for the
    completion tokens, T = the longest completion. Rows are right-padded; logits at position ``len(prompt)+t-1``
    give the distribution of completion token t."""
    import torch

    b = len(completion_ids)
    plens = torch.tensor([len(p) for p in prompt_ids])
    clens = torch.tensor([len(c) for c in completion_ids])
    width = int((plens + clens).max())
    tcomp = max(1, int(clens.max()) if b else 1)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    comp = torch.full((b, tcomp), pad_id, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        seq = list(p) + list(c)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        if len(c):
            comp[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
    if was_training:
        model.train()
    # position of the logit predicting completion token t of row i: plen_i - 1 + t
    t_idx = torch.arange(tcomp)
    pos = (plens.unsqueeze(1) - 1 + t_idx.unsqueeze(0)).clamp(max=width - 1).to(device)
    sel_logits = logits.gather(1, pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    phi, sel = phi_and_selected(sel_logits, comp.to(device))
    mask = (t_idx.unsqueeze(0) < clens.unsqueeze(1)).to(device)
    return phi.cpu(), sel.cpu(), mask.cpu()


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
