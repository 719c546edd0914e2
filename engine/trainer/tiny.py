"""The built-in demo: a tiny Llama-style model, a character tokenizer trained locally with ``tokenizers``, and
2-digit addition as the verifiable task. Built once (SFT warm start included) and cached under
``$CARL_HOME/cache/tiny-v<N>`` (or ``$CARL_TINY_CACHE``); no downloads.

Prompts look like ``"37+45="``; the answer is ``"82"`` followed by the end-of-sequence token. The held-out set
(``HELDOUT_N`` fixed pairs) is never used in the warm start nor in GRPO training.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

VERSION = 2
CHARS = list("0123456789+=")
PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
HELDOUT_N = 200
HELDOUT_SEED = 1234
VAL_N = 256  # a validation slice of the *training* pairs: the warm start stops on it, never on the held-out set
# The warm start: AdamW, linear warm-up then cosine decay over SFT_MAX_STEPS, gradient clipping 1.0. By default it
# stops at the first check (every SFT_CHECK_EVERY steps) where greedy accuracy on the validation slice reaches
# SFT_TARGET: a partly trained model (~35% held-out) that GRPO can visibly improve. Learning on this task is a
# steep transition (≈5% → 50% within ~40 steps), so a fixed step count lands anywhere in it; a target does not.
SFT_TARGET = 0.35
SFT_MAX_STEPS = 400
SFT_WARMUP = 40
SFT_CHECK_EVERY = 5
SFT_BATCH = 128
SFT_LR = 3e-3
MODEL_KW = dict(hidden_size=96, intermediate_size=288, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=32)


# ----------------------------------------------------------------------------------------------- task
def all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in range(10, 100) for b in range(10, 100)]


def split_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train pairs, held-out pairs): a fixed, seeded split."""
    pairs = all_pairs()
    rng = random.Random(HELDOUT_SEED)
    rng.shuffle(pairs)
    return pairs[HELDOUT_N:], pairs[:HELDOUT_N]


def prompt_of(a: int, b: int) -> str:
    return f"{a}+{b}="


def rows(pairs: list[tuple[int, int]]) -> list[dict[str, str]]:
    return [{"prompt": prompt_of(a, b), "answer": str(a + b)} for a, b in pairs]


# ----------------------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    raw = os.environ.get("CARL_TINY_CACHE")
    if raw:
        return Path(raw).expanduser()
    from engine.home import carl_home

    return carl_home().cache


def sft_steps_default() -> int | None:
    """A fixed warm-start step count from ``CARL_TINY_SFT_STEPS`` (tests and ablations), else None: train to
    the accuracy target (``CARL_TINY_SFT_TARGET``, default SFT_TARGET)."""
    raw = os.environ.get("CARL_TINY_SFT_STEPS")
    return int(raw) if raw and raw.isdigit() else None


def sft_target_default() -> float:
    raw = os.environ.get("CARL_TINY_SFT_TARGET")
    try:
        return float(raw) if raw else SFT_TARGET
    except ValueError:
        return SFT_TARGET


def tiny_dir(root: Path | None = None, sft_steps: int | None = None, target: float | None = None) -> Path:
    steps = sft_steps if sft_steps is not None else sft_steps_default()
    tag = f"sft{steps}" if steps is not None else f"acc{round(100 * (target if target is not None else sft_target_default()))}"
    return (root or cache_root()) / f"tiny-v{VERSION}-{tag}"


