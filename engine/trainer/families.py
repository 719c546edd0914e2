"""Model families: what carl does differently per architecture, and tiny random-init models of each.

* :func:`lora_targets` — the LoRA target modules for a model: ``all-linear`` (PEFT: every ``nn.Linear`` but
  the output layer) for dense families; **attention only** (q/k/v/o projections) for mixture-of-experts
  models, so an adapter never wraps the experts or the router. ``lora.target_modules`` as a list is used as
  given; ``all-linear`` and ``auto`` resolve per family.
* :func:`check_quantization` / :func:`quantization_config` — ``model.quantization: 4bit | 8bit`` loads the base
  weights through bitsandbytes (NF4 with bf16 compute and double quantization, or LLM.int8). It needs CUDA,
  the ``bitsandbytes`` package (imported only then; not a carl dependency) and LoRA; anything else is a
  ``carl.config`` error naming the field.
* :func:`build_tiny` — a random-init model of a real family with its **real vocabulary size** (Qwen2/Qwen2.5
  and Qwen3 151,936; Llama 3 128,256; Gemma 3 262,144; Qwen3-MoE 151,936; Mistral 32,768), the eos ids its real
  generation config ships (Gemma 3: tokenizer eos ``<eos>``, ``<end_of_turn>`` in the generation config only;
  Llama 3 Instruct: ``<|eot_id|>`` and friends; Qwen: ``<|im_end|>``, ``<|endoftext|>``), a tokenizer built locally with
  ``tokenizers`` (byte-level BPE: the family's special tokens, the 256 byte pieces, filler pieces up to the
  vocabulary size), a chat template written in the family's format, saved with ``save_pretrained`` so it
  loads through ``from_pretrained``. Tests, ``bench/memory.py`` and ``bench/gpu_check.py`` use it; nothing is
  downloaded. ``shape="qwen2.5-0.5b"`` gives Qwen2.5-0.5B's real dimensions (random weights).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MOE_TYPES = {"qwen3_moe", "qwen2_moe", "qwen3_next", "qwen3_5_moe", "mixtral", "olmoe", "granitemoe",
             "granitemoeshared", "phimoe", "deepseek_v2", "deepseek_v3", "dbrx", "jamba", "gpt_oss", "llama4_text",
             "minimax", "ernie4_5_moe", "glm4_moe", "hunyuan_v1_moe"}
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

CHATML = ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{{ '<|begin_of_text|>' }}{%- for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
          "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
# Mistral (v0.3 Instruct's shape): [INST] user [/INST] answer</s>; a system message goes before the first user text.
MISTRAL = ("{{ bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}{%- if m['role'] == 'system' %}"
           "{%- set ns.system = m['content'] + '\n\n' %}{%- elif m['role'] == 'user' %}{{ '[INST] ' + ns.system + "
           "m['content'] + ' [/INST]' }}{%- set ns.system = '' %}{%- else %}{{ m['content'] + eos_token }}{%- endif %}"
           "{%- endfor %}")
# Gemma has no system turn: a system message is prepended to the first user turn.
GEMMA = ("{{ bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}{%- if m['role'] == 'system' %}"
         "{%- set ns.system = m['content'] + '\\n\\n' %}{%- else %}{%- set role = 'model' if m['role'] == 'assistant' "
         "else m['role'] %}{{ '<start_of_turn>' + role + '\\n' + ns.system + m['content'] + '<end_of_turn>\\n' }}"
         "{%- set ns.system = '' %}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
         "{{ '<start_of_turn>model\\n' }}{%- endif %}")


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    vocab_size: int
    chat_template: str
    pad: str
    eos: str  # the tokenizer's eos token
    bos: str | None
    specials: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    # the generation config's eos_token_id, as the real checkpoints ship it (None: the tokenizer's eos alone).
    # Gemma 3: tokenizer eos <eos>, the turn ends at <end_of_turn> (in generation_config only).
    gen_eos: tuple[str, ...] | None = None


FAMILIES: dict[str, Family] = {
    "qwen2": Family("qwen2", "qwen2", 151_936, CHATML, "<|endoftext|>", "<|im_end|>", None,
                    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), {"tie_word_embeddings": True},
                    gen_eos=("<|im_end|>", "<|endoftext|>")),
    "qwen3": Family("qwen3", "qwen3", 151_936, CHATML, "<|endoftext|>", "<|im_end|>", None,
                    ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
                    {"tie_word_embeddings": True}, gen_eos=("<|im_end|>", "<|endoftext|>")),
    "llama": Family("llama", "llama", 128_256, LLAMA3, "<|finetune_right_pad_id|>", "<|eot_id|>",
                    "<|begin_of_text|>", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                          "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
                                          "<|eom_id|>"),
                    {"tie_word_embeddings": True}, gen_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    "gemma3": Family("gemma3", "gemma3_text", 262_144, GEMMA, "<pad>", "<eos>", "<bos>",
                     ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                     {"sliding_window": 64, "final_logit_softcapping": 30.0}, gen_eos=("<eos>", "<end_of_turn>")),
    "mistral": Family("mistral", "mistral", 32_768, MISTRAL, "<unk>", "</s>", "<s>",
                      ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), {"tie_word_embeddings": False}),
    "qwen3_moe": Family("qwen3_moe", "qwen3_moe", 151_936, CHATML, "<|endoftext|>", "<|im_end|>", None,
                        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
                        {"num_experts": 4, "num_experts_per_tok": 2, "tie_word_embeddings": False}),
}

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B(-Instruct)'s published dimensions
    "qwen2.5-0.5b": {"family": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "tie_word_embeddings": True},
}


# ------------------------------------------------------------------------------------------------ LoRA targets
def _config_of(model_or_config: Any) -> Any:
    cfg = getattr(model_or_config, "config", model_or_config)
    text = getattr(cfg, "get_text_config", None)
    return text() if callable(text) else cfg


def is_moe(model_or_config: Any) -> bool:
    """A mixture-of-experts model: a known MoE ``model_type`` or an expert count > 1 in its config."""
    cfg = _config_of(model_or_config)
    if getattr(cfg, "model_type", None) in MOE_TYPES:
        return True
    return any(isinstance(getattr(cfg, k, None), int) and getattr(cfg, k) > 1 for k in _EXPERT_KEYS)


def lora_targets(model: Any, configured: list[str] | str) -> list[str] | str:
    """The LoRA ``target_modules`` for ``model``: a configured list as given; ``all-linear`` / ``auto`` →
    ``all-linear`` for dense models, the attention projections present in the model for MoE models."""
    if isinstance(configured, list):
        return configured
    if not is_moe(model):
        return "all-linear"
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()} if hasattr(model, "named_modules") else set()
    present = [a for a in ATTENTION if a in names]
    return present or list(ATTENTION)


# ------------------------------------------------------------------------------------------------ quantization
def check_quantization(cfg: Any, device: str) -> None:
    """Refuse a quantized load that cannot work here (``carl.config``, exit 2)."""
    q = cfg.model.quantization
    if q == "none":
        return
    ctx = {"field": "model.quantization", "quantization": q, "device": device}
    if not cfg.lora.enabled:
        raise ConfigError(f"model.quantization={q} trains LoRA adapters on frozen quantized weights: it needs "
                          "lora.enabled: true", hint="Set lora.enabled: true, or model.quantization: none.",
                          context=ctx)
    if device != "cuda":
        raise ConfigError(f"model.quantization={q} needs a CUDA GPU (bitsandbytes); this run's device is {device}",
                          hint="Use model.quantization: none here, or run on a CUDA machine (carl --batch doctor "
                               "says what this machine can load).", context=ctx)
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"model.quantization={q} needs the bitsandbytes package, which is not installed",
                          hint="pip install bitsandbytes (on the CUDA machine), or model.quantization: none.",
                          context=ctx)


def quantization_config(cfg: Any) -> Any:
    """transformers' BitsAndBytesConfig for ``model.quantization`` (None for ``none``)."""
    from engine.models.load import quantization_config as _bnb

    return _bnb(cfg.model.quantization)


