"""The resolved plan of a run (``train --dry-run``): everything the worker would do, touching nothing — the
trainer's settings (engine.trainer.grpo) and how its processes start (engine.trainer.launch). It sits above both:
the launch layer never reaches back into the trainer, and the trainer never into its launch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.trainer import launch
from engine.trainer.grpo import check_compute, grpo_args, resolve_device, task_metric_name


def plan(cfg, config_path: Path | None, *, run_dir: str = "<run_dir>") -> dict[str, Any]:
    """The resolved plan (--dry-run): everything the worker would do, touching nothing."""
    from engine.cascade import make_gate
    from engine.trainer.task_rewards import build_all

    check_compute(cfg)
    metric = task_metric_name(cfg)
    make_gate(cfg.cascade, metric)  # refuses unavailable modes now rather than in the worker
    device = resolve_device(cfg)
    from engine.trainer.families import check_quantization

    check_quantization(cfg, device)

    distributed = launch.plan(cfg, run_dir, device)
    here = distributed["commands"][cfg.compute.node_rank]
    cmd, how = here["command"], here["launch"]
    model = cfg.model.name_or_path
    return {
        "config": str(config_path) if config_path else None,
        "preset": None if config_path else "tiny-cpu",
        "project": cfg.project.name,
        "model": model, "builtin_model": model == "builtin:tiny",
        "dataset": cfg.dataset.source,
        "task_rewards": [{"name": n, "weight": w} for n, w, _ in build_all(cfg.task)],
        "task_metric": metric,
        "carl": {"enabled": cfg.rewards.carl.enabled, "weight": cfg.rewards.carl.weight,
                 "weights": cfg.rewards.carl.weights.model_dump()},
        "cascade": cfg.cascade.model_dump(),
        "lora": cfg.lora.model_dump() if cfg.lora.enabled else None,
        "device": device, "gpus": cfg.compute.gpus, "vllm": cfg.compute.vllm,
        "grpo": {k: v for k, v in grpo_args(cfg, "<run_dir>/checkpoints", device).items() if k != "output_dir"},
        "tracking": {"trackio": cfg.tracking.trackio, "project": cfg.tracking.project or cfg.project.name},
        "environment": cfg.environment.model_dump() if getattr(cfg, "environment", None) else None,
        "launch": how, "command": cmd,
        "world_size": distributed["world_size"], "distributed": distributed,
    }