def build_tokenizer():
    """A character-level WordLevel tokenizer, trained with ``tokenizers`` on the task's own text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, EOS, BOS], min_frequency=1)
    corpus = [f"{prompt_of(a, b)}{a + b}" for a, b in all_pairs()[::7]] + ["".join(CHARS)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS,
                                   unk_token=PAD, padding_side="left")
    return fast


def _encode_example(tok, a: int, b: int) -> tuple[list[int], int]:
    ids = tok(prompt_of(a, b), add_special_tokens=False)["input_ids"]
    ans = tok(str(a + b), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids + ans, len(ids)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    import math

    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _sft(model, tok, pairs, steps: int | None, seed: int, *, target: float | None = None, val=None,
         log=None) -> tuple[int, float | None]:
    """Supervised warm start: loss on the answer tokens + EOS only (prompt positions masked with -100), rows
    right-padded (prompts all have the same length, so positions match generation). ``steps`` fixed, or
    (``steps`` None) up to SFT_MAX_STEPS stopping once greedy accuracy on ``val`` ≥ ``target``.
    Returns (steps done, last validation accuracy or None)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    total = steps if steps is not None else SFT_MAX_STEPS
    warmup = min(SFT_WARMUP, max(1, total // 10))
    opt = torch.optim.AdamW(model.parameters(), lr=SFT_LR, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, warmup))
    encoded = {p: _encode_example(tok, *p) for p in pairs}
    val_acc = None
    done = 0
    model.train()
    for step in range(total):
        batch = [encoded[rng.choice(pairs)] for _ in range(SFT_BATCH)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, plen) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attn[i, : len(ids)] = 1
            labels[i, plen: len(ids)] = torch.tensor(ids[plen:])
        out = model(input_ids=input_ids, attention_mask=attn, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if log and done % 50 == 0:
            log(f"tiny: warm start step {done} loss {out.loss.item():.3f}")
        if steps is None and target is not None and val and done % SFT_CHECK_EVERY == 0 and out.loss.item() < 1.2:
            val_acc = greedy_accuracy(model, tok, val)
            model.train()
            if val_acc >= target:
                break
    model.eval()
    return done, val_acc


def greedy_accuracy(model, tok, pairs, *, max_new_tokens: int = 5, batch: int = 100) -> float:
    """Fraction of ``pairs`` whose greedy completion is exactly the sum."""
    import torch

    model.eval()
    correct = 0
    for i in range(0, len(pairs), batch):
        chunk = pairs[i: i + batch]
        enc = tok([prompt_of(a, b) for a, b in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(t.strip() == str(a + b) for t, (a, b) in zip(texts, chunk))
    return correct / max(1, len(pairs))


def ensure_tiny(root: Path | None = None, *, sft_steps: int | None = None, target: float | None = None,
                log=None) -> Path:
    """Build (once) and return the directory holding the warm-started tiny model and its tokenizer.

    ``sft_steps`` (or ``CARL_TINY_SFT_STEPS``): a fixed number of warm-start steps (0 = untrained); otherwise
    train until the validation accuracy reaches ``target`` (or ``CARL_TINY_SFT_TARGET``, default SFT_TARGET)."""
    from filelock import FileLock

    sft_steps = sft_steps if sft_steps is not None else sft_steps_default()
    target = target if target is not None else sft_target_default()
    out = tiny_dir(root, sft_steps, target)
    if (out / "carl_tiny.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "carl_tiny.json").is_file():
            return out
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        t0 = time.time()
        if log:
            log("tiny: building the demo model (once; cached)")
        tok = build_tokenizer()
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id, tie_word_embeddings=True, **MODEL_KW)
        model = LlamaForCausalLM(config)
        train_pairs, heldout = split_pairs()
        val = train_pairs[:VAL_N]
        done, val_acc = _sft(model, tok, train_pairs, sft_steps, seed=0, target=None if sft_steps is not None else target,
                             val=val, log=log) if sft_steps != 0 else (0, None)
        acc = greedy_accuracy(model, tok, heldout)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "carl_tiny.json").write_text(json.dumps(
            {"version": VERSION, "sft_steps": done, "sft_target": None if sft_steps is not None else target,
             "val_accuracy": val_acc, "heldout_accuracy": acc, "build_s": time.time() - t0,
             "n_params": sum(p.numel() for p in model.parameters())}), encoding="utf-8")
        if out.exists():  # a torn earlier build
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        if log:
            log(f"tiny: built in {time.time() - t0:.1f}s ({done} warm-start steps), held-out accuracy {acc:.3f}")
    return out


def info(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "carl_tiny.json").read_text(encoding="utf-8"))
