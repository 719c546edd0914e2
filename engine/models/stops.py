"""Where a completion ends: one set of stop token ids for every generation loop.

:func:`stop_ids` = the tokenizer's ``eos_token_id`` ∪ the model's ``generation_config.eos_token_id`` (an int or a
list: TRL's GRPOTrainer stops on exactly this union) ∪ the chat template's end-of-turn token, found by rendering a
dummy two-turn chat and reading the first special token after the assistant's text (Gemma 3 writes
``<end_of_turn>`` while its tokenizer's eos is ``<eos>``; Llama 3 Instruct ``<|eot_id|>``; ChatML ``<|im_end|>``).

The loader (engine.models.load) writes the result into ``model.generation_config.eos_token_id``, so TRL's
training generation, the eval gate, the agent eval, infer and best-of all stop on the same ids.
"""

from __future__ import annotations

from typing import Any

_PROBE_USER, _PROBE_REPLY = "Say pong.", "pong"


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [int(value)]
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def template_end_of_turn(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message, or None (no template, or
    none written, or a template that refuses the dummy chat)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    memo = getattr(tokenizer, "_carl_end_of_turn", None)  # one probe per tokenizer and template
    if isinstance(memo, tuple) and memo[0] == template:
        return memo[1]
    found = _probe(tokenizer)
    try:
        tokenizer._carl_end_of_turn = (template, found)
    except Exception:  # a tokenizer that refuses attributes: probe again next time
        pass
    return found


def _probe(tokenizer: Any) -> int | None:
    chat = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template that raises on this shape (jinja's TemplateError, a missing variable …)
        return None
    if not isinstance(text, str) or _PROBE_REPLY not in text:
        return None
    tail = text[text.rindex(_PROBE_REPLY) + len(_PROBE_REPLY):]
    if not tail:
        return None
    special = set(_ids(getattr(tokenizer, "all_special_ids", None)))
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special |= {int(i) for i, t in decoder.items() if getattr(t, "special", False)}
    for i in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if int(i) in special:
            return int(i)
    return None


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a completion (sorted, no duplicates): tokenizer eos ∪ generation config eos ∪ the
    template's end-of-turn. ``model`` may be None (the tokenizer's part only)."""
    out: set[int] = set(_ids(getattr(tokenizer, "eos_token_id", None)))
    gen = getattr(model, "generation_config", None) if model is not None else None
    out |= set(_ids(getattr(gen, "eos_token_id", None)))
    eot = template_end_of_turn(tokenizer)
    if eot is not None:
        out.add(eot)
    return sorted(out)


def cut_at_stop(ids: list[int], stops: Any) -> tuple[list[int], bool]:
    """``ids`` up to and including the first stop id, and whether one was found."""
    stops = set(stops)
    for k, t in enumerate(ids):
        if t in stops:
            return list(ids[: k + 1]), True
    return list(ids), False