# ------------------------------------------------------------------------------------------------ tiny models
def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (GPT-2's convention: printable
    Latin-1 bytes stand for themselves, the others map to code points from 256 upwards, in byte order)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def build_tokenizer(family: str | Family, vocab_size: int | None = None):
    """A byte-level BPE tokenizer of the family's real vocabulary size: its special tokens, the 256 byte
    pieces (no merges: any text encodes byte by byte and decodes back exactly), then filler pieces up to
    ``vocab_size``; the family's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[family] if isinstance(family, str) else family
    size = vocab_size or fam.vocab_size
    pieces = list(fam.specials) + byte_alphabet()
    if size < len(pieces):
        raise ValueError(f"vocab_size {size} is smaller than the {len(pieces)} base pieces")
    pieces += [f"<|x{i}|>" for i in range(size - len(pieces))]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    kw: dict[str, Any] = {"pad_token": fam.pad, "eos_token": fam.eos}
    if fam.bos:
        kw["bos_token"] = fam.bos
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left",
                                   additional_special_tokens=[s for s in fam.specials if s not in kw.values()], **kw)
    fast.chat_template = fam.chat_template
    return fast


def tiny_config(family: str, *, vocab_size: int | None = None, hidden: int = 32, layers: int = 2,
                shape: str | None = None, tok: Any = None):
    """A transformers config of ``family`` (or of a named real ``shape``) with tiny or real dimensions."""
    from transformers import AutoConfig

    dims: dict[str, Any]
    if shape is not None:
        dims = {k: v for k, v in SHAPES[shape].items() if k != "family"}
        family = SHAPES[shape]["family"]
    else:
        heads = 2
        dims = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": 1, "head_dim": hidden // heads,
                "max_position_embeddings": 512}
    fam = FAMILIES[family]
    dims = {**fam.extra, **dims}
    if fam.model_type == "qwen3_moe":
        dims.setdefault("moe_intermediate_size", dims["hidden_size"])
    if fam.model_type == "gemma3_text":
        dims["query_pre_attn_scalar"] = dims.get("head_dim", dims["hidden_size"] // dims["num_attention_heads"])
    ids: dict[str, Any] = {}
    if tok is not None:
        ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
               "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id}
    return AutoConfig.for_model(fam.model_type, vocab_size=vocab_size or fam.vocab_size, **dims, **ids)


def build_tiny(family: str, out: str | Path, *, hidden: int = 32, layers: int = 2, seed: int = 0,
               vocab_size: int | None = None, shape: str | None = None, dtype: Any = None) -> Path:
    """Build (once: an existing ``out/config.json`` is kept), save and return a random-init model of ``family``
    with its tokenizer and chat template, loadable with ``AutoModelForCausalLM.from_pretrained(out)``."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    fam_name = SHAPES[shape]["family"] if shape else family
    tok = build_tokenizer(fam_name, vocab_size)
    config = tiny_config(fam_name, vocab_size=vocab_size, hidden=hidden, layers=layers, shape=shape, tok=tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    fam = FAMILIES[fam_name]
    gen_eos = [tok.convert_tokens_to_ids(t) for t in fam.gen_eos] if fam.gen_eos else []
    model.generation_config.eos_token_id = gen_eos if len(gen_eos) > 1 else (gen_eos or [tok.eos_token_id])[0]
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
