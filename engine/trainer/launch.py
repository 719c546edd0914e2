"""More than one training process: the launch plan and the accelerate config (the supervisor that runs them:
engine/trainer/supervisor.py).

``compute.processes`` (default ``compute.gpus`` on CUDA, 1 on CPU) and ``compute.strategy`` (ddp | zero2 |
zero3 | fsdp) decide how the worker (engine.trainer.worker) is started:

* one process — ``python -m engine.trainer.worker RUN_DIR`` directly;
* several on CUDA — ``accelerate launch --config_file RUN_DIR/accelerate.yaml …`` with the config carl writes
  (TRL's examples/accelerate_configs are the reference: multi_gpu, deepspeed_zero2/zero3, fsdp2);
* several on CPU — ``python -m torch.distributed.run --nproc_per_node N …`` with ``ACCELERATE_USE_CPU=1``:
  DDP over gloo (``accelerate launch --cpu`` would start one process only).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any


def needs_supervisor(cfg_dict: dict[str, Any]) -> bool:
    """Cheap (no torch): could this saved config need more than one process? Then the run starts through its
    supervisor (``python -m engine.trainer.supervisor``), which decides."""
    c = (cfg_dict or {}).get("compute") or {}
    return int(c.get("processes") or 1) > 1 or int(c.get("nodes") or 1) > 1 or \
        (int(c.get("gpus") or 1) > 1 and c.get("device") != "cpu")


def supervisor_command(run_dir: str, *, resume: bool = False, node_rank: int | None = None) -> list[str]:
    """The process a multi-process run is (engine/trainer/launch.py): it prepares, starts and watches the ranks."""
    return [sys.executable, "-m", "engine.trainer.supervisor", run_dir] + (["--resume"] if resume else []) + \
        (["--node-rank", str(node_rank)] if node_rank is not None else [])


def worker_command(run_dir: str, *, gpus: int = 1, resume: bool = False) -> list[str]:
    """The exact worker command: ``python -m engine.trainer.worker RUN_DIR``, or through ``accelerate launch``
    (TRL's multi-GPU path) when ``gpus > 1``."""
    tail = ["-m", "engine.trainer.worker", run_dir] + (["--resume"] if resume else [])
    if gpus > 1:
        acc = Path(sys.executable).parent / "accelerate"
        return [str(acc) if acc.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes",
                str(gpus)] + tail
    return [sys.executable] + tail


maybe_distributed = needs_supervisor  # the launch layer's older name for it
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
SUPERVISOR_ENV = "CARL_SUPERVISOR_PID"


def _device(cfg, device: str | None) -> str:
    if device is not None:
        return device
    from engine.devices import auto_device  # grpo.resolve_device's rule; launch never imports the trainer

    return auto_device() if cfg.compute.device == "auto" else cfg.compute.device


def per_node(cfg, device: str | None = None) -> int:
    """Processes on each node: ``compute.processes / nodes``, else ``compute.gpus`` on CUDA, else 1."""
    c = cfg.compute
    if c.processes is not None:
        return max(1, int(c.processes) // max(1, int(c.nodes)))
    if _device(cfg, device) == "cuda":
        return max(1, int(c.gpus))
    return 1


def world_size(cfg, device: str | None = None) -> int:
    """Processes over all nodes: ``compute.processes``, else per-node processes × ``compute.nodes``."""
    c = cfg.compute
    if c.processes is not None:
        return int(c.processes)
    return per_node(cfg, device) * max(1, int(c.nodes))


def launcher(cfg, device: str | None = None) -> str:
    """``python`` (one process), ``torchrun`` (CPU, gloo) or ``accelerate`` (CUDA)."""
    if world_size(cfg, device) <= 1:
        return "python"
    return "torchrun" if _device(cfg, device) == "cpu" else "accelerate"


def accelerate_config(cfg, device: str | None = None) -> dict[str, Any]:
    """The accelerate config file carl writes into the run directory (keys as in TRL's example configs)."""
    device = _device(cfg, device)
    c, n = cfg.compute, world_size(cfg, device)
    bf16 = device == "cuda" and cfg.model.dtype in ("auto", "bfloat16")
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "downcast_bf16": "no",
        "machine_rank": 0, "main_training_function": "main", "mixed_precision": "bf16" if bf16 else "no",
        "num_machines": c.nodes, "num_processes": n, "rdzv_backend": "static", "same_network": True,
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False, "use_cpu": device == "cpu",
    }
    if c.nodes > 1:
        out["main_process_ip"] = c.main_process_ip
        out["main_process_port"] = c.main_process_port or 29500
    if device == "cpu":
        out["distributed_type"] = "MULTI_CPU" if n > 1 else "NO"
    elif c.strategy == "ddp":
        out["distributed_type"] = "MULTI_GPU" if n > 1 else "NO"
        out["gpu_ids"] = "all"
    elif c.strategy in ("zero2", "zero3"):
        stage = 3 if c.strategy == "zero3" else 2
        ds: dict[str, Any] = {"gradient_accumulation_steps": 1, "offload_optimizer_device": "none",
                              "offload_param_device": "none", "zero3_init_flag": stage == 3, "zero_stage": stage}
        if stage == 3:
            ds["zero3_save_16bit_model"] = True
        if c.nodes > 1:
            ds["deepspeed_multinode_launcher"] = "standard"
        out["distributed_type"] = "DEEPSPEED"
        out["deepspeed_config"] = ds
    else:  # fsdp (FSDP2, as TRL's fsdp2.yaml; a full state dict so final/ loads with from_pretrained)
        out["distributed_type"] = "FSDP"
        out["enable_cpu_affinity"] = False
        out["fsdp_config"] = {"fsdp_activation_checkpointing": False,
                              "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                              "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False,
                              "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
                              "fsdp_version": 2}
    return out


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def node_command(cfg, run_dir: str, node_rank: int, *, resume: bool = False,
                 device: str | None = None) -> dict[str, Any]:
    """The exact command (and the environment carl adds) that starts node ``node_rank``'s ranks."""
    device = _device(cfg, device)
    c, n = cfg.compute, world_size(cfg, device)
    tail = ["-m", "engine.trainer.worker", run_dir] + (["--resume"] if resume else [])
    kind = launcher(cfg, device)
    env: dict[str, str] = {}
    if kind == "python":
        cmd = [sys.executable] + tail
    elif kind == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(c.nodes), "--nproc_per_node",
               str(n // c.nodes)]
        if c.nodes > 1:
            cmd += ["--node_rank", str(node_rank), "--master_addr", str(c.main_process_ip), "--master_port",
                    str(c.main_process_port or 29500)]
        else:
            cmd += ["--standalone"]
        cmd += tail
        env = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    else:
        cmd = [_tool("accelerate"), "launch", "--config_file", f"{run_dir}/accelerate.yaml"]
        if c.strategy == "ddp" and n > 1:
            cmd += ["--multi_gpu"]
        cmd += ["--num_processes", str(n), "--num_machines", str(c.nodes), "--machine_rank", str(node_rank)]
        if c.nodes > 1:
            cmd += ["--main_process_ip", str(c.main_process_ip), "--main_process_port",
                    str(c.main_process_port or 29500)]
        else:
            cmd += ["--main_process_port", str(c.main_process_port or 0)]  # 0: a free port
        cmd += tail
    return {"node_rank": node_rank, "command": cmd, "launch": _join(env, cmd), "env": env}


def _join(env: dict[str, str], cmd: list[str]) -> str:
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.join(cmd)])


