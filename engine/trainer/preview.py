"""The dry run's view of the prompts (``train --dry-run``): the tokenizer a config names (without the model) and
the first training prompt exactly as the model will see it, with how many rows ``grpo.max_prompt_length`` trims.

Rendering itself is engine.prompts; this module joins it with the dataset (engine.trainer.data) and the
tokenizer, so that engine.prompts stays below the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.prompts import PromptFormat, encode_model_input, fit, model_input, overlong, render_input, templated


def load_tokenizer(cfg: Any) -> Any:
    """The tokenizer the worker will train with (``model.tokenizer`` or the model's), without the model.
    A built-in: its cached tokenizer, or the same one built in memory (engine.builtins)."""
    from engine import builtins
    from engine.errors import ConfigError, NetworkError, ValidationError
    from engine.hf_load import load_tokenizer

    name = cfg.model.name_or_path
    if builtins.is_builtin(name) and not cfg.model.tokenizer:
        return builtins.tokenizer(name)  # never builds the model
    src = cfg.model.tokenizer
    if not src:  # the model's name resolved as the worker resolves it (a run's checkpoint, a Hub id …)
        from engine.models import resolve_name

        try:
            src = resolve_name(name).tokenizer or name
        except ValidationError as exc:
            raise ConfigError(f"model.name_or_path: {exc}", hint=exc.hint, context=exc.context) from None
    try:
        return load_tokenizer(src, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        if "couldn't connect" in str(exc) and not Path(src).expanduser().exists():
            raise NetworkError(f"cannot fetch the tokenizer of {src!r} from the Hub: {first}",
                               hint="Check the network (or HF_HUB_OFFLINE), or use a local path.",
                               context={"tokenizer": src}) from None
        raise ConfigError(f"cannot load the tokenizer of {src!r}: {first}",
                          hint="Use a local path, a Hub id reachable from here, or builtin:tiny.",
                          context={"tokenizer": src}) from None


def preview(cfg: Any, cwd: Path | None = None) -> dict[str, Any]:
    """``example_prompt`` (the first training prompt as text exactly as the model will see it — the rendered
    template, its user text fitted to ``grpo.max_prompt_length`` when longer, the system prompt whole) and
    ``example_prompt_tokens``; with a limit, ``prompt_lengths`` and a ``prompt_warning`` when rows are trimmed.

    When the tokenizer or the dataset cannot be reached from here (offline, a Hub id), both are None and
    ``example_prompt_error`` says why; a config error (a missing prompt column) is raised."""
    from engine.errors import NetworkError
    from engine.trainer.data import load_rows

    fmt = PromptFormat.from_config(cfg)
    out: dict[str, Any] = {"prompt_format": fmt.as_dict()}
    try:
        tok = load_tokenizer(cfg)
        rows, _ = load_rows(cfg, cwd=cwd)
    except NetworkError as exc:
        return {**out, "example_prompt": None, "example_prompt_tokens": None, "templated": None,
                "example_prompt_error": f"{exc.code}: {exc}"}
    first = rows[0]["prompt"]
    inp = fit(first, tok, fmt, row=0)
    ids = encode_model_input(inp, tok)
    full = encode_model_input(model_input(first, tok, fmt), tok)
    text = render_input(inp, tok)
    out = {**out, "example_prompt": text, "example_prompt_tokens": len(ids), "templated": templated(tok, fmt),
           "example_prompt_truncated_from": len(full) if len(ids) < len(full) else None}
    if fmt.max_prompt_length:
        stats = overlong([r["prompt"] for r in rows], tok, fmt)
        out["prompt_lengths"] = stats
        if stats["trimmed"]:
            out["prompt_warning"] = (f"{stats['trimmed']} of {stats['checked']} training prompts exceed "
                                     f"grpo.max_prompt_length={fmt.max_prompt_length} tokens (longest "
                                     f"{stats['longest']}): their user text loses its start; the template and the "
                                     "system prompt stay whole")
    return out
