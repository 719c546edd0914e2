"""A tiny tool-calling model built locally (no downloads): a byte-level tokenizer trained by nothing (256 byte
tokens + the chat markers), TRL's own Qwen2.5 chat template (it renders tools, and TRL knows how to parse its
``<tool_call>`` blocks), and a random-init Qwen2-architecture model, optionally warm-started on transcripts.

Used by the agent tests and as the starting point of the agent demo (docs/agents.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MODEL_KW = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=qwen2_5_chat_template)
    fast.padding_side = "left"
    return fast


def build_tokenizer(corpus: Sequence[str] | None = None, vocab_size: int = 2048, *, split_digits: bool = False):
    """Byte-level; with a ``corpus`` (e.g. rendered prompts and transcripts), BPE merges are trained on it so the
    long tool-schema system prompt becomes a few tokens: every byte still encodes, only faster.
    ``split_digits``: every digit is its own token (no merge spans one), so a number reads and writes the same
    in a question, a query and a tool result."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if split_digits else byte_level
    if corpus:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=alphabet,
                                      show_progress=False, min_frequency=2)
        tok.train_from_iterator(list(corpus), trainer=trainer)
        return _wrap(tok)
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    return _wrap(tok)


def build_model(tokenizer, seed: int = 0, **sizes: Any):
    """A random-init Qwen2-architecture model (``sizes`` override MODEL_KW's)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **{**MODEL_KW, **sizes})
    return Qwen2ForCausalLM(cfg)


def transcript_ids(tokenizer, prompt: list[dict[str, Any]], reply: list[dict[str, Any]],
                   tools: Sequence[Callable] | None) -> tuple[list[int], int]:
    """(token ids of prompt + reply, number of prompt tokens) rendered with the chat template."""
    p = tokenizer.apply_chat_template(prompt, tools=list(tools or []) or None, add_generation_prompt=True,
                                      tokenize=False)
    full = tokenizer.apply_chat_template(prompt + reply, tools=list(tools or []) or None, tokenize=False)
    if not full.startswith(p):
        raise ValueError("the chat template does not extend the prompt with the reply")
    # prompt and reply tokenized apart, as generation sees them: merges trained across the whole text would
    # otherwise span the boundary and the warm start would learn from a prompt the model never gets
    pid = tokenizer(p, add_special_tokens=False)["input_ids"]
    rid = tokenizer(full[len(p):], add_special_tokens=False)["input_ids"]
    return pid + rid, len(pid)


def warm_start(model, tokenizer, examples: Sequence[tuple[list[dict], list[dict]]], tools: Sequence[Callable],
               *, steps: int = 200, lr: float = 3e-3, batch: int = 4, seed: int = 0,
               stop: Callable[[int, float], bool] | None = None) -> list[float]:
    """Supervised warm start on (prompt messages, reply messages) transcripts; the loss is over reply tokens only
    (the tool results inside a reply count too: they are what a transcript shows the model next)."""
    import random

    import torch

    rng = random.Random(seed)
    encoded = [transcript_ids(tokenizer, p, r, tools) for p, r in examples]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    pad = tokenizer.pad_token_id
    losses: list[float] = []
    model.train()
    for step in range(steps):
        chunk = [encoded[rng.randrange(len(encoded))] for _ in range(batch)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (seq, plen) in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, plen: len(seq)] = torch.tensor(seq[plen:])
            attn[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if stop is not None and stop(step, losses[-1]):
            break
    model.eval()
    return losses


def save(model, tokenizer, path: str | Path) -> Path:
    """The model in ``path``, the tokenizer in ``path/tokenizer`` (set ``model.tokenizer`` to it): beside a
    qwen2 ``config.json`` AutoTokenizer would load a Qwen2Tokenizer, whose own pre-tokenizer splits text
    differently from the merges trained here; alone, the tokenizer loads as itself."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path / "tokenizer")
    return path
