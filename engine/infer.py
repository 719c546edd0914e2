"""Try a model and see its coherence token by token.

* :func:`resolve` / :func:`parse_spec` are engine.models' resolver (engine/models/names.py): a directory,
  ``builtin:NAME``, ``run:ID``, a run id (prefix), ``RUN/final``, ``RUN/checkpoint-N``, ``RUN@N``, ``BASE + ADAPTER``,
  a Hub id last (failing fast offline), turned into a :class:`ModelRef`.
* :func:`load` loads it once (engine.models.load_model: dtype, adapter, stop ids) and keeps it warm: an LRU of
  :class:`LoadedModel` keyed by (model, adapter, device, dtype), ``CARL_INFER_CACHE`` entries (default 2, so two checkpoints can be compared without reloading).
* :meth:`LoadedModel.stream` generates with a manual decoding loop over the model's KV cache and yields one
  :class:`TokenStep` per token as it is produced (cancellable between tokens); :meth:`LoadedModel.generate` runs it
  to the end; :meth:`LoadedModel.score` teacher-forces a given text after a prompt (one forward).

The per-token field is measured on the **raw logits of the step that produced the token** (the model's own
distribution at temperature 1, before temperature / top-p reshape the sampler) with :func:`engine.probe.token_scores`
— the probe's kernel — so Phi = 1 - H / log V with V the full logit dimension, H in nats, selected_prob = p[token],
self_certainty = KL(U ‖ P) and DeepConf's top-k token confidence per token; :meth:`InferResult.scores` reduces
them per sequence (engine.probe.sequence_scores).
The sequence's CARL components are :func:`engine.probe.carl_reward` over that field, with the CARL weights the
caller passes (engine.settings: the run's or the project's ``rewards.carl.weights``; default 0.5/0.3/0.2).

Prompts are rendered by engine.prompts (the same rendering as training and eval): with a chat template the
prompt is the user message (after ``system_prompt``) and the template's generation prompt follows; ``fmt``
(a :class:`engine.prompts.PromptFormat`) chooses; the default is ``chat_template: auto`` with no system prompt.

Heavy imports (torch, transformers, peft) happen inside the functions that need them.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from engine.errors import ValidationError

DEFAULT_MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS_LIMIT = 8192
DEFAULT_CACHE_SIZE = 2
BUILTIN_TINY = "builtin:tiny"
_DECODE_WINDOW = 8  # tokens of left context when decoding one token's text incrementally


# ----------------------------------------------------------------------------------------------------------
# Naming a model
# ----------------------------------------------------------------------------------------------------------

# One resolver for every name a user types (engine/models/names.py): a directory, builtin:NAME, run:ID, RUN,
# RUN/final, RUN/checkpoint-N, RUN@N, BASE + ADAPTER, a Hub id last (failing fast offline).
from engine.models.names import ModelRef, resolve, run_model_dir  # noqa: E402  (re-exported: infer's API)


def parse_spec(text: str, home: Any = None, log: Callable[[str], None] | None = None) -> ModelRef:
    """A model named in one string (the try panel's model box, ``infer --model``): engine.models.resolve_name."""
    from engine.models.names import resolve_name

    return resolve_name(text, home=home, log=log)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenStep:
    """One token as it is produced: its text piece and its numbers."""

    index: int
    token_id: int
    token: str
    phi: float
    entropy: float
    selected_prob: float
    self_certainty: float | None = None  # KL(U ‖ P) of this step's distribution, nats (engine.probe)
    confidence: float | None = None  # DeepConf's token confidence (top-k, engine.probe.DEEPCONF_TOPK)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "token": self.token, "token_id": self.token_id, "phi": self.phi,
                "entropy": self.entropy, "selected_prob": self.selected_prob,
                "self_certainty": self.self_certainty, "confidence": self.confidence}


