"""carl.yaml presets (``project init --preset NAME``): the tiny CPU demo, LoRA on a 7B model, a full multi-GPU
fine-tune, the agent demo."""

from __future__ import annotations

import copy
from typing import Any

from engine.config_schema import Config
from engine.errors import ConfigError

# --------------------------------------------------------------------------------------------- presets
PRESET_DESCRIPTIONS: dict[str, str] = {
    "tiny-cpu": "The built-in demo: tiny local model, 2-digit addition, CPU, no downloads (minutes).",
    "lora-7b": "LoRA GRPO on Qwen2.5-7B-Instruct with GSM8K (one 24-80 GB GPU).",
    "full-gpu": "Full fine-tune of Qwen2.5-1.5B-Instruct with GSM8K on 4 GPUs.",
    "agent-sql-cpu": "Agent demo: a tiny local model answers with an SQL tool, trained by GRPO on CPU (no downloads).",
}
# Qwen2.5's recommended system prompt for math; the presets' reward reads the answer from the last \boxed{}.
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-cpu": {},  # exactly Config(): the built-in demo
    "lora-7b": {
        "project": {"name": "carl-lora-7b", "description": "LoRA GRPO on a 7B instruct model (one 24-80 GB GPU)."},
        "model": {"name_or_path": "Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16"},
        "dataset": {"source": "openai/gsm8k", "split": "train", "prompt_field": "question", "answer_field": "answer",
                    "chat_template": "auto", "system_prompt": MATH_SYSTEM_PROMPT},
        "task": {"rewards": [{"kind": "numeric", "tolerance": 1e-6, "extract": "boxed"}]},
        "grpo": {"max_steps": 500, "learning_rate": 1e-5, "batch_size": 16, "num_generations": 8,
                 "max_prompt_length": 512, "max_completion_length": 512, "logging_steps": 5, "save_steps": 100},
        "lora": {"enabled": True, "r": 16, "alpha": 32},
        "compute": {"device": "cuda", "gpus": 1, "gradient_checkpointing": True},
    },
    "full-gpu": {
        "project": {"name": "carl-full", "description": "Full fine-tune of a small model on several GPUs."},
        "model": {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct", "dtype": "bfloat16"},
        "dataset": {"source": "openai/gsm8k", "split": "train", "prompt_field": "question", "answer_field": "answer",
                    "chat_template": "auto", "system_prompt": MATH_SYSTEM_PROMPT},
        "task": {"rewards": [{"kind": "numeric", "tolerance": 1e-6, "extract": "boxed"}]},
        "grpo": {"max_steps": 1000, "learning_rate": 1e-6, "batch_size": 64, "num_generations": 8,
                 "max_prompt_length": 512, "max_completion_length": 1024, "logging_steps": 5, "save_steps": 200},
        "compute": {"device": "cuda", "gpus": 4, "gradient_checkpointing": True},
    },
    # the agent demo (docs/agents.md): a tiny tool-calling model built locally, generated SQL tasks, TRL's tool loop
    "agent-sql-cpu": {
        "project": {"name": "carl-agent-sql", "description": "A tiny model learns to answer with one SQL tool call."},
        "model": {"name_or_path": "builtin:agent-sql"},
        "dataset": {"source": "builtin:sql-tasks"},
        "environment": {"kind": "sql", "max_tool_calls": 1},
        "task": {"rewards": [{"kind": "python", "function": "engine.envs.rewards:sql_result"}]},
        "grpo": {"max_steps": 40, "learning_rate": 1e-3, "batch_size": 32, "num_generations": 8,
                 "max_prompt_length": 128, "max_completion_length": 48, "save_steps": 20},
        "compute": {"device": "cpu"},
        "eval": {"n_samples": 64},
    },
}


def preset_summaries() -> list[dict[str, Any]]:
    """One line per preset for listings (batch ``project presets`` and the project screen)."""
    out = []
    for name in PRESETS:
        cfg = preset(name)
        out.append({"name": name, "description": PRESET_DESCRIPTIONS.get(name, cfg.project.description), "model": cfg.model.name_or_path,
                    "dataset": cfg.dataset.source, "lora": cfg.lora.enabled, "device": cfg.compute.device,
                    "gpus": cfg.compute.gpus, "max_steps": cfg.grpo.max_steps})
    return out


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", hint=f"Presets: {', '.join(PRESETS)}.",
                          context={"preset": name, "presets": list(PRESETS)})
    return Config.model_validate(copy.deepcopy(PRESETS[name]))
