"""`carl doctor`: is this machine ready? Python, torch, accelerators, libraries, CARL_HOME, credentials, disk.

Each check is ``{"name", "status": "ok"|"warn"|"fail", "detail"}``. ``fail`` blocks carl from working at all
(a missing core library, an unwritable CARL_HOME, a full disk); ``warn`` limits it (no GPU: only the tiny
demo trains in reasonable time; no HF token: no gated models or pushes). Secrets are never shown: only whether
they are set, their well-known prefix, their last 4 characters (for values of 12+ characters) and their length.

Imports torch (doctor is not a fast path); every other library is inspected through its installed metadata.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Literal

from engine.errors import mask_secret, redact_text
from engine.home import CarlHome

Status = Literal["ok", "warn", "fail"]

MIN_PYTHON = (3, 11)
DISK_FAIL_GB = 1.0
DISK_WARN_GB = 10.0

# distribution name → (shown name, what needs it, fail when missing?)
LIBRARIES: tuple[tuple[str, str, str, bool], ...] = (
    ("textual", "textual", "the workbench", True),
    ("pydantic", "pydantic", "carl.yaml", True),
    ("numpy", "numpy", "the probe", True),
    ("PyYAML", "pyyaml", "carl.yaml", True),
    ("transformers", "transformers", "training", False),
    ("trl", "trl", "training (GRPO)", False),
    ("peft", "peft", "LoRA training", False),
    ("accelerate", "accelerate", "multi-GPU training", False),
    ("datasets", "datasets", "Hub datasets", False),
    ("safetensors", "safetensors", "checkpoints and .safetensors logits", False),
    ("trackio", "trackio", "tracking and the observe screen's trackio source", False),
    ("anthropic", "anthropic", "the chat screen", False),
    ("mcp", "mcp", "the MCP tool server", False),
    ("PyNaCl", "pynacl", "ledger signatures", False),
    ("textual-plotext", "textual-plotext", "charts", False),
)


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["detail"] = redact_text(d["detail"])  # belt and braces: no secret ever leaves
        return d


def check_python() -> Check:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro} ({platform.python_implementation()}, {sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return Check("python", "fail", f"{text}; carl needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+")
    return Check("python", "ok", text)


def _torch():
    try:
        import torch  # noqa: PLC0415 — doctor is allowed the heavy import

        return torch, None
    except Exception as exc:  # ImportError, or a broken install raising anything
        return None, f"{type(exc).__name__}: {exc}"


def check_torch() -> Check:
    torch, err = _torch()
    if torch is None:
        return Check("torch", "fail", f"not importable ({err}); install torch (CPU: pip install torch==2.13.0)")
    cuda = getattr(torch.version, "cuda", None)
    hip = getattr(torch.version, "hip", None)
    build = f"CUDA {cuda} build" if cuda else (f"ROCm {hip} build" if hip else "CPU build")
    return Check("torch", "ok", f"{torch.__version__} ({build})")


def check_cuda() -> Check:
    torch, err = _torch()
    if torch is None:
        return Check("cuda", "warn", "unknown: torch is not importable")
    if not getattr(torch.version, "cuda", None) and not getattr(torch.version, "hip", None):
        return Check("cuda", "warn", "no GPU support in this torch build: training runs on CPU (tiny demo only)")
    try:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # driver trouble
        return Check("cuda", "warn", f"CUDA present but unusable: {exc}")
    if n == 0:
        return Check("cuda", "warn", f"torch built for CUDA {torch.version.cuda}, but no GPU is visible")
    names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
    mem = torch.cuda.get_device_properties(0).total_memory / 2**30
    return Check("cuda", "ok", f"{n} GPU(s): {', '.join(names)} ({mem:.0f} GiB), CUDA {torch.version.cuda}")


def check_mps() -> Check:
    if sys.platform != "darwin":
        return Check("mps", "ok", f"not applicable on {sys.platform}")
    torch, _ = _torch()
    backend = getattr(getattr(torch, "backends", None), "mps", None) if torch else None
    if backend is not None and backend.is_available():
        return Check("mps", "ok", "available (Apple GPU)")
    return Check("mps", "warn", "not available: training runs on CPU")


def check_load() -> Check:
    """What this machine can load (engine.capacity): the largest model per precision, for LoRA GRPO and
    inference. ``ok`` on a GPU, ``warn`` on CPU (only small models train in reasonable time)."""
    try:
        from engine.capacity import this_machine

        cap = this_machine()
    except Exception as exc:  # torch missing or broken: the torch check says why
        return Check("load", "warn", f"unknown: {type(exc).__name__}: {exc}".split("\n")[0])
    return Check("load", "ok" if cap.device == "cuda" else "warn", cap.summary())


def check_library(dist: str, shown: str, needed_for: str, required: bool) -> Check:
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        status: Status = "fail" if required else "warn"
        return Check(f"lib.{shown}", status, f"not installed: {needed_for} will not work "
                                             f"(reinstall carl with the README's install command)")
    return Check(f"lib.{shown}", "ok", version)


def _writable_probe(root: Path) -> str | None:
    """None when ``root`` (created if missing) accepts a new file; else the reason."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-", delete=True) as fh:
            fh.write(b"ok")
            fh.flush()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_home(home: CarlHome) -> Check:
    problem = _writable_probe(home.root)
    if problem:
        return Check("carl_home", "fail", f"{home.root} is not writable ({problem}); set CARL_HOME to a writable "
                                          "directory")
    return Check("carl_home", "ok", f"{home.root} (writable)")


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(home: CarlHome) -> Check:
    where = _existing_parent(home.root)
    try:
        free = shutil.disk_usage(where).free / 2**30
    except OSError as exc:
        return Check("disk", "warn", f"cannot measure free space at {where}: {exc.strerror}")
    text = f"{free:.1f} GiB free at {where}"
    if free < DISK_FAIL_GB:
        return Check("disk", "fail", f"{text}: checkpoints need more than {DISK_FAIL_GB:g} GiB")
    if free < DISK_WARN_GB:
        return Check("disk", "warn", f"{text}: enough for the demo, tight for real models (< {DISK_WARN_GB:g} GiB)")
    return Check("disk", "ok", text)