@dataclass
class InferResult:
    """A completion (``mode="generate"``) or a scored text (``mode="score"``) with its per-token field."""

    mode: str
    prompt: str
    text: str
    tokens: list[str]
    token_ids: list[int]
    phi: list[float]
    entropy: list[float]
    selected_prob: list[float]
    rewards: dict[str, float]
    finish_reason: str  # eos | length | context | cancelled | scored
    vocab_size: int
    ref: ModelRef
    settings: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    templated: bool = False  # the prompt went through the tokenizer's chat template
    system_prompt: str | None = None
    weights: dict[str, float] | None = None  # the CARL weights of ``rewards`` (None: the defaults)
    logits: Any = None  # [T, V] float32 torch tensor on the CPU when asked for (keep_logits=True)
    self_certainty: list[float] = field(default_factory=list)  # KL(U ‖ P) per token (engine.probe.token_scores)
    confidence: list[float] = field(default_factory=list)  # DeepConf's token confidence per token

    @property
    def steps(self) -> list[TokenStep]:
        sc = self.self_certainty or [None] * len(self.phi)
        cf = self.confidence or [None] * len(self.phi)
        return [TokenStep(i, t, s, p, e, q, c, f) for i, (t, s, p, e, q, c, f) in
                enumerate(zip(self.token_ids, self.tokens, self.phi, self.entropy, self.selected_prob, sc, cf))]

    def scores(self) -> dict[str, float | None]:
        """The sequence's intrinsic scores (engine.probe.SCORES: phi, self_certainty, neg_entropy, logprob,
        group_confidence), computed once by :func:`engine.probe.sequence_scores`."""
        from engine.probe import sequence_scores

        return sequence_scores(self.phi, self.entropy, self.selected_prob,
                               self.self_certainty if len(self.self_certainty) == len(self.phi) else None,
                               self.confidence if len(self.confidence) == len(self.phi) else None)

    def summary(self) -> dict[str, Any]:
        from engine.probe import SIGMA, crystallizations, meltings

        n = len(self.phi)
        return {
            "n_tokens": n,
            "phi_mean": sum(self.phi) / n if n else None,
            "entropy_mean": sum(self.entropy) / n if n else None,
            "crystallized_fraction": sum(p >= SIGMA for p in self.phi) / n if n else 0.0,
            "crystallizations": crystallizations(self.phi).tolist() if n else [],
            "meltings": meltings(self.phi).tolist() if n else [],
        }

    def to_dict(self) -> dict[str, Any]:
        ref = self.ref.as_dict()
        return {
            "mode": self.mode, "model": ref["label"], "model_path": self.ref.model, "adapter": self.ref.adapter,
            "run_id": self.ref.run_id, "checkpoint": self.ref.checkpoint,
            "prompt": self.prompt, "text": self.text, "tokens": self.tokens, "token_ids": self.token_ids,
            "phi": self.phi, "entropy": self.entropy, "selected_prob": self.selected_prob,
            "self_certainty": self.self_certainty, "confidence": self.confidence, "scores": self.scores(),
            "rewards": self.rewards, **self.summary(), "vocab_size": self.vocab_size,
            "prompt_tokens": self.prompt_tokens, "finish_reason": self.finish_reason, "settings": self.settings,
            "templated": self.templated, "system_prompt": self.system_prompt,
            "carl_weights": dict(self.weights) if self.weights else _default_weights(),
        }


def _rewards(phi: Sequence[float], sel: Sequence[float], weights: dict[str, float] | None = None) -> dict[str, float]:
    from engine.probe import carl_reward

    return carl_reward(list(phi), list(sel), weights)


def _default_weights() -> dict[str, float]:
    from engine.probe import DEFAULT_WEIGHTS

    return dict(DEFAULT_WEIGHTS)


# ----------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """Decoding knobs. ``greedy`` (or temperature 0) takes the argmax; otherwise tokens are drawn from
    softmax(logits / temperature) restricted to the top-p nucleus, with a ``torch.Generator`` seeded by ``seed``."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    seed: int | None = None

    def check(self) -> "Sampling":
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValidationError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}",
                                  context={"max_new_tokens": self.max_new_tokens})
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValidationError(f"temperature must be ≥ 0, got {self.temperature}", hint="0 means greedy.",
                                  context={"temperature": self.temperature})
        if not (0 < self.top_p <= 1):
            raise ValidationError(f"top_p must be in (0, 1], got {self.top_p}", context={"top_p": self.top_p})
        return self

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "greedy": self.is_greedy, "seed": self.seed}


