"""Hardware as measured, never invented: GPU utilisation and memory per device (NVML, through nvidia-ml-py,
imported lazily) and a process's CPU and RAM (psutil).

One shape everywhere — the ``system`` field of a frame, the train screen's hardware line, ``doctor``::

    {"cpu_pct": 97.0,            # the process, summed over cores (400 = four cores busy); null on the first sample
     "rss_mb": 812.4,            # the process's resident memory
     "ram_used_mb": 6100.0, "ram_total_mb": 24000.0, "cpu_count": 2,   # the machine
     "gpus": [{"index": 0, "name": "NVIDIA H200", "util_pct": 87, "mem_used_mb": 40100.0,
               "mem_total_mb": 143771.0}],
     "gpu_note": null}           # why there are no GPU numbers: "no GPU (…)", never made-up zeros

Without an NVIDIA driver (this machine, a Mac, CI) ``gpus`` is ``[]`` and ``gpu_note`` says why.
"""

from __future__ import annotations

import os
import threading
from typing import Any

MB = 1024 * 1024

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {}  # "module" once initialised, or "error": why NVML is not there


def _nvml() -> tuple[Any, str | None]:
    """The initialised pynvml module, or (None, why not). Initialised once per process."""
    with _nvml_lock:
        if "module" in _nvml_state:
            return _nvml_state["module"], None
        if "error" in _nvml_state:
            return None, _nvml_state["error"]
        try:
            import pynvml  # noqa: PLC0415 — lazy: only screens/workers/doctor that show hardware pay for it
        except ImportError:
            _nvml_state["error"] = "no GPU numbers: nvidia-ml-py is not installed"
            return None, _nvml_state["error"]
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / …: no NVIDIA GPU here
            _nvml_state["error"] = f"no GPU ({_nvml_reason(exc)})"
            return None, _nvml_state["error"]
        _nvml_state["module"] = pynvml
        return pynvml, None


def _nvml_reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def gpu_devices(nvml: Any = None) -> tuple[list[dict[str, Any]], str | None]:
    """Every NVIDIA device NVML sees, as measured now, and a note when there are none (why not).

    ``nvml`` is an initialised pynvml-compatible module; by default the real one (initialised here)."""
    note = None
    if nvml is None:
        nvml, note = _nvml()
        if nvml is None:
            return [], note
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        return [], f"no GPU (NVML: {_nvml_reason(exc)})"
    devices = []
    for i in range(count):
        d: dict[str, Any] = {"index": i}
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
        except Exception as exc:
            d["error"] = _nvml_reason(exc)
            devices.append(d)
            continue
        try:
            name = nvml.nvmlDeviceGetName(h)
            d["name"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            d["name"] = f"GPU {i}"
        try:
            d["util_pct"] = int(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
        except Exception:  # some devices (MIG slices) have no utilisation counter: say nothing, not 0
            d["util_pct"] = None
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            d["mem_used_mb"] = round(mem.used / MB, 1)
            d["mem_total_mb"] = round(mem.total / MB, 1)
        except Exception:
            d["mem_used_mb"] = d["mem_total_mb"] = None
        devices.append(d)
    if not devices:
        note = "no GPU (NVML sees no device)"
    return devices, note


class SystemSampler:
    """Samples a process (default: this one) and the machine. Keep one per process you watch: CPU percent is
    measured between two samples, so the first sample has ``cpu_pct`` null rather than a made-up 0."""

    def __init__(self, pid: int | None = None, *, gpus: bool = True):
        import psutil  # noqa: PLC0415 — psutil is light, but only samplers need it

        self._psutil = psutil
        self.pid = pid or os.getpid()
        self._gpus = gpus
        try:
            self._proc: Any = psutil.Process(self.pid)
            self._proc.cpu_percent(None)  # prime: the next call measures from here
        except psutil.Error:
            self._proc = None
        self._primed = False

    def alive(self) -> bool:
        try:
            return self._proc is not None and self._proc.is_running() and \
                self._proc.status() != self._psutil.STATUS_ZOMBIE
        except self._psutil.Error:
            return False

    def sample(self) -> dict[str, Any]:
        psutil = self._psutil
        out: dict[str, Any] = {"pid": self.pid, "cpu_pct": None, "rss_mb": None}
        if self._proc is None:
            out["gone"] = True  # no such process (any more): no numbers for it
        else:
            try:
                with self._proc.oneshot():
                    cpu = self._proc.cpu_percent(None)
                    out["rss_mb"] = round(self._proc.memory_info().rss / MB, 1)
                out["cpu_pct"] = round(cpu, 1) if self._primed else None
                self._primed = True
            except psutil.Error:  # the process ended: no numbers for it
                self._proc = None
                out["gone"] = True
        vm = psutil.virtual_memory()
        out["ram_used_mb"] = round((vm.total - vm.available) / MB, 1)
        out["ram_total_mb"] = round(vm.total / MB, 1)
        out["cpu_count"] = psutil.cpu_count() or 1
        if self._gpus:
            out["gpus"], out["gpu_note"] = gpu_devices()
        return out


def _gb(mb: float | None) -> str:
    if mb is None:
        return "?"
    gb = mb / 1024
    return f"{gb:.0f}" if gb >= 10 else f"{gb:.1f}"  # "60/140 GB", "3.2/7.8 GB": short enough for 80 columns


def _size(mb: float) -> str:
    return f"{mb:.0f} MB" if mb < 1024 else f"{_gb(mb)} GB"


def gpu_text(gpus: list[dict[str, Any]], note: str | None) -> str:
    """``GPU0 H200 87% 39/140 GB`` per device, or the note (``no GPU (…)``)."""
    if not gpus:
        return note or "no GPU"
    parts = []
    for g in gpus:
        if g.get("error"):
            parts.append(f"GPU{g['index']} unreadable ({g['error']})")
            continue
        name = str(g.get("name") or "").replace("NVIDIA ", "")
        util = "?" if g.get("util_pct") is None else f"{g['util_pct']}%"
        parts.append(f"GPU{g['index']} {name} {util} {_gb(g.get('mem_used_mb'))}/{_gb(g.get('mem_total_mb'))} GB")
    return " · ".join(parts)


def system_text(s: dict[str, Any], *, who: str = "worker") -> str:
    """One line: the process's CPU and RAM, the machine's RAM, the GPUs (or why there are none)."""
    parts = []
    if s.get("gone"):
        parts.append(f"{who} exited")
    elif s.get("rss_mb") is not None:
        cpu = "…" if s.get("cpu_pct") is None else f"{s['cpu_pct']:.0f}%"
        parts.append(f"{who} CPU {cpu}, RSS {_size(s['rss_mb'])}")
    if s.get("ram_total_mb"):
        parts.append(f"RAM {_gb(s.get('ram_used_mb'))}/{_gb(s['ram_total_mb'])} GB")
    if "gpus" in s:
        parts.append(gpu_text(s.get("gpus") or [], s.get("gpu_note")))
    return " · ".join(parts)


def check_hardware() -> tuple[str, str]:
    """doctor's hardware row: (status, detail). ``ok`` with GPUs, ``warn`` without (only the tiny demo
    trains in reasonable time) — the detail shows what NVML and psutil measured, nothing else."""
    s = SystemSampler(gpus=True).sample()
    detail = f"{s['cpu_count']} CPU cores · RAM {_gb(s['ram_used_mb'])}/{_gb(s['ram_total_mb'])} GB used · " + \
        gpu_text(s["gpus"], s["gpu_note"])
    return ("ok" if s["gpus"] else "warn"), detail
