"""Prompts as the model expects them: the one rendering used by training, eval, infer, the try panel and jobs.

A prompt from a dataset row (or typed by the user) becomes the model's input in one of two ways, chosen by
``dataset.chat_template`` and the tokenizer:

* **templated** — ``chat_template: auto`` and the tokenizer has a chat template: the prompt becomes TRL's
  conversational format, ``[{"role": "system", "content": dataset.system_prompt}, {"role": "user", "content":
  prompt}]`` (no system message when there is no system prompt), and the tokenizer's template renders it with
  ``add_generation_prompt=True`` — the call TRL's ``GRPOTrainer`` makes, tokenized the way TRL tokenizes it (the
  template writes its own special tokens; nothing is added). A template that refuses a system role (it raises)
  gets the system prompt as the first paragraph of the user message instead.
* **raw** — ``chat_template: none``, or a tokenizer without a template: the prompt text as it is, after the
  system prompt and a blank line when one is set, tokenized with the tokenizer's own special tokens (TRL's call
  for plain-text prompts).

**Truncation never cuts the template.** With ``grpo.max_prompt_length`` set (the default is none), a prompt
whose rendered ids are longer is fitted by :func:`fit`: the template's own cost (the render with the user's text
emptied — headers, system prompt, generation prompt) is measured, and the **user's content** loses its start
(left: the question's end survives) until the render fits; the system prompt and every header stay whole. A limit
shorter than the template itself is a ``carl.config`` error naming the row. Training (engine.trainer.data's
dataset), the eval gate, best-of and ``train --dry-run`` all go through it, so they read the same ids; ``infer``
and the try panel never truncate (a too-long prompt is an error there, named with the model's context).

Everything here takes the tokenizer as an argument and imports nothing heavy: pure rendering, below the trainer
(the dry run's example prompt, which needs the dataset and the config's tokenizer, is engine.trainer.preview).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

CHAT_TEMPLATE_MODES = ("auto", "none")
Prompt = Any  # a str, or a list of {"role", "content"} messages (a conversational dataset's prompt column)


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are rendered: ``chat_template`` (auto | none), ``system_prompt`` and the prompt token cap."""

    chat_template: str = "auto"
    system_prompt: str | None = None
    max_prompt_length: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> "PromptFormat":
        ds = cfg.dataset
        return cls(chat_template=ds.chat_template, system_prompt=ds.system_prompt or None,
                   max_prompt_length=cfg.grpo.max_prompt_length)

    def as_dict(self) -> dict[str, Any]:
        return {"chat_template": self.chat_template, "system_prompt": self.system_prompt,
                "max_prompt_length": self.max_prompt_length}


RAW = PromptFormat(chat_template="none")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def templated(tokenizer: Any, fmt: PromptFormat) -> bool:
    """Whether prompts go through the tokenizer's chat template."""
    return fmt.chat_template == "auto" and has_chat_template(tokenizer)


def is_messages(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt) and bool(prompt)


def as_text(prompt: Prompt) -> str:
    """A prompt's plain text (message contents joined by blank lines) — for raw rendering, samples and logs."""
    if is_messages(prompt):
        return "\n\n".join(str(m.get("content", "")) for m in prompt)
    return "" if prompt is None else str(prompt)


def _with_system(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    if not system or any(m.get("role") == "system" for m in messages):
        return [dict(m) for m in messages]
    return [{"role": "system", "content": system}, *(dict(m) for m in messages)]


def _fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system message as the first paragraph of the first user message (templates without a system role)."""
    system = "\n\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{system}\n\n{m.get('content', '')}" if system else m.get("content", "")
            return rest
    return [{"role": "user", "content": system}, *rest]


def _render_messages(tokenizer: Any, messages: list[dict[str, Any]], tokenize: bool) -> Any:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize,
                                         **({"return_dict": True} if tokenize else {}))


def messages(prompt: Prompt, tokenizer: Any, fmt: PromptFormat) -> list[dict[str, Any]]:
    """The conversation for a templated prompt: system (when set) + user, or the row's own messages."""
    msgs = [dict(m) for m in prompt] if is_messages(prompt) else [{"role": "user", "content": as_text(prompt)}]
    msgs = _with_system(msgs, fmt.system_prompt)
    if any(m.get("role") == "system" for m in msgs):
        try:
            _render_messages(tokenizer, msgs, tokenize=False)
        except Exception as exc:  # jinja's TemplateError from the template's raise_exception("System role …")
            if type(exc).__name__ != "TemplateError":
                raise
            msgs = _fold_system(msgs)
    return msgs


def model_input(prompt: Prompt, tokenizer: Any, fmt: PromptFormat) -> Prompt:
    """What the trainer's dataset holds in its ``prompt`` column: messages when templated, else the raw text."""
    if templated(tokenizer, fmt):
        return messages(prompt, tokenizer, fmt)
    text = as_text(prompt)
    return f"{fmt.system_prompt}\n\n{text}" if fmt.system_prompt else text


def render_input(inp: Prompt, tokenizer: Any) -> str:
    """A prepared model input (messages or raw text) as the text the model reads."""
    if isinstance(inp, list):
        return str(_render_messages(tokenizer, inp, tokenize=False))
    return inp


def render(prompt: Prompt, tokenizer: Any, fmt: PromptFormat) -> str:
    """The prompt as text, exactly as the model reads it (before any fitting to a limit)."""
    return render_input(model_input(prompt, tokenizer, fmt), tokenizer)


def truncate_left(ids: Sequence[int], max_length: int | None) -> list[int]:
    """The last ``max_length`` ids (a plain cut; prompts go through :func:`fit` instead, which keeps the template)."""
    ids = [int(i) for i in ids]
    return ids[-max_length:] if max_length and len(ids) > max_length else ids


def encode_model_input(inp: Prompt, tokenizer: Any) -> list[int]:
    """Token ids of a prepared model input, as TRL tokenizes it (chat template, or the tokenizer's own call)."""
    if isinstance(inp, list):
        out = _render_messages(tokenizer, inp, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text=inp)["input_ids"]]


