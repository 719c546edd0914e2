"""Shared fixtures: an isolated CARL_HOME per test, determinism for snapshots, anyio on asyncio."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def _wheel_cache(tmp_path_factory):
    """carl's own wheel (engine.remote.ship), built once per session for every test that submits a job."""
    return tmp_path_factory.getbasetemp() / "carl-wheel-cache"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, _wheel_cache):
    """Every test gets its own CARL_HOME and never sees the developer's ~/.carl or secrets."""
    home = tmp_path / "carl-home"
    monkeypatch.setenv("CARL_HOME", str(home))
    monkeypatch.setenv("CARL_WHEEL_CACHE", str(_wheel_cache))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ANTHROPIC_API_KEY", "RUNPOD_API_KEY", "CARL_MANAGED_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    # never the developer's saved Hugging Face token (`hf auth login`), in this process or in subprocesses
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    if "huggingface_hub.constants" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub.constants"], "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    yield home


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def snap_home(request, monkeypatch):
    """A fixed CARL_HOME path per snapshot test (it shows in the header), fresh for each run."""
    root = Path("/tmp/carl-snapshots") / request.node.name.split("[")[0]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    monkeypatch.setenv("CARL_HOME", str(root / "home"))
    monkeypatch.chdir(root)
    random.seed(0)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def snap_env(monkeypatch):
    """Environment for deterministic Textual snapshots."""
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    monkeypatch.delenv("NO_COLOR", raising=False)
    os.environ.pop("NO_COLOR", None)


# Loopback fakes of the remote backends (tests/test_remote_fakes.py), each with its credential in the environment.
@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as hc

    from tests.test_remote_fakes import HFJobsFake

    s = HFJobsFake()
    monkeypatch.setenv("HF_ENDPOINT", s.url)
    monkeypatch.setenv("HF_TOKEN", s.token)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # HF_HUB_OFFLINE=1 holds for everything else
    yield s
    s.close()


@pytest.fixture
def pods(monkeypatch):
    from tests.test_remote_fakes import RunPodFake

    s = RunPodFake()
    monkeypatch.setenv("RUNPOD_API_KEY", s.token)
    yield s
    s.close()


@pytest.fixture
def managed(monkeypatch):
    from tests.test_remote_fakes import ManagedFake

    s = ManagedFake()
    monkeypatch.setenv("CARL_MANAGED_TOKEN", s.token)
    yield s
    s.close()


def _leftovers(marker: str) -> list[tuple[int, str]]:
    """Live processes (not this one) whose command line names ``marker`` (this session's temporary folder)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmd and state not in ("Z", "X"):
            out.append((int(p.name), cmd[:200]))
    return out


def pytest_sessionfinish(session, exitstatus):
    """No run process (supervisor, torchrun, rank, worker) started by this session may outlive it (issue 25): the
    session fails, naming them, and they are ended."""
    import time

    factory = getattr(session.config, "_tmp_path_factory", None)
    try:
        marker = str(factory.getbasetemp()) + os.sep if factory is not None else None  # pytest-1/ ≠ pytest-17/
    except (OSError, ValueError):
        marker = None
    if not marker or not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + 15.0
    left = _leftovers(marker)
    while left and time.monotonic() < deadline:  # a run's processes may be finishing their exit
        time.sleep(0.25)
        left = _leftovers(marker)
    if not left:
        return
    for pid, _ in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    sys.stderr.write("\nprocesses left behind by this test session (now killed):\n"
                     + "".join(f"  {pid}: {cmd}\n" for pid, cmd in left))
    session.exitstatus = 1
