"""Make tests/data/trl_grpo_tb/ — the TensorBoard event file a real (tiny, CPU, offline) TRL GRPOTrainer run
writes with ``report_to="tensorboard"``.

The same model and task as make_trainer_state.py (a 2-layer LlamaConfig model and a word-level tokenizer built
locally, saved and reloaded with ``from_pretrained``; rewards: contains "7", a length penalty), 6 optimisation
steps, logged by transformers' TensorBoardCallback (torch.utils.tensorboard's SummaryWriter) into
``TENSORBOARD_LOGGING_DIR``. Nothing is downloaded. Run:

    .venv/bin/python tests/data/make_tb_events.py            # writes tests/data/trl_grpo_tb/

It takes under a minute on 2 CPU cores. The committed directory holds the one ``events.out.tfevents.*`` file
(scalars ``train/reward``, ``train/kl``, ``train/frac_reward_zero_std``, ``train/grad_norm`` …, text ``args``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_trainer_state import build_model_dir  # noqa: E402

OUT = Path(__file__).resolve().parent / "trl_grpo_tb"


def main() -> int:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="carl-trl-tb-"))
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(root / "tb")
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
                          max_completion_length=8, max_steps=6, logging_steps=1, save_strategy="no",
                          learning_rate=5e-3, beta=0.04, report_to="tensorboard", seed=0, use_cpu=True,
                          bf16=False, log_completions=False, temperature=1.0)
        trainer = GRPOTrainer(model=model, reward_funcs=[has_seven, short], args=args, train_dataset=ds,
                              processing_class=tokenizer)
        trainer.train()
        events = sorted((root / "tb").rglob("events.out.tfevents.*"))
        if len(events) != 1:
            print(f"expected one event file, found {events}", file=sys.stderr)
            return 1
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        shutil.copy(events[0], OUT / events[0].name)
        print(f"wrote {OUT / events[0].name} ({events[0].stat().st_size} bytes)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