# ----------------------------------------------------------------------------------------------------------
# A loaded model
# ----------------------------------------------------------------------------------------------------------

def _default_device() -> str:
    """cuda, then mps, then cpu (engine.devices)."""
    from engine.devices import auto_device

    return auto_device()


class LoadedModel:
    """A model and tokenizer in eval mode on one device, ready to generate and score."""

    def __init__(self, ref: ModelRef, model: Any, tokenizer: Any, device: str):
        self.ref, self.model, self.tokenizer, self.device = ref, model, tokenizer, device
        self.budget_mb: float | None = None  # logits budget for score (None: the device default; engine.memory)
        cfg = getattr(model, "config", None)
        self.max_positions: int | None = None
        for k in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(cfg, k, None)
            if isinstance(v, int) and v > 0:
                self.max_positions = v
                break
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(core.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        """Where a completion ends: engine.models.stop_ids (generation config ∪ tokenizer eos ∪ end of turn)."""
        from engine.models.stops import stop_ids

        return set(stop_ids(self.model, self.tokenizer))

    # ---- text
    def templated(self, fmt: Any = None) -> bool:
        from engine.prompts import PromptFormat, templated

        return templated(self.tokenizer, fmt or PromptFormat())

    def encode_prompt(self, prompt: str, fmt: Any = None) -> list[int]:
        """The prompt's ids as the model reads them (engine.prompts; never truncated here)."""
        from engine.prompts import PromptFormat, encode

        fmt = fmt or PromptFormat()
        if fmt.max_prompt_length is not None:
            from dataclasses import replace

            fmt = replace(fmt, max_prompt_length=None)
        ids = encode(prompt, self.tokenizer, fmt) if prompt or self.templated(fmt) or fmt.system_prompt else []
        if not ids:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is None:
                raise ValidationError("the prompt is empty and the tokenizer has no BOS token to start from",
                                      hint="Give a non-empty prompt.")
            ids = [int(bos)]
        return [int(i) for i in ids]

    def encode_text(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def _piece(self, ids: list[int], k: int) -> str:
        """The text token ``k`` adds after ``ids[:k]`` (decoded with a little left context, so multi-byte
        characters and leading-space tokens read right); special tokens show as themselves."""
        lo = max(0, k - _DECODE_WINDOW)
        kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        before = self.tokenizer.decode(ids[lo:k], **kw) if k > lo else ""
        after = self.tokenizer.decode(ids[lo:k + 1], **kw)
        if after.startswith(before) and not after.endswith("\ufffd"):
            return after[len(before):]
        return self.tokenizer.decode([ids[k]], **kw)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---- forward
    def _forward(self, input_ids: Any, cache: Any = None, last_only: bool = False) -> tuple[Any, Any]:
        kw: dict[str, Any] = {"input_ids": input_ids, "use_cache": True}
        if cache is not None:
            kw[self._cache_kw] = cache
        if last_only and self._keep_kw:
            kw[self._keep_kw] = 1
        out = self.model(**kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits, new_cache

    # ---- generation
    def stream(self, prompt: str, sampling: Sampling | None = None, *, cancel: threading.Event | None = None,
               keep_logits: bool = False, fmt: Any = None, weights: dict[str, float] | None = None) -> "Generation":
        """A :class:`Generation`: iterate it for :class:`TokenStep` s as they are produced; ``.result`` after.
        ``fmt``: the prompt rendering (engine.prompts.PromptFormat); ``weights``: the CARL weights."""
        return Generation(self, prompt, (sampling or Sampling()).check(), cancel or threading.Event(), keep_logits,
                          fmt=fmt, weights=weights)

    def generate(self, prompt: str, sampling: Sampling | None = None, *, cancel: threading.Event | None = None,
                 keep_logits: bool = False, fmt: Any = None, weights: dict[str, float] | None = None) -> InferResult:
        return self.stream(prompt, sampling, cancel=cancel, keep_logits=keep_logits, fmt=fmt, weights=weights).run()

    # ---- teacher forcing
    def score(self, prompt: str, text: str | None = None, *, token_ids: Sequence[int] | None = None,
              add_eos: bool = False, keep_logits: bool = False, fmt: Any = None,
              weights: dict[str, float] | None = None, budget_mb: float | None = None) -> InferResult:
        """The per-token field of ``text`` (or ``token_ids``) following ``prompt``, teacher-forced: the logits at
        position t-1 give token t's Phi / entropy / selected_prob. The text goes through the model in position
        chunks whose logits fit ``budget_mb`` (None: ``self.budget_mb``, else the device default; see
        engine.memory), continuing the KV cache between chunks; only the per-token scalars are kept unless
        ``keep_logits`` asks for the [T, V] logits themselves."""

        p_ids = self.encode_prompt(prompt, fmt)
        t_ids = [int(i) for i in token_ids] if token_ids is not None else self.encode_text(text or "")
        if add_eos and self.eos_ids:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            t_ids.append(int(eos if eos is not None else min(self.eos_ids)))
        total = len(p_ids) + len(t_ids)
        if self.max_positions and total > self.max_positions:
            raise ValidationError(f"prompt + text is {total} tokens, the model's context is {self.max_positions}",
                                  hint="Score a shorter text.", context={"n_tokens": total})
        vocab = None
        logits = None
        if t_ids:
            vocab = self._vocab_size()
            if max(t_ids) >= vocab:
                raise ValidationError(f"token id {max(t_ids)} is outside the model's vocabulary ({vocab})")
            phi, ent, sel, sc, cf, logits = self._score_chunks(p_ids, t_ids, keep_logits, budget_mb)
        else:
            phi, ent, sel, sc, cf = [], [], [], [], []
        return InferResult(
            mode="score", prompt=prompt, text=self._text(t_ids), tokens=[self._piece(t_ids, k) for k in
                                                                         range(len(t_ids))],
            token_ids=t_ids, phi=phi, entropy=ent, selected_prob=sel, rewards=_rewards(phi, sel, weights),
            finish_reason="scored", vocab_size=vocab or self._vocab_size(), ref=self.ref,
            settings={"add_eos": add_eos}, prompt_tokens=len(p_ids), templated=self.templated(fmt),
            system_prompt=getattr(fmt, "system_prompt", None), weights=weights,
            logits=logits if keep_logits else None, self_certainty=sc, confidence=cf)

    def _score_chunks(self, p_ids: list[int], t_ids: list[int], keep_logits: bool,
                      budget_mb: float | None) -> tuple[list[float], list[float], list[float], list[float],
                                                        list[float], Any]:
        import torch

        from engine import memory
        from engine.probe import DEEPCONF_TOPK, token_scores

        budget = memory.budget_mb(budget_mb if budget_mb is not None else self.budget_mb,
                                  torch.device(self.device).type)
        vocab = self._vocab_size()
        cap = memory.positions_per_chunk(budget, vocab, memory.output_bytes(self.model))
        seq = p_ids + t_ids
        plen, n = len(p_ids), len(t_ids)
        phi: list[float] = []
        ent: list[float] = []
        sel: list[float] = []
        sc: list[float] = []
        cf: list[float] = []
        kept: list[Any] = []
        cache = None
        with torch.inference_mode(), memory.oom_guard("scoring", budget, n_tokens=plen + n, vocab=vocab):
            for lo in range(0, n, cap):
                hi = min(n, lo + cap)
                # the logits predicting t[lo:hi] sit at positions plen-1+lo … plen-2+hi of seq
                if cache is not None:
                    logits, cache = self._forward(torch.tensor([seq[plen - 1 + lo: plen - 1 + hi]],
                                                               device=self.device), cache)
                else:
                    kw: dict[str, Any] = {"input_ids": torch.tensor([seq[: plen - 1 + hi]], device=self.device),
                                          "use_cache": hi < n}
                    if self._keep_kw:
                        kw[self._keep_kw] = hi - lo
                    out = self.model(**kw)
                    logits = out.logits
                    cache = (getattr(out, "cache", None) or getattr(out, "past_key_values", None)) if hi < n else None
                rows = logits[0, -(hi - lo):].float()
                r = token_scores(rows, torch.tensor(t_ids[lo:hi], device=rows.device), topk=DEEPCONF_TOPK)
                phi += r["phi"].double().cpu().tolist()
                ent += r["entropy"].double().cpu().tolist()
                sel += r["selected_prob"].double().cpu().tolist()
                sc += r["self_certainty"].double().cpu().tolist()
                cf += r["confidence"].double().cpu().tolist()
                if keep_logits:
                    kept.append(rows.detach().cpu())
                del logits, rows
        return phi, ent, sel, sc, cf, (torch.cat(kept) if kept else None)

    def _vocab_size(self) -> int:
        emb = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if emb is not None and hasattr(emb, "weight"):
            return int(emb.weight.shape[0])
        return int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))


def _choose(raw: Any, s: Sampling, gen: Any) -> int:
    """The next token from one row of raw logits [V]: argmax, or a draw at temperature T from the top-p nucleus
    (the smallest set of most likely tokens whose probability reaches top_p; the top token is always kept)."""
    import torch

    if s.is_greedy:
        return int(torch.argmax(raw))
    probs = torch.softmax(raw.float() / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sp, dim=-1) - sp) < s.top_p
        sp = sp * keep
        j = torch.multinomial(sp / sp.sum(), 1, generator=gen)
        return int(si[j])
    return int(torch.multinomial(probs, 1, generator=gen))


