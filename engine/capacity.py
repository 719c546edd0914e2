"""What this machine can load: the largest model (in parameters) per precision, for inference and for LoRA GRPO.

The rule, stated once (docs/train.md, "What fits"):

* usable memory = 85% of the GPU's memory on CUDA (the largest GPU), else 80% of the RAM available now;
* weights cost 4 bytes/parameter in float32 (CPU), 2 in bfloat16, 1 in 8-bit, 0.5 in 4-bit (NF4);
* inference needs the weights plus the logits budget (``compute.logits_budget_mb``); LoRA GRPO needs the
  weights × 1.4 (activations, KV cache for generation, the adapters' optimizer state; gradient checkpointing
  assumed for large models) plus the logits budget.

These are planning figures, not guarantees: sequence length and batch size move them. 4/8-bit count only where
bitsandbytes can run (CUDA and the package installed).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "8bit": 1.0, "4bit": 0.5}
TRAIN_FACTOR = 1.4
GPU_USABLE = 0.85
RAM_USABLE = 0.80


@dataclass
class Capacity:
    device: str  # cuda | mps | cpu
    memory_gib: float  # the memory the figures are computed from (total GPU, or RAM available now)
    usable_gib: float
    precisions: dict[str, dict[str, float]]  # precision → {"infer_b": params (billions), "lora_b": …}
    quantization: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "memory_gib": round(self.memory_gib, 1), "usable_gib": round(self.usable_gib, 1),
                "precisions": self.precisions, "quantization": self.quantization, "note": self.note}

    def summary(self) -> str:
        parts = [f"{p} ~{v['lora_b']:g}B LoRA / ~{v['infer_b']:g}B infer" for p, v in self.precisions.items()]
        return f"{self.device} ({self.memory_gib:.0f} GiB): " + ", ".join(parts) + f"; {self.note}"


def _round_b(params: float) -> float:
    b = params / 1e9
    return round(b, 1) if b < 10 else float(round(b))


def ram_available_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 0.0


def estimate(device: str, memory_gib: float, *, quantization: bool, logits_budget_mb: float) -> Capacity:
    """The figures for ``memory_gib`` of ``device`` memory (pure arithmetic; see the module docstring)."""
    usable = memory_gib * (GPU_USABLE if device == "cuda" else RAM_USABLE)
    room = max(0.0, usable - logits_budget_mb / 1024) * 2**30
    precisions = ["bfloat16"] if device == "cuda" else ["float32", "bfloat16"]
    if quantization:
        precisions += ["8bit", "4bit"]
    table = {p: {"infer_b": _round_b(room / BYTES_PER_PARAM[p]),
                 "lora_b": _round_b(room / (BYTES_PER_PARAM[p] * TRAIN_FACTOR))} for p in precisions}
    if quantization:
        note = "4/8-bit through bitsandbytes"
    elif device == "cuda":
        note = "4/8-bit: pip install bitsandbytes to enable"
    else:
        note = "4/8-bit: no (needs CUDA and bitsandbytes)"
    if device == "cpu":
        note += "; CPU training is slow beyond the tiny demo"
    return Capacity(device, memory_gib, usable, table, quantization, note)


def this_machine(logits_budget_mb: float | None = None) -> Capacity:
    """The figures for this machine (imports torch)."""
    from engine import memory

    try:
        import torch

        cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # pragma: no cover
        torch, cuda = None, False
    if cuda:
        total = max(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        quant = importlib.util.find_spec("bitsandbytes") is not None
        return estimate("cuda", total / 2**30, quantization=quant,
                        logits_budget_mb=memory.budget_mb(logits_budget_mb, "cuda"))
    mps = bool(torch is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    dev = "mps" if mps else "cpu"
    return estimate(dev, ram_available_gib(), quantization=False,
                    logits_budget_mb=memory.budget_mb(logits_budget_mb, dev))
