"""The ``sft`` stage: TRL's ``SFTTrainer`` on prompt → answer pairs (docs/train.md, "Pipeline").

Rows become TRL's prompt-completion format (``{"prompt", "completion"}``), so the loss is on the completion
only (TRL appends the end-of-sequence token to each completion). Training stops after ``steps`` optimizer steps,
or — ``steps`` unset — at the first check (every ``check_every`` steps, by a :class:`TrainerCallback`) where the
task metric on a validation slice reaches ``target``, at most ``max_steps``. AdamW (β₂ 0.98), linear warm-up
then cosine decay to 5% of the peak over ``max_steps``, gradient clipping 1.0.

The built-in demo's warm start (engine/trainer/tiny.py) is this same function with the default settings; the
pipeline's ``sft`` stage calls it on the run's base model, checkpointing under ``<run_dir>/sft/checkpoints``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class SFTResult:
    steps: int  # optimizer steps done (over every resume)
    val_metric: float | None  # the last validation check, None when none ran
    stopped_by: str  # "target" | "steps" | "max_steps" | "stop"
    loss: float | None  # the last logged training loss


def completion_rows(rows: list[dict[str, Any]], tok: Any = None, fmt: Any = None) -> list[dict[str, Any]]:
    """The dataset's rows as TRL's prompt-completion pairs (``answer`` or ``completion`` is the target), the
    prompt rendered the way GRPO and the eval gate render it (engine.prompts.fit with ``fmt``): templated, the
    prompt is the conversation (system prompt included) and the completion one assistant message, so TRL renders
    both through the chat template (the completion ends with the template's end of turn); raw, both are text
    (TRL appends the end-of-sequence token). ``fmt`` None: the raw prompt text."""
    from engine.prompts import RAW, fit

    out = []
    for i, r in enumerate(rows):
        target = r.get("completion", r.get("answer"))
        if target is None:
            continue
        prompt = fit(r["prompt"], tok, fmt or RAW, row=i) if tok is not None else str(r["prompt"])
        if isinstance(prompt, list):
            out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": str(target)}]})
        else:
            out.append({"prompt": prompt, "completion": str(target)})
    return out


def train_sft(model, tok, rows: list[dict[str, Any]], settings, *, output_dir: str | Path,
              val_metric: Callable[[Any], float] | None = None, device: str = "cpu", lora=None,
              save: bool = False, resume_from: str | Path | None = None,
              should_stop: Callable[[], bool] = lambda: False,
              on_progress: Callable[[dict[str, Any]], None] | None = None,
              on_checkpoint: Callable[[int, Path], None] | None = None,
              log: Callable[[str], None] | None = None, fmt: Any = None,
              save_model_to: str | Path | None = None) -> tuple[Any, SFTResult]:
    """Train ``model`` on ``rows`` (prompt + answer/completion) with ``settings`` (config.PipelineSFT).

    ``val_metric(model) -> float``: the validation task metric (needed to stop at ``settings.target``).
    ``lora``: a peft LoraConfig (merged into the model at the end). ``save``: checkpoint every
    ``settings.save_steps`` and on a stop request under ``output_dir``; ``resume_from``: a checkpoint to continue
    from. ``on_progress`` gets ``{"step", "loss", "lr", "val_metric"}`` every ``check_every`` steps.
    ``fmt``: the run's engine.prompts.PromptFormat (chat template, system prompt, limit; see completion_rows).
    ``save_model_to``: the trained model saved there through the trainer (every rank calls it: DeepSpeed and
    FSDP gather the shards, the main process writes; not with LoRA, whose merged model the caller saves).
    Returns (the trained model — merged when LoRA —, :class:`SFTResult`)."""
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # stdout.log holds carl's lines, not one bar per preprocessing pass
    pairs = completion_rows(rows, tok, fmt)
    if not pairs:
        from engine.errors import ConfigError

        raise ConfigError("the sft stage needs rows with an answer (or completion) to train on",
                          hint="Set dataset.answer_field to the column holding the reference answer.",
                          context={"rows": len(rows)})
    fixed = settings.steps
    total = fixed if fixed is not None else settings.max_steps
    warmup = min(settings.warmup_steps, max(1, total // 10))
    args = SFTConfig(
        output_dir=str(output_dir), max_steps=total, learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=1,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.05}, warmup_steps=warmup,
        adam_beta1=0.9, adam_beta2=0.98, weight_decay=0.0, max_grad_norm=1.0, seed=settings.seed,
        data_seed=settings.seed, logging_steps=settings.check_every, save_strategy="steps" if save else "no",
        save_steps=settings.save_steps, save_only_model=False, report_to="none", disable_tqdm=True,
        use_cpu=device == "cpu", bf16=device == "cuda", max_length=settings.max_length, packing=False,
        completion_only_loss=True, dataset_num_proc=None, dataloader_num_workers=0,
    )
    state: dict[str, Any] = {"val": None, "loss": None, "by": "max_steps" if fixed is None else "steps"}
    target = None if fixed is not None or val_metric is None else settings.target

    class SFTWatch(TrainerCallback):
        def on_step_end(self, a, st, control, **kw):
            if should_stop():
                state["by"] = "stop"
                control.should_save = save
                control.should_training_stop = True

        def on_log(self, a, st, control, logs=None, model=None, **kw):
            logs = logs or {}
            if "loss" not in logs:
                return
            state["loss"] = float(logs["loss"])
            step = int(st.global_step)
            if target is not None and model is not None:
                was = model.training
                state["val"] = float(val_metric(model))
                model.train(was)
                if state["val"] >= target:
                    state["by"] = "target"
                    control.should_training_stop = True
            if on_progress is not None:
                on_progress({"step": step, "loss": state["loss"], "lr": logs.get("learning_rate"),
                             "val_metric": state["val"]})
            if log and (step % max(50, a.logging_steps) == 0 or state["by"] == "target"):
                val = "" if state["val"] is None else f", validation {state['val']:.3f}"
                log(f"sft: step {step} loss {state['loss']:.3f}{val}")

        def on_save(self, a, st, control, **kw):
            if on_checkpoint is not None:
                on_checkpoint(int(st.global_step), Path(a.output_dir) / f"checkpoint-{int(st.global_step)}")

    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                         processing_class=tok, peft_config=lora, callbacks=[SFTWatch()])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    done = int(trainer.state.global_step)
    if save_model_to is not None and lora is None and state["by"] != "stop":
        trainer.save_model(str(save_model_to))
    trained = trainer.model
    if lora is not None:
        trained = trained.merge_and_unload()
    trained.eval()
    if math.isnan(state["loss"] or 0.0):
        state["loss"] = None
    return trained, SFTResult(steps=done, val_metric=state["val"], stopped_by=state["by"], loss=state["loss"])