class Generation:
    """One generation in progress. Iterate for :class:`TokenStep` s; :meth:`cancel` (any thread) stops it before
    the next token; :attr:`result` holds the :class:`InferResult` once iteration ends (also after a cancel)."""

    def __init__(self, lm: LoadedModel, prompt: str, sampling: Sampling, cancel: threading.Event,
                 keep_logits: bool, *, fmt: Any = None, weights: dict[str, float] | None = None):
        self.lm, self.prompt, self.sampling, self._cancel, self.keep_logits = lm, prompt, sampling, cancel, keep_logits
        self.fmt, self.weights = fmt, weights
        self.result: InferResult | None = None
        self.prompt_ids = lm.encode_prompt(prompt, fmt)
        self._started = False

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> InferResult:
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def __iter__(self) -> Iterator[TokenStep]:
        if self._started:
            raise RuntimeError("a Generation can be iterated once")
        self._started = True
        return self._steps()

    def _steps(self) -> Iterator[TokenStep]:
        import torch

        from engine.probe import DEEPCONF_TOPK, token_scores

        lm, s = self.lm, self.sampling
        p_ids = self.prompt_ids
        budget = s.max_new_tokens
        limited_by_context = False
        if lm.max_positions:
            room = lm.max_positions - len(p_ids)
            if room <= 0:
                raise ValidationError(f"the prompt is {len(p_ids)} tokens, the model's context is {lm.max_positions}",
                                      hint="Give a shorter prompt.", context={"n_tokens": len(p_ids)})
            if room < budget:
                budget, limited_by_context = room, True
        gen = None
        if not s.is_greedy:
            gen = torch.Generator(device=lm.device)
            if s.seed is not None:
                gen.manual_seed(int(s.seed))
            else:
                gen.seed()
        ids: list[int] = []
        phi: list[float] = []
        ent: list[float] = []
        sel: list[float] = []
        sc: list[float] = []
        cf: list[float] = []
        pieces: list[str] = []
        kept: list[Any] = []
        finish = "length"
        vocab = 0
        try:
            if self._cancel.is_set():
                finish = "cancelled"
                return
            with torch.inference_mode():  # never held across a yield: grad mode is thread-local state
                logits, cache = lm._forward(torch.tensor([p_ids], device=lm.device), last_only=True)
            for k in range(budget):
                if self._cancel.is_set():  # checked between the forward and the choice: a cancel is prompt
                    finish = "cancelled"
                    break
                with torch.inference_mode():
                    raw = logits[0, -1].float()
                    vocab = int(raw.shape[-1])
                    tok = _choose(raw, s, gen)
                    r = token_scores(raw[None, :], torch.tensor([tok], device=raw.device), topk=DEEPCONF_TOPK)
                ids.append(tok)
                phi.append(float(r["phi"][0]))
                ent.append(float(r["entropy"][0]))
                sel.append(float(r["selected_prob"][0]))
                sc.append(float(r["self_certainty"][0]))
                cf.append(float(r["confidence"][0]))
                pieces.append(lm._piece(ids, k))
                if self.keep_logits:
                    kept.append(raw.detach().cpu())
                yield TokenStep(k, tok, pieces[-1], phi[-1], ent[-1], sel[-1], sc[-1], cf[-1])
                if tok in lm.eos_ids:
                    finish = "eos"
                    break
                if k + 1 < budget and not self._cancel.is_set():
                    with torch.inference_mode():
                        if cache is not None:
                            logits, cache = lm._forward(torch.tensor([[tok]], device=lm.device), cache)
                        else:  # a model without a KV cache: re-read the whole sequence
                            logits, cache = lm._forward(torch.tensor([p_ids + ids], device=lm.device),
                                                        last_only=True)
            else:
                finish = "context" if limited_by_context else "length"
        except GeneratorExit:
            finish = "cancelled"
            raise
        finally:
            self.result = InferResult(
                mode="generate", prompt=self.prompt, text=lm._text(ids), tokens=pieces, token_ids=ids, phi=phi,
                entropy=ent, selected_prob=sel, rewards=_rewards(phi, sel, self.weights), finish_reason=finish,
                vocab_size=vocab or lm._vocab_size(), ref=lm.ref, settings=s.as_dict(), prompt_tokens=len(p_ids),
                templated=lm.templated(self.fmt), system_prompt=getattr(self.fmt, "system_prompt", None),
                weights=self.weights,
                logits=torch.stack(kept) if kept else None, self_certainty=sc, confidence=cf)


