"""Make tests/data/trl_grpo/trainer_state.json with a real (tiny, CPU, offline) TRL GRPOTrainer run.

A 2-layer LlamaConfig model with a word-level tokenizer built locally with `tokenizers`, saved and reloaded
with `from_pretrained`; a toy task (reward: completions that contain the digit "7", plus a length penalty
reward); 8 optimisation steps. Nothing is downloaded. Run:

    .venv/bin/python tests/data/make_trainer_state.py            # writes tests/data/trl_grpo/

It takes about a minute on 2 CPU cores. The committed file is the `trainer_state.json` of the last
checkpoint (TRL writes `log_history` with reward, kl, entropy, completions/*, frac_reward_zero_std, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp())

OUT = Path(__file__).resolve().parent / "trl_grpo"


def build_model_dir(root: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [str(d) for d in range(10)] + \
        "count to seven say a number the answer is".split()
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    d = root / "tiny-llama"
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


def main() -> int:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="carl-trl-"))
    try:
        mdir = build_model_dir(root)
        model = AutoModelForCausalLM.from_pretrained(mdir)
        tokenizer = AutoTokenizer.from_pretrained(mdir)
        prompts = ["count to seven", "say a number", "the answer is", "count to"] * 8
        ds = Dataset.from_dict({"prompt": prompts})

        def has_seven(completions, **kw):
            return [1.0 if "7" in c else 0.0 for c in completions]

        def short(completions, **kw):
            return [-0.05 * len(c.split()) for c in completions]

        args = GRPOConfig(output_dir=str(root / "out"), per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=8, max_steps=8, logging_steps=1, save_steps=8,
                          learning_rate=5e-3, beta=0.04, report_to="none", seed=0, use_cpu=True,
                          bf16=False, save_only_model=True, log_completions=False, temperature=1.0)
        trainer = GRPOTrainer(model=model, reward_funcs=[has_seven, short], args=args, train_dataset=ds,
                              processing_class=tokenizer)
        trainer.train()
        ckpts = sorted((root / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        state = ckpts[-1] / "trainer_state.json"
        OUT.mkdir(parents=True, exist_ok=True)
        shutil.copy(state, OUT / "trainer_state.json")
        n = len(json.loads(state.read_text())["log_history"])
        print(f"wrote {OUT / 'trainer_state.json'} ({n} log_history entries)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
