"""Loading a tokenizer the way it was saved.

transformers 5's ``AutoTokenizer`` picks the tokenizer class from the *model* config for some model types (qwen2,
phi3, … — its ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``) and rebuilds the tokenizer from the vocab and merges
with that class's own pre-tokenizer. For a tokenizer built locally with ``tokenizers`` (carl's demo models; saved
as ``TokenizersBackend``) that silently changes how text splits: the agent demo's digit-splitting tokenizer,
saved beside its Qwen2 ``config.json`` in a run's ``final/``, came back as a Qwen2Tokenizer that no longer split
digits. A *local* directory whose ``tokenizer_config.json`` names the plain backend is therefore loaded as
exactly that file; everything else (Hub ids, model-specific classes) goes through ``AutoTokenizer`` unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAIN_BACKENDS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def saved_as_plain_backend(src: str | Path) -> bool:
    cfg = Path(src).expanduser() / "tokenizer_config.json"
    if not (cfg.is_file() and (cfg.parent / "tokenizer.json").is_file()):
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class") in PLAIN_BACKENDS
    except (OSError, ValueError):
        return False


def load_tokenizer(src: str | Path, **kwargs: Any):
    """``AutoTokenizer.from_pretrained(src)``, except that a local plain-backend tokenizer loads as itself."""
    if saved_as_plain_backend(src):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(src), **{k: v for k, v in kwargs.items()
                                                                     if k != "trust_remote_code"})
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(src) if isinstance(src, Path) else src, **kwargs)