# ----------------------------------------------------------------------------------------------------------
# Loading, kept warm
# ----------------------------------------------------------------------------------------------------------

_CACHE: "OrderedDict[tuple[Any, ...], LoadedModel]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOAD_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}


def cache_size() -> int:
    try:
        return max(1, int(os.environ.get("CARL_INFER_CACHE", DEFAULT_CACHE_SIZE)))
    except ValueError:
        return DEFAULT_CACHE_SIZE


def cached() -> list[tuple[Any, ...]]:
    """Keys of the models kept warm, least recently used first."""
    with _CACHE_LOCK:
        return list(_CACHE)


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def load(ref: ModelRef, *, device: str | None = None, dtype: str = "auto",
         log: Callable[[str], None] | None = None) -> LoadedModel:
    """The loaded model for ``ref`` (from the LRU when warm). Load failures: ``carl.validation``."""
    device = device or _default_device()
    key = (ref.model, ref.adapter, ref.tokenizer, device, dtype)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one load per key even when two threads ask at once
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        lm = _load_uncached(ref, device, dtype, log)
        with _CACHE_LOCK:
            _CACHE[key] = lm
            while len(_CACHE) > cache_size():
                _CACHE.popitem(last=False)
    return lm


def _load_uncached(ref: ModelRef, device: str, dtype: str, log: Callable[[str], None] | None) -> LoadedModel:
    """engine.models' one loader (tokenizer, dtype, adapter, stop ids), in eval mode on ``device``."""
    from engine.models.load import LoadOptions, load_model

    model, tok = load_model(ref, LoadOptions(device=device, dtype=dtype), log=log)
    return LoadedModel(ref, model, tok, device)


