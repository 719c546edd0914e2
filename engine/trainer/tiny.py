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
import shutil
import sys
import time
from pathlib import Path
from typing import Any

VERSION = 3  # 3: the warm start is engine/trainer/sft.py (TRL's SFTTrainer), the pipeline's sft stage
CHARS = list("0123456789+=")
PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
HELDOUT_N = 200
HELDOUT_SEED = 1234
VAL_N = 256  # a validation slice of the *training* pairs: the warm start stops on it, never on the held-out set
# The warm start is the pipeline's sft stage (engine/trainer/sft.py) with config.PipelineSFT's defaults: by
# default it stops at the first check (every check_every steps) where greedy accuracy on the validation slice
# reaches the target (0.35): a partly trained model (~33% held-out) that GRPO can visibly improve. Learning on
# this task is a steep transition (≈5% → 50% within ~40 steps), so a fixed step count lands anywhere in it.
SFT_TARGET = 0.35
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


def sft_settings(steps: int | None = None, target: float | None = None):
    """The demo's warm-start settings: the pipeline's sft defaults, with a fixed step count or a target."""
    from engine.config import PipelineSFT

    s = PipelineSFT(val_n=VAL_N)
    return s.model_copy(update={"steps": steps, "target": target if target is not None else s.target})


def warm_start(model, tok, *, steps: int | None, target: float | None, log=None, output_dir: Path):
    """The demo's warm start: exactly the pipeline's sft stage on the demo config (engine/trainer/pipeline.py):
    engine.trainer.sft.train_sft on the demo's training rows (engine.trainer.data.load_rows), stopping on the
    task metric of its validation slice. Returns (model, SFTResult)."""
    from engine.config import Config
    from engine.trainer.data import load_rows
    from engine.trainer.evalgate import task_accuracy
    from engine.trainer.sft import train_sft

    cfg = Config()
    train_rows, _ = load_rows(cfg)
    settings = sft_settings(steps, target)
    val = train_rows[:settings.val_n]
    from engine.prompts import PromptFormat

    return train_sft(model, tok, train_rows, settings, output_dir=output_dir, device="cpu",
                     val_metric=lambda m: task_accuracy(m, tok, val, cfg), log=log, fmt=PromptFormat.from_config(cfg))


def greedy_accuracy(model, tok, pairs, *, max_new_tokens: int = 5, batch: int = 100) -> float:
    """Fraction of ``pairs`` whose greedy completion is exactly the sum."""
    import torch

    from engine.models.stops import stop_ids

    model.eval()
    correct = 0
    for i in range(0, len(pairs), batch):
        chunk = pairs[i: i + batch]
        enc = tok([prompt_of(a, b) for a, b in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stop_ids(model, tok))
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(t.strip() == str(a + b) for t, (a, b) in zip(texts, chunk))
    return correct / max(1, len(pairs))


def ensure_tiny(root: Path | None = None, *, sft_steps: int | None = None, target: float | None = None,
                log=None) -> Path:
    """Build (once) and return the directory holding the warm-started tiny model and its tokenizer.

    ``sft_steps`` (or ``CARL_TINY_SFT_STEPS``): a fixed number of warm-start steps (0 = untrained); otherwise
    train until the validation accuracy reaches ``target`` (or ``CARL_TINY_SFT_TARGET``, default SFT_TARGET)."""
    from filelock import FileLock, Timeout

    sft_steps = sft_steps if sft_steps is not None else sft_steps_default()
    target = target if target is not None else sft_target_default()
    out = tiny_dir(root, sft_steps, target)
    if (out / "carl_tiny.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another carl process builds it: wait (below), and say so — never silently
        say = log or (lambda m: print(m, file=sys.stderr, flush=True))
        say(f"tiny: waiting for another carl process building the demo model ({out}.lock)")
    else:
        lock.release()
    with lock:
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
        _, heldout = split_pairs()
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        done, val_acc = 0, None
        if sft_steps != 0:
            model, res = warm_start(model, tok, steps=sft_steps, target=target, log=log,
                                    output_dir=tmp.with_name(tmp.name + "-sft"))
            done, val_acc = res.steps, res.val_metric
            shutil.rmtree(tmp.with_name(tmp.name + "-sft"), ignore_errors=True)
        acc = greedy_accuracy(model, tok, heldout)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "carl_tiny.json").write_text(json.dumps(
            {"version": VERSION, "sft_steps": done, "sft_target": None if sft_steps is not None else target,
             "val_accuracy": val_acc, "heldout_accuracy": acc, "build_s": time.time() - t0,
             "n_params": sum(p.numel() for p in model.parameters())}), encoding="utf-8")
        if out.exists():  # a torn earlier build
            shutil.rmtree(out)
        tmp.rename(out)
        if log:
            log(f"tiny: built in {time.time() - t0:.1f}s ({done} warm-start steps), held-out accuracy {acc:.3f}")
    return out


def info(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "carl_tiny.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- built-in
# The registry's protocol (engine/builtins.py): builtin:tiny (model) and builtin:addition (dataset).
def ensure(log=None) -> Path:
    return ensure_tiny(log=log)


def tokenizer():
    """The cached demo's tokenizer, or the same character tokenizer built in memory (never builds the model)."""
    d = tiny_dir()
    if (d / "tokenizer.json").is_file():
        from engine.hf_load import load_tokenizer

        return load_tokenizer(d)
    return build_tokenizer()


def provenance() -> dict[str, Any] | None:
    """The cached build's record (version, warm-start steps, target, size); None when it is not built."""
    d = tiny_dir()
    if not (d / "carl_tiny.json").is_file():
        return None
    meta = info(d)
    return {k: meta.get(k) for k in ("version", "sft_steps", "sft_target", "n_params")}


def load_rows(cfg) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """builtin:addition: the seeded, shuffled training pairs (``dataset.max_samples`` of them) and the held-out set."""
    train_pairs, heldout = split_pairs()
    random.Random(cfg.grpo.seed).shuffle(train_pairs)
    train = rows(train_pairs)
    if cfg.dataset.max_samples:
        train = train[: cfg.dataset.max_samples]
    return train, rows(heldout)
