"""One-command set-up, standard library only: ``python3 -m carl_tui.bootstrap {install|run|test}``.

- ``install``: create ``.venv`` (idempotent), install torch==2.13.0 (the CPU build) unless a torch is already
  importable there, then ``pip install -e .[dev]``. Skips pip entirely when pyproject.toml has not changed since
  the last successful install (a stamp file), so re-running is instant.
  If the Python running this script already has a CUDA build of torch, the venv is created with
  ``--system-site-packages`` and that torch is used instead of the CPU pin.
  As root on a machine with apt-get, bubblewrap (the code sandbox's jail, engine/envs/sandbox.py) is installed
  when missing; elsewhere the sandbox falls back to unshare, and ``carl --batch doctor`` says which it has.
- ``run``: install, then open ``carl`` (the workbench on the built-in tiny demo). Run from carl's own source tree
  (a fresh clone's root), it opens the train screen on the demo in ``CARL_HOME/demo`` instead: the workbench's
  working directory is where a preset writes ``carl.yaml``, and that must not be the source tree.
- ``test``: install, then run the test suite (pytest); exits with pytest's code.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("CARL_VENV", ROOT / ".venv"))
STAMP = VENV / ".carl-install-stamp"
TORCH_PIN = "torch==2.13.0"


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def _say(msg: str) -> None:
    print(f"[carl bootstrap] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str]) -> None:
    _say(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True)


def _host_has_gpu_torch() -> bool:
    try:
        out = subprocess.run([sys.executable, "-c", "import torch,sys; sys.stdout.write(str(torch.version.cuda or ''))"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _system_packages() -> None:
    """bubblewrap for the code sandbox, where this script may install it (root, apt-get); best effort."""
    import shutil

    if shutil.which("bwrap") or not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", "bubblewrap"]
    try:
        try:
            _run(install)
        except subprocess.CalledProcessError:  # a fresh machine's package lists may be empty: read them once
            _run(["apt-get", "update"])
            _run(install)
    except (OSError, subprocess.CalledProcessError):
        _say("could not install bubblewrap: the sandbox uses its unshare fallback (see `carl --batch doctor`)")


def install() -> Path:
    if sys.version_info < (3, 11):
        sys.exit("carl needs Python 3.11 or newer")
    _system_packages()
    if not _bin("python").exists():
        args = [sys.executable, "-m", "venv"]
        if _host_has_gpu_torch():
            _say("found a CUDA build of torch in this Python: the venv will use it")
            args.append("--system-site-packages")
        _run(args + [str(VENV)])
    py = _bin("python")
    if STAMP.exists() and STAMP.read_text().strip() == _fingerprint():
        return py
    have_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode == 0
    _run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    if not have_torch:
        _run([py, "-m", "pip", "install", TORCH_PIN])
    _run([py, "-m", "pip", "install", "-e", f"{ROOT}[dev]"])
    STAMP.write_text(_fingerprint())
    return py


def is_source_tree(path: Path) -> bool:
    """``path`` is carl's own source tree (a clone's root): this very package, the engine and pyproject.toml."""
    p = path.resolve()
    return (p / "carl_tui" / "bootstrap.py").is_file() and (p / "engine").is_dir() and (p / "pyproject.toml").is_file()


def demo_dir() -> Path:
    """Where the workbench runs when started from the source tree: ``CARL_HOME/demo`` (default ~/.carl/demo)."""
    home = Path(os.environ.get("CARL_HOME") or Path.home() / ".carl").expanduser()
    return home / "demo"


def run_target(argv: list[str], cwd: Path) -> tuple[Path, list[str]]:
    """The working directory and ``carl`` arguments for ``run``: in the source tree, the demo directory and (with
    no arguments) the train screen on the built-in demo; anywhere else, unchanged."""
    if not is_source_tree(cwd):
        return cwd, list(argv)
    return demo_dir(), list(argv) or ["train"]


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "install"
    if what not in ("install", "run", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        py = install()
    except subprocess.CalledProcessError as exc:
        _say(f"install failed (exit {exc.returncode})")
        return exc.returncode or 1
    if what == "install":
        _say(f"installed: {_bin('carl')}")
        return 0
    if what == "run":
        cwd, args = run_target(argv[1:], Path.cwd())
        if cwd != Path.cwd():
            cwd.mkdir(parents=True, exist_ok=True)
            _say(f"this is carl's source tree: the workbench opens on the demo in {cwd} (a carl.yaml goes there)")
            os.chdir(cwd)
        os.execv(str(_bin("carl")), [str(_bin("carl")), *args])
    return subprocess.run([str(py), "-m", "pytest", *argv[1:]], cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
