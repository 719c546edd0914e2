"""Hardware numbers (engine/system.py): what psutil measures of a real child process, what NVML reports (on
this machine: no GPU, said so — never zeros), doctor's hardware row, the one-line text the screens show."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

from engine.doctor import check_hardware as doctor_row
from engine.system import SystemSampler, gpu_devices, gpu_text, system_text


def test_gpus_are_measured_or_their_absence_is_explained():
    devices, note = gpu_devices()
    if devices:  # a machine with an NVIDIA driver: real numbers for every device
        for d in devices:
            assert d["name"] and 0 < d["mem_total_mb"] and 0 <= d["mem_used_mb"] <= d["mem_total_mb"]
        assert note is None
    else:
        assert note.startswith("no GPU") and "%" not in note
        assert gpu_text(devices, note) == note


def test_sampler_measures_a_busy_child_and_notices_it_end():
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(64 * 1024 * 1024)\nwhile True: x[0] ^= 1"])
    try:
        sampler = SystemSampler(child.pid)
        first = sampler.sample()
        assert first["pid"] == child.pid and first["cpu_pct"] is None  # no interval yet: unknown, not 0
        deadline = time.monotonic() + 60
        s = first
        while time.monotonic() < deadline:  # wait on the condition: the child has touched its 64 MB and spun
            s = sampler.sample()
            if s["cpu_pct"] and s["rss_mb"] >= 64:
                break
            time.sleep(0.05)
        assert s["cpu_pct"] > 0 and s["rss_mb"] >= 64
        assert 0 < s["ram_used_mb"] <= s["ram_total_mb"] and s["cpu_count"] >= 1
        text = system_text(s)
        assert text.startswith("worker CPU ") and " RAM " in text
    finally:
        child.kill()
        child.wait()
    gone = sampler.sample()
    assert gone.get("gone") and gone["rss_mb"] is None and system_text(gone).startswith("worker exited")


def test_a_process_that_does_not_exist_has_no_numbers():
    s = SystemSampler(2 ** 22 + 12345, gpus=False).sample()  # beyond pid_max: never a process
    assert s["gone"] and s["cpu_pct"] is None and s["rss_mb"] is None and "gpus" not in s


def test_doctor_has_a_hardware_row():
    check = doctor_row()
    devices, note = gpu_devices()
    assert check.name == "hardware" and "CPU cores" in check.detail and "RAM" in check.detail
    assert check.status == ("ok" if devices else "warn")
    if not devices:
        assert note in check.detail


class _FakeNVML:
    """NVML's calls as a driver answers them, for the per-device formatting only: the real library needs an
    NVIDIA driver this machine does not have (the real no-GPU path is tested above)."""

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200" if h == 0 else "NVIDIA H200"

    def nvmlDeviceGetUtilizationRates(self, h):
        if h == 1:
            raise RuntimeError("Not Supported")  # e.g. a MIG slice: unknown, shown as "?", never 0
        return SimpleNamespace(gpu=87)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=40 * 1024 ** 3, total=140 * 1024 ** 3)


def test_per_device_numbers_and_text():
    devices, note = gpu_devices(_FakeNVML())
    assert note is None
    assert devices[0] == {"index": 0, "name": "NVIDIA H200", "util_pct": 87, "mem_used_mb": 40960.0,
                          "mem_total_mb": 143360.0}
    assert devices[1]["util_pct"] is None and devices[1]["name"] == "NVIDIA H200"
    assert gpu_text(devices, note) == "GPU0 H200 87% 40/140 GB · GPU1 H200 ? 40/140 GB"