def _trimmable(inp: Prompt, fmt: PromptFormat) -> tuple[str, Any]:
    """(the user's text, a function that rebuilds the model input around another text) — the part :func:`fit`
    may shorten: the last user message's content (templated), or the text after the system prompt (raw)."""
    if isinstance(inp, list):
        k = max((i for i, m in enumerate(inp) if m.get("role") == "user" and isinstance(m.get("content"), str)),
                default=None)
        if k is None:
            return "", None
        folded = ""  # a template without a system role: the system prompt is the first paragraph (_fold_system)
        content = inp[k]["content"]
        if fmt.system_prompt and content.startswith(f"{fmt.system_prompt}\n\n") and \
                not any(m.get("role") == "system" for m in inp):
            folded, content = f"{fmt.system_prompt}\n\n", content[len(fmt.system_prompt) + 2:]

        def rebuild(text: str) -> list[dict[str, Any]]:
            out = [dict(m) for m in inp]
            out[k]["content"] = folded + text
            return out

        return content, rebuild
    head = f"{fmt.system_prompt}\n\n" if fmt.system_prompt else ""
    return inp[len(head):] if inp.startswith(head) else inp, lambda text: head + text


def fit(prompt: Prompt, tokenizer: Any, fmt: PromptFormat, *, row: int | None = None) -> Prompt:
    """The model input for ``prompt`` that fits ``fmt.max_prompt_length`` tokens without cutting the template:
    the user's text loses its start; the system prompt, the headers and the generation prompt stay whole.
    A limit below the template's own cost: ``carl.config``, naming ``row``."""
    inp = model_input(prompt, tokenizer, fmt)
    limit = fmt.max_prompt_length
    if not limit:
        return inp
    n = len(encode_model_input(inp, tokenizer))
    if n <= limit:
        return inp
    text, rebuild = _trimmable(inp, fmt)
    where = f"row {row}" if row is not None else "the prompt"
    overhead = len(encode_model_input(rebuild(""), tokenizer)) if rebuild else n
    if rebuild is None or overhead >= limit:
        from engine.errors import ConfigError

        raise ConfigError(f"grpo.max_prompt_length={limit} leaves no room for the text of {where}: the template "
                          f"and system prompt alone take {overhead} tokens", hint=f"Raise grpo.max_prompt_length "
                          f"above {overhead}, unset it, or shorten dataset.system_prompt.",
                          context={"field": "grpo.max_prompt_length", "row": row, "template_tokens": overhead,
                                   "max_prompt_length": limit})
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = min(len(ids), limit - overhead)
    while keep > 0:  # the boundary may tokenize differently once joined: shrink until the render fits
        cand = rebuild(tokenizer.decode(ids[-keep:], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        over = len(encode_model_input(cand, tokenizer)) - limit
        if over <= 0:
            return cand
        keep -= max(1, over)
    return rebuild("")


def encode(prompt: Prompt, tokenizer: Any, fmt: PromptFormat, *, row: int | None = None) -> list[int]:
    """The prompt's token ids as the model gets them: rendered and fitted to ``fmt.max_prompt_length``."""
    return encode_model_input(fit(prompt, tokenizer, fmt, row=row), tokenizer)


def encode_many(prompts: Sequence[Prompt], tokenizer: Any, fmt: PromptFormat) -> list[list[int]]:
    return [encode(p, tokenizer, fmt, row=i) for i, p in enumerate(prompts)]


def overlong(prompts: Sequence[Prompt], tokenizer: Any, fmt: PromptFormat, limit_rows: int = 2000) -> dict[str, Any]:
    """How many of (the first ``limit_rows``) prompts :func:`fit` would trim: ``{"checked", "trimmed",
    "longest"}`` (``longest``: the longest rendered prompt in tokens)."""
    checked = list(prompts[:limit_rows])
    lengths = [len(encode_model_input(model_input(p, tokenizer, fmt), tokenizer)) for p in checked]
    limit = fmt.max_prompt_length
    return {"checked": len(checked), "trimmed": sum(n > limit for n in lengths) if limit else 0,
            "longest": max(lengths, default=0)}