# ----------------------------------------------------------------------------------------------------------
# One-call helpers
# ----------------------------------------------------------------------------------------------------------

def settings_for(ref: ModelRef | None = None, *, run: str | None = None, config_path: Any = None,
                 cwd: Path | None = None, home: Any = None) -> Any:
    """The CARL weights and prompt format to use with ``ref`` (engine.settings): its run's config when it is a
    run's model, else the project's carl.yaml, else the defaults."""
    from engine import settings

    return settings.resolve(run=run or (ref.run_id if ref is not None else None), config_path=config_path,
                            cwd=cwd, home=home)


def generate(prompt: str, *, model: str | None = None, adapter: str | None = None, run: str | None = None,
             sampling: Sampling | None = None, home: Any = None) -> InferResult:
    """Resolve, load (warm) and generate once, with the run's (or project's) weights and prompt format."""
    ref = resolve(model, adapter=adapter, run=run, home=home)
    st = settings_for(ref, home=home)
    return load(ref).generate(prompt, sampling, fmt=st.prompt_format(), weights=st.weights)


def score(prompt: str, text: str, *, model: str | None = None, adapter: str | None = None, run: str | None = None,
          add_eos: bool = False, home: Any = None) -> InferResult:
    """Resolve, load (warm) and score ``text`` after ``prompt``, with the run's (or project's) settings."""
    ref = resolve(model, adapter=adapter, run=run, home=home)
    st = settings_for(ref, home=home)
    return load(ref).score(prompt, text, add_eos=add_eos, fmt=st.prompt_format(), weights=st.weights)


