"""TRL wiring: the resolved plan, GRPOConfig, the reward functions (task + cascaded CARL) and the trainer.

TRL's ``GRPOTrainer`` does the RL. carl adds:

* the task reward functions (engine.trainer.task_rewards), each logged by TRL as ``rewards/<name>/mean``;
* one ``carl`` reward function whose value is ``cascade.combine(CARL)`` — 0 in stage A, the warmed-up CARL
  weight times the CARL reward in stage B. It feeds the gate with the mean of the watched task reward of the
  same batch (the value TRL logs), and logs ``carl/*`` metrics (raw reward, components, phi, weight, stage);
* :class:`CarlGRPOTrainer`, a thin subclass that records the exact prompt token ids TRL generated from and
  attaches :class:`engine.rewards.GenerationCapture` to the policy's ``generate`` when sampling is untempered,
  so CARL is computed on the very distributions the completions were sampled from (else one no-grad forward).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

from engine.errors import ConfigError

SAMPLE_CHARS = 160


def resolve_device(cfg) -> str:
    """compute.device; auto = cuda, then mps, then cpu (engine.devices.auto_device)."""
    from engine.devices import auto_device

    dev = cfg.compute.device
    return auto_device() if dev == "auto" else dev


def check_compute(cfg) -> None:
    if cfg.compute.vllm != "off" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"compute.vllm={cfg.compute.vllm} needs vllm, which is not installed",
                          hint="pip install vllm on a GPU machine, or set compute.vllm: off.",
                          context={"vllm": cfg.compute.vllm})
    if cfg.compute.gpus > 1 and importlib.util.find_spec("accelerate") is None:  # pragma: no cover
        raise ConfigError("compute.gpus > 1 needs accelerate", context={"gpus": cfg.compute.gpus})


from engine.trainer.task_rewards import task_metric_name  # noqa: E402,F401  (grpo's API; lives with the rewards)


def grpo_args(cfg, output_dir: str | Path, device: str) -> dict[str, Any]:
    """The GRPOConfig keyword arguments carl sets (also shown by --dry-run)."""
    g = cfg.grpo
    args: dict[str, Any] = {
        "output_dir": str(output_dir), "max_steps": g.max_steps, "learning_rate": g.learning_rate,
        "per_device_train_batch_size": g.batch_size, "num_generations": g.num_generations,
        "max_completion_length": g.max_completion_length, "temperature": g.temperature, "beta": g.beta,
        "logging_steps": g.logging_steps, "save_steps": g.save_steps, "save_strategy": "steps", "seed": g.seed,
        "save_total_limit": g.save_total_limit,
        "bf16": device == "cuda" and cfg.model.dtype in ("auto", "bfloat16"), "fp16": False,
        "gradient_checkpointing": cfg.compute.gradient_checkpointing, "use_cpu": device == "cpu",
        "report_to": "none", "disable_tqdm": True, "save_only_model": False, "logging_first_step": False,
        "dataloader_num_workers": 0, "remove_unused_columns": False,
    }
    if cfg.compute.vllm != "off":
        args.update(use_vllm=True, vllm_mode=cfg.compute.vllm)
    if getattr(cfg, "environment", None) is not None:  # agent training: TRL runs the tool loop
        args["max_tool_calling_iterations"] = cfg.environment.max_tool_calls
    return args


def _untempered(cfg) -> bool:
    return cfg.grpo.temperature == 1.0 and cfg.compute.vllm == "off"


class RewardState:
    """Shared between the reward functions, the trainer and the frame callback (one process)."""

    def __init__(self, cfg, cascade, tokenizer, on_event: Callable[[dict[str, Any]], None]):
        self.cfg, self.cascade, self.tokenizer, self.on_event = cfg, cascade, tokenizer, on_event
        self.metric = task_metric_name(cfg)
        self.trainer = None  # set once the trainer exists
        self.capture = None
        self.prompt_ids: list[list[int]] | None = None
        self.task_means: dict[str, float] = {}
        self.task_values: dict[str, list[float]] = {}  # this batch's per-completion values, per task reward
        self.task_weights: dict[str, float] = {}
        self.sample: str | None = None
        self.samples: list[dict[str, Any]] | None = None  # a bounded sample of the batch (engine/trainer/samples.py)
        self.capture_hits = 0
        self.tool_mask: list[list[int]] | None = None  # this batch's TRL tool mask (1 = generated), agents only
        self.forward_hits = 0
        self.local_n: int | None = None  # completions one reward call sees on this process
        self.global_n: int | None = None  # … and on all processes together (what the gate and combine see)
        self.vocab_size: int | None = None

    def task_fn(self, name: str, fn: Callable[..., list[float]]) -> Callable[..., list[float]]:
        def reward(prompts, completions, **kwargs):
            values = [float(v) if v is not None else float("nan") for v in fn(prompts, completions, **kwargs)]
            finite = [v for v in values if v == v]
            self.task_means[name] = sum(finite) / len(finite) if finite else float("nan")
            self.task_values[name] = values
            if name == self.metric and completions:
                p, c = prompts[0], completions[0]
                self.sample = (f"{_as_text(p)}{_as_text(c)}")[-SAMPLE_CHARS:]
                from engine.trainer import samples as _samples

                self.samples = _samples.take(prompts, completions, _as_text)
                log_metric = kwargs.get("log_metric")
                if log_metric is not None:  # collapse detectors: distinct completions per group and overall
                    texts = [_as_text(x).strip() for x in completions]
                    g = self.cfg.grpo.num_generations
                    groups = [texts[i: i + g] for i in range(0, len(texts), g)] if len(texts) % g == 0 else [texts]
                    log_metric("completions/distinct_per_group", sum(len(set(x)) for x in groups) / len(groups))
                    log_metric("completions/distinct", len(set(texts)) / len(texts))
            return values

        reward.__name__ = name
        return reward

    def field(self, completion_ids):
        """(phi, selected, mask) for this batch: the generation capture when it matches, else one forward."""
        from engine.rewards import field_from_forward

        if self.capture is not None:
            got = self.capture.field(completion_ids)
            self.capture.reset()
            self.capture.active = True
            if got is not None:
                self.capture_hits += 1
                return got
        if self.prompt_ids is None or len(self.prompt_ids) != len(completion_ids):
            raise RuntimeError("CARL reward: prompt token ids of this batch are unknown")
        self.forward_hits += 1
        model = self.trainer.model
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        from engine.memory import budget_from, device_of

        return field_from_forward(model, self.prompt_ids, completion_ids, pad,
                                  budget_mb=budget_from(self.cfg, device_of(model)))

    def carl_fn(self) -> Callable[..., list[float]]:
        from engine.envs.training import apply_tool_mask
        from engine.rewards import carl_from_field

        weights = self.cfg.rewards.carl.weights.model_dump()

        def carl(prompts, completions, completion_ids=None, trainer_state=None, log_metric=None, **kwargs):
            import time

            from engine.trainer.dist import gather_batch

            t0 = time.perf_counter()
            step = int(getattr(trainer_state, "global_step", 0) or 0) + 1  # the step these rewards train
            phi, sel, mask = self.field(completion_ids)
            mask = apply_tool_mask(mask, self.tool_mask)  # CARL over generated tokens only (tool results out)
            comps = carl_from_field(phi, sel, mask, weights)
            raw = comps["carl"].tolist()
            # the gate and the combination see the whole generation batch of every process (docs/train.md)
            raw_all, task_all, cryst_all, offset = gather_batch(raw, self.task_values,
                                                                comps["crystallizations"].tolist())
            self.local_n, self.global_n = len(raw), len(raw_all)
            watched = [v for v in task_all.get(self.metric, []) if v == v]
            metric_value = sum(watched) / len(watched) if watched else float("nan")
            cryst = sum(cryst_all) / len(cryst_all) if cryst_all else float("nan")
            event = self.cascade.observe(step, {self.metric: metric_value, "crystallization": cryst,
                                                "n": float(len(raw_all))})
            if event is not None:
                self.on_event(event.to_dict())
            task = [sum(self.task_weights.get(k, 1.0) * v[i] for k, v in task_all.items())
                    for i in range(len(raw_all))] if task_all else None
            out = self.cascade.combine(raw_all, step, task)[offset: offset + len(raw)]
            from engine.trainer import samples as _samples

            # this process's samples: the local slice of the combined CARL part
            _samples.score(self.samples, carl_part=out, carl=raw, phi=comps["phi_mean"].tolist())
            if log_metric is not None:
                log_metric("carl/reward", float(comps["carl"].mean()))
                for k in ("coherence", "cloud", "discontinuity"):
                    log_metric(f"carl/{k}", float(comps[k].mean()))
                log_metric("carl/phi", float(comps["phi_mean"].mean()))
                log_metric("carl/crystallization", cryst)
                log_metric("carl/weight", self.cascade.carl_weight(step))
                log_metric("carl/stage_b", 1.0 if self.cascade.stage == "B" else 0.0)
                if self.tool_mask is not None:
                    from engine.envs.training import generated_fraction

                    frac = generated_fraction(self.tool_mask)
                    if frac is not None:  # the share of completion tokens CARL scored (the rest: tool results)
                        log_metric("agent/generated_fraction", frac)
                    from engine.envs.training import phi_per_turn

                    for k, v in enumerate(phi_per_turn(phi, mask, self.tool_mask), 1):  # per assistant turn
                        log_metric(f"agent/phi_turn_{k}", v)
                if self.cascade.last_tied_fraction is not None:
                    log_metric("carl/tied_groups", self.cascade.last_tied_fraction)
            # CARL's own cost this batch: this function (field, components, gate, combine) + the generation capture
            spent = time.perf_counter() - t0
            if self.capture is not None:
                spent += self.capture.seconds
                self.capture.seconds = 0.0
            if log_metric is not None:
                log_metric("carl/overhead_ms", 1000.0 * spent)
            return out

        carl.__name__ = "carl"
        return carl


def _as_text(x: Any) -> str:
    if isinstance(x, list):
        return "".join(str(m.get("content", "")) for m in x if isinstance(m, dict))
    return str(x)


def make_trainer_class():
    from trl import GRPOTrainer

    class CarlGRPOTrainer(GRPOTrainer):
        carl_state: RewardState | None = None

        def _tokenize_prompts(self, prompts):
            out = super()._tokenize_prompts(prompts)
            if self.carl_state is not None:  # grpo.max_prompt_length: the dataset's prompts are already fitted
                self.carl_state.prompt_ids = [list(p) for p in out[0]]  # (engine.prompts.fit: the template whole)
            return out

        def _generate(self, prompts):
            out = super()._generate(prompts)
            if self.carl_state is not None:  # the tool loop re-tokenizes extended prompts: keep the originals
                self.carl_state.prompt_ids = [list(p) for p in out[0]]
                self.carl_state.tool_mask = out[2]
            return out

    return CarlGRPOTrainer


def attach_capture(model, capture) -> None:
    """Make every ``model.generate`` call also feed ``capture`` (a logits processor appended last)."""
    from transformers import LogitsProcessorList

    original = model.generate

    def generate(*args, **kwargs):
        capture.reset()
        capture.active = True
        procs = LogitsProcessorList(list(kwargs.pop("logits_processor", None) or []) + [capture])
        return original(*args, logits_processor=procs, **kwargs)

    model.generate = generate


def load_model_and_tokenizer(cfg, device: str, log: Callable[[str], None] = lambda m: None):
    """The model and tokenizer a config trains: ``model.name_or_path`` resolved like every name a user types
    (engine.models.names: a built-in, a directory, a run's checkpoint, a Hub id) and loaded by engine.models'
    one loader with the config's dtype, quantization and trust_remote_code, ready for TRL (not moved, train mode).
    A quantized base goes to TRL as loaded: GRPOTrainer wraps it with the LoRA config and keeps the adapters in
    bf16 (QLoRA), enabling input gradients for gradient checkpointing itself."""
    from dataclasses import replace

    from engine.models import LoadOptions, load_model, resolve_name
    from engine.trainer.families import check_quantization

    check_quantization(cfg, device)
    from engine.errors import ValidationError

    try:
        ref = resolve_name(cfg.model.name_or_path, log=log)
    except ValidationError as exc:  # a name that names nothing is a config error here
        raise ConfigError(f"model.name_or_path: {exc}", hint=exc.hint, context=exc.context) from None
    if cfg.model.tokenizer:
        ref = replace(ref, tokenizer=cfg.model.tokenizer)
    return load_model(ref, LoadOptions.from_config(cfg, device=device), train=True, error=ConfigError, log=log)


def peft_config(cfg, model=None):
    """LoRA config; ``all-linear``/``auto`` targets resolve per family (attention-only for MoE models)."""
    if not cfg.lora.enabled:
        return None
    from peft import LoraConfig

    from engine.trainer.families import lora_targets

    targets = lora_targets(model, cfg.lora.target_modules) if model is not None else cfg.lora.target_modules
    if targets == "auto":
        targets = "all-linear"
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def build_trainer(cfg, run_dir: Path, model, tokenizer, train_rows, cascade, *, callbacks=(),
                  on_event: Callable[[dict[str, Any]], None] = lambda e: None):
    """A ready CarlGRPOTrainer and its RewardState."""
    from trl import GRPOConfig

    from engine.rewards import GenerationCapture
    from engine.trainer.data import to_dataset
    from engine.trainer.task_rewards import build_all

    device = resolve_device(cfg)
    args = GRPOConfig(**grpo_args(cfg, Path(run_dir) / "checkpoints", device))
    state = RewardState(cfg, cascade, tokenizer, on_event)
    funcs, weights = [], []
    for name, weight, fn in build_all(cfg.task):
        funcs.append(state.task_fn(name, fn))
        weights.append(weight)
        state.task_weights[name] = weight
    if cfg.rewards.carl.enabled:
        funcs.append(state.carl_fn())
        weights.append(1.0)  # the cascade applies the CARL weight and its warm-up
    args.reward_weights = weights
    cls = make_trainer_class()
    from engine.envs.training import factory_for
    from engine.prompts import PromptFormat

    dataset = to_dataset(train_rows, tokenizer, PromptFormat.from_config(cfg))  # chat template, system prompt
    trainer = cls(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                  processing_class=tokenizer, peft_config=peft_config(cfg, model), callbacks=list(callbacks),
                  environment_factory=factory_for(cfg))
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):  # frames and stdout.log lines are carl's own
        trainer.remove_callback(cb)
    trainer.carl_state = state
    state.trainer = trainer
    if cfg.rewards.carl.enabled and cascade is not None:
        from engine.cascade import check_bound_settings

        check_bound_settings(trainer, cascade)  # the varied_groups bound needs TRL's group scaling, summed rewards
    from engine.coherence import vocab_size_of

    state.vocab_size = vocab_size_of(trainer.model)  # frames derive phi from entropy when CARL is off
    if cfg.rewards.carl.enabled and _untempered(cfg) and os.environ.get("CARL_REWARD_FORWARD") != "1":
        state.capture = GenerationCapture()
        attach_capture(trainer.model, state.capture)
    return trainer, state
