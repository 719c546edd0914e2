"""Make the observe readers' format fixtures from real (tiny, CPU, offline) TRL GRPOTrainer runs:

- ``trl_grpo_wandb/offline-run-…/run-<id>.wandb`` — ``report_to="wandb"`` with ``WANDB_MODE=offline`` (what
  people set on a box without network): the run file wandb's own core writes;
- ``trl_grpo_console/train.log`` — the same kind of run's console (stdout + stderr, tqdm bars and warnings
  included), what ``python train.py 2>&1 | tee train.log`` keeps;
- ``trl_grpo_nan/checkpoint-N/trainer_state.json`` — a run whose reward function starts returning inf (as a
  division by zero can), so the loss and gradient norm go NaN and transformers writes bare ``NaN`` (Python's json,
  allow_nan) into the checkpoint's state.

The model and task are make_trainer_state.py's (a 2-layer LlamaConfig model, a word-level tokenizer built
locally; rewards: contains "7", a length penalty). Nothing is downloaded. Run:

    .venv/bin/python tests/data/make_real_formats.py      # ~2 min on 2 CPU cores
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _run(kind: str, out: Path) -> None:
    import torch
    from datasets import Dataset
    from make_trainer_state import build_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix=f"carl-trl-{kind}-"))
    try:
        mdir = build_model_dir(root)
        model = AutoModelForCausalLM.from_pretrained(mdir)
        tokenizer = AutoTokenizer.from_pretrained(mdir)
        prompts = ["count to seven", "say a number", "the answer is", "count to"] * 8
        ds = Dataset.from_dict({"prompt": prompts})

        calls = [0]

        def has_seven(completions, **kw):
            calls[0] += 1
            if kind == "nan" and calls[0] > 3:  # a reward function that returns inf (e.g. a 1/0 in a score) from
                return [float("inf") if "7" not in c else 1.0 for c in completions]  # the 4th batch on
            return [1.0 if "7" in c else 0.0 for c in completions]

        def short(completions, **kw):
            return [-0.05 * len(c.split()) for c in completions]

        common = dict(output_dir=str(root / "out"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, logging_steps=1, beta=0.04, seed=0, use_cpu=True, bf16=False,
                      log_completions=False, temperature=1.0)
        if kind == "wandb":
            os.environ["WANDB_MODE"] = "offline"
            os.environ["WANDB_DIR"] = str(root)
            os.environ["WANDB_SILENT"] = "true"
            os.environ["WANDB_PROJECT"] = "carl-observe-fixture"
            args = GRPOConfig(**common, max_steps=8, save_strategy="no", learning_rate=5e-3, report_to="wandb",
                              run_name="trl-grpo-offline")
        elif kind == "console":
            args = GRPOConfig(**common, max_steps=8, save_strategy="no", learning_rate=5e-3, report_to="none",
                              disable_tqdm=False)
        else:  # nan: a reward function that starts returning inf poisons the loss and the gradient
            args = GRPOConfig(**common, max_steps=6, save_strategy="steps", save_steps=6, learning_rate=5e-3,
                              report_to="none")
        trainer = GRPOTrainer(model=model, reward_funcs=[has_seven, short], args=args, train_dataset=ds,
                              processing_class=tokenizer)
        trainer.train()
        if kind == "wandb":
            import wandb

            wandb.finish()  # flush and close the run file (its exit record) before copying it
        if kind == "console":
            return  # the parent keeps this process's output
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        if kind == "wandb":
            files = sorted(root.rglob("run-*.wandb"))
            dest = out / files[-1].parent.name
            dest.mkdir()
            shutil.copy(files[-1], dest / files[-1].name)
        elif kind == "nan":
            states = sorted((root / "out").glob("checkpoint-*/trainer_state.json"))
            dest = out / states[-1].parent.name
            dest.mkdir()
            shutil.copy(states[-1], dest / "trainer_state.json")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1:  # one kind, in this process (the console kind is run as a child: its output is the file)
        kind = sys.argv[1]
        _run(kind, HERE / f"trl_grpo_{kind}")
        return 0
    for kind in ("wandb", "nan"):
        subprocess.run([sys.executable, __file__, kind], check=True)
    out = HERE / "trl_grpo_console"
    out.mkdir(exist_ok=True)
    with open(out / "train.log", "wb") as fh:  # stdout and stderr interleaved, as `2>&1 | tee` keeps them
        subprocess.run([sys.executable, __file__, "console"], stdout=fh, stderr=subprocess.STDOUT, check=True)
    print("wrote", ", ".join(str(p.relative_to(HERE)) for p in sorted(HERE.glob("trl_grpo_*/**/*")) if p.is_file()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