def best_of(lm: "LoadedModel", prompt: str, n: int, select: str = "logprob", sampling: Sampling | None = None,
            *, weights: dict[str, float] | None = None, fmt: Any = None, extract: str = "auto",
            p: float | None = None, eta: float | None = None, window: int | None = None) -> dict[str, Any]:
    """Best-of-N (engine.bestof): N sampled candidates (seeds ``seed``, ``seed+1`` … when a seed is given), each
    with its scores, and the one ``select`` chose. Returns ``{"best_of", "select", "chosen", "candidates",
    "result"}`` — ``result`` is the chosen candidate's full :meth:`InferResult.to_dict`."""
    from engine.bestof import BORDA_P, DEEPCONF_ETA, SELECTIONS, generate_candidates, task_extractor
    from engine.probe import DEEPCONF_WINDOW

    if not isinstance(n, int) or not 1 <= n <= 64:
        raise ValidationError(f"--best-of must be in [1, 64], got {n}", context={"best_of": n})
    if select not in SELECTIONS:
        raise ValidationError(f"unknown --select {select!r}", hint=f"Use one of {', '.join(SELECTIONS)}.",
                              context={"select": select})
    s = sampling or Sampling()
    if s.is_greedy and n > 1:
        raise ValidationError("best-of-N needs sampling: greedy decoding gives N identical candidates",
                              hint="Drop --greedy / use a temperature > 0.", context={"best_of": n})
    p = BORDA_P if p is None else float(p)
    eta = DEEPCONF_ETA if eta is None else float(eta)
    window = DEEPCONF_WINDOW if window is None else int(window)
    if not (math.isfinite(p) and p >= 0):
        raise ValidationError(f"--borda-p must be ≥ 0, got {p}", hint="0 is majority voting; Kang et al. use 0.5.")
    if not 0 < eta <= 1:
        raise ValidationError(f"--eta must be in (0, 1], got {eta}", hint="DeepConf-low keeps 0.1, -high 0.9.")
    if window < 1:
        raise ValidationError(f"--window must be ≥ 1 token, got {window}")
    results, cands, k = generate_candidates(lm, prompt, n, select, s, weights=weights, fmt=fmt,
                                            extract=task_extractor(extract), p=p, eta=eta, window=window)
    return {"best_of": n, "select": select, "chosen": k, "candidates": [c.as_dict() for c in cands],
            "params": {"borda_p": p, "eta": eta, "window": window, "extract": extract},
            "result": results[k].to_dict()}


__all__ = ["ModelRef", "TokenStep", "InferResult", "Sampling", "LoadedModel", "Generation", "resolve",
           "parse_spec", "run_model_dir", "load", "cached", "clear_cache", "generate", "score", "settings_for",
           "best_of"]