def plan(cfg, run_dir: str, device: str | None = None) -> dict[str, Any]:
    """The ``distributed`` part of ``train --dry-run``: world size, strategy, each node's command."""
    device = _device(cfg, device)
    n = world_size(cfg, device)
    out: dict[str, Any] = {"world_size": n, "processes": n, "strategy": cfg.compute.strategy if n > 1 else None,
                           "launcher": launcher(cfg, device), "nodes": cfg.compute.nodes,
                           "per_node": n // cfg.compute.nodes,
                           "commands": [node_command(cfg, run_dir, k, device=device)
                                        for k in range(cfg.compute.nodes)]}
    if n > 1:
        out["supervisor"] = shlex.join(supervisor_command(run_dir))
        for cmd in out["commands"]:  # what to run on each node (a shared run directory: see docs/train.md)
            cmd["supervisor"] = shlex.join(supervisor_command(run_dir, node_rank=cmd["node_rank"]))
        if out["launcher"] == "accelerate":
            out["accelerate_config_file"] = f"{run_dir}/accelerate.yaml"
            out["accelerate_config"] = accelerate_config(cfg, device)
        import importlib.util

        need = {"zero2": "deepspeed", "zero3": "deepspeed"}.get(cfg.compute.strategy)
        if device == "cuda" and need and importlib.util.find_spec(need) is None:
            out["missing"] = [need]  # the plan prints; the launch needs `pip install deepspeed` on the GPU machine
        if device == "cpu" and cfg.compute.strategy != "ddp":
            out["note"] = f"strategy {cfg.compute.strategy} needs CUDA; CPU processes run DDP over gloo"
    return out


OWNER_ENV = "CARL_RUN_OWNER"  # "pid:start" of the carl process a non-detached run belongs to (engine.runs)


def _owner() -> tuple[int, str | None] | None:
    raw = os.environ.get(OWNER_ENV, "")
    pid, _, start = raw.partition(":")
    return (int(pid), start or None) if pid.isdigit() else None