def _hf_stored_token() -> tuple[str | None, str]:
    """The token huggingface_hub would use from disk (its token file), without the environment."""
    try:
        from huggingface_hub import constants
    except Exception:
        return None, ""
    path = Path(getattr(constants, "HF_TOKEN_PATH", Path(constants.HF_HOME) / "token"))
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None, ""
    return (token or None), f"stored token {path}"


def _credential(name: str, env_vars: tuple[str, ...], needed_for: str,
                fallback: Callable[[], tuple[str | None, str]] | None = None) -> Check:
    for var in env_vars:
        value = os.environ.get(var)
        if value:
            return Check(f"credential.{name}", "ok", f"{mask_secret(value)} from {var}")
    if fallback is not None:
        value, source = fallback()
        if value:
            return Check(f"credential.{name}", "ok", f"{mask_secret(value)} from {source}")
    return Check(f"credential.{name}", "warn", f"not set ({' or '.join(env_vars)}): needed for {needed_for}")


def check_credentials() -> list[Check]:
    return [
        _credential("huggingface", ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
                    "gated models, pushing adapters and HF Jobs", _hf_stored_token),
        _credential("anthropic", ("ANTHROPIC_API_KEY",), "the chat screen and `carl --batch ask`"),
        _credential("runpod", ("RUNPOD_API_KEY",), "RunPod jobs"),
    ]


def check_config(path: str | Path | None = None, sets: list[str] | None = None) -> Check:
    """The carl.yaml in force (--config, else ./carl.yaml): valid → ok; invalid → warn with the first error."""
    from engine.config import load_config
    from engine.errors import CARLError

    try:
        cfg, found = load_config(path, sets)
    except CARLError as exc:
        n = len(exc.context.get("errors", [])) or 1
        return Check("config", "warn", f"{exc.message} — {n} problem(s); see `carl --batch project validate`")
    if found is None:
        return Check("config", "ok", "no carl.yaml here: the tiny-cpu demo is in force")
    return Check("config", "ok", f"{found} is valid (project {cfg.project.name})")


def check_entitlements(path: str | Path | None = None, sets: list[str] | None = None) -> Check:
    """The managed platform's entitlements, from the local cache (engine/platform/entitlements.py)."""
    from engine.platform.entitlements import doctor_row

    status, detail = doctor_row(path, sets)
    return Check("entitlements", status, detail)  # type: ignore[arg-type]


def check_hardware() -> Check:
    """GPU utilisation and memory per device (NVML) and the machine's CPU/RAM (psutil): engine/system.py."""
    from engine.system import check_hardware as measure

    status, detail = measure()
    return Check("hardware", status, detail)  # type: ignore[arg-type]


def check_sandbox() -> Check:
    """Which jail model-written code (the code environment's tools, the code_tests reward) runs in here."""
    from engine.envs.sandbox import isolation

    backend, how = isolation()
    if backend is None:
        return Check("sandbox", "warn", f"no isolation here ({how}): the code environment's tools and the "
                                         "code_tests reward refuse to run (install bubblewrap, or allow "
                                         "unprivileged user namespaces)")
    if backend == "unshare":
        return Check("sandbox", "ok", f"{how} (bubblewrap is not installed; the unshare fallback is in use)")
    return Check("sandbox", "ok", how)


def run_checks(home: CarlHome | None = None, config: str | Path | None = None,
               sets: list[str] | None = None) -> list[Check]:
    """All checks, in a stable order."""
    home = home or CarlHome.from_env()
    checks = [check_python(), check_torch(), check_cuda(), check_mps(), check_load()]
    checks.append(check_hardware())
    checks += [check_library(*lib) for lib in LIBRARIES]
    checks += [check_home(home), check_disk(home), check_sandbox()]
    checks += check_credentials()
    checks.append(check_config(config, sets))
    checks.append(check_entitlements(config, sets))
    return checks


def report(checks: list[Check]) -> dict:
    """The doctor's JSON: ``{"checks": [...], "blockers": n_fail}``."""
    return {"checks": [c.to_dict() for c in checks], "blockers": sum(c.status == "fail" for c in checks)}
