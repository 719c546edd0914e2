"""One loader for every stage: a :class:`~engine.models.names.ModelRef` → (model, tokenizer).

:func:`load_model` does the same thing for the worker (GRPO), the SFT stage, the eval gate, the agent eval,
infer, best-of, the try panel and probe:

* the tokenizer from ``ref.tokenizer`` (engine.hf_load: a local plain-backend tokenizer loads as itself), with
  ``trust_remote_code``; no pad token → the eos token; left padding (generation);
* the model with ``AutoModelForCausalLM.from_pretrained`` in the asked dtype (``auto``: the checkpoint's dtype on
  CUDA, float32 elsewhere), with ``trust_remote_code`` and ``quantization`` (4bit / 8bit through bitsandbytes:
  CUDA only; the weights are placed by transformers, never moved);
* a LoRA adapter (``ref.adapter``) on top with peft;
* ``generation_config.eos_token_id`` := :func:`engine.models.stops.stop_ids` — the one set every loop stops on;
* moved to ``device`` (unless quantized) and put in eval mode unless ``train=True``.

:meth:`LoadOptions.from_config` reads the options from a run's config (``model.*``, ``compute.device``), so an eval
of a run loads where and how the run trained unless told otherwise.

Failures are typed: a Hub model that cannot be fetched is ``carl.network``; anything else ``carl.validation``
(or the ``error`` class the caller passes, e.g. ``ConfigError`` from the worker).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.errors import NetworkError, ValidationError
from engine.models.names import ModelRef

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "4bit", "8bit")


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # auto | cpu | cuda | mps (auto: engine.devices.auto_device)
    dtype: str = "auto"
    quantization: str = "none"
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, cfg: Any, device: str | None = None, dtype: str | None = None) -> "LoadOptions":
        """A config's options (``model.dtype``, ``model.quantization``, ``model.trust_remote_code``,
        ``compute.device``); ``device`` / ``dtype`` override."""
        return cls(device=device or cfg.compute.device, dtype=dtype or cfg.model.dtype,
                   quantization=cfg.model.quantization, trust_remote_code=bool(cfg.model.trust_remote_code))

    def resolved_device(self) -> str:
        if self.device in (None, "", "auto"):
            from engine.devices import auto_device

            return auto_device()
        return self.device

    def key(self) -> tuple[Any, ...]:
        return (self.resolved_device(), self.dtype, self.quantization, self.trust_remote_code)


def torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ValidationError(f"unknown dtype {dtype!r}", hint="auto, float32, bfloat16 or float16.",
                              context={"dtype": dtype})
    return {"auto": "auto" if device == "cuda" else torch.float32, "float32": torch.float32,
            "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def quantization_config(quantization: str) -> Any:
    """transformers' BitsAndBytesConfig: NF4 with bf16 compute and double quantization, or LLM.int8."""
    if quantization in (None, "none"):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValidationError(f"unknown quantization {quantization!r}", hint="none, 4bit or 8bit.",
                          context={"quantization": quantization})


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().split("\n") or [""])[0][:300]


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False) -> Any:
    from engine.hf_load import load_tokenizer as _load

    tok = _load(ref.tokenizer or ref.model, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(ref: ModelRef, opts: LoadOptions | None = None, *, train: bool = False,
               error: type = ValidationError, log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for ``ref`` with ``opts`` (see the module's docstring)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    opts = opts or LoadOptions()
    device = opts.resolved_device()
    dtype = torch_dtype(opts.dtype, device)
    name = ref.label or ref.model
    quant = quantization_config(opts.quantization)
    if quant is not None and device != "cuda":
        raise error(f"{name!r} loads {opts.quantization}-quantized (bitsandbytes), which needs a CUDA GPU; the "
                    f"device here is {device}", hint="Load it on a CUDA machine, or unquantized (model.quantization: "
                    "none).", context={"model": ref.model, "quantization": opts.quantization, "device": device})
    if log:
        log(f"loading {name}" + (f" + adapter {ref.adapter}" if ref.adapter else "") + f" on {device}")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no tqdm on a terminal the workbench owns
    try:
        try:
            tok = load_tokenizer(ref, opts.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                ref.model, dtype=dtype, trust_remote_code=opts.trust_remote_code,
                **({"quantization_config": quant} if quant is not None else {}))
        except (OSError, ValueError, KeyError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            if "couldn't connect" in str(exc) and not offline and not Path(ref.model).exists():
                raise NetworkError(f"cannot fetch model {name!r} from the Hub: {_first_line(exc)}",
                                   hint="Check the network, or use a local directory / builtin:tiny.",
                                   context={"model": ref.model}) from None
            raise error(f"cannot load model {name!r}: {_first_line(exc)}",
                        hint="Use a local directory saved with save_pretrained, a run (RUN/checkpoint-N), "
                             "builtin:tiny, or a Hub id reachable from here.", context={"model": ref.model}) from None
        if ref.adapter:
            try:
                from peft import PeftModel

                with warnings.catch_warnings():  # deprecation chatter from transformers inside peft
                    warnings.simplefilter("ignore", FutureWarning)
                    model = PeftModel.from_pretrained(model, ref.adapter, is_trainable=train)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise error(f"cannot load adapter {ref.adapter!r} on {ref.model!r}: {_first_line(exc)}",
                            hint="Check that the adapter was trained on this base model.",
                            context={"adapter": ref.adapter, "model": ref.model}) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    from engine.models.stops import stop_ids

    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = stop_ids(model, tok)
        if gen.pad_token_id is None and tok.pad_token_id is not None:
            gen.pad_token_id = tok.pad_token_id
    if quant is None and not train:
        model.to(device)
    if not train:
        model.eval()
    return model, tok
