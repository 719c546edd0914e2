"""A stand-in for a job's container on this machine: a fresh venv that has carl's dependencies but not carl.

A venv made from the shared venv's interpreter starts empty; instead of installing torch & co. again (minutes,
network), its site-packages gets one ``.pth`` line naming a directory of symlinks to every entry of the shared
venv's site-packages EXCEPT carl's own: its editable finder (``__editable__*carl_workbench*``) and its
``carl_workbench-*.dist-info``. Paths listed in a ``.pth`` are added to ``sys.path`` without their own ``.pth``
files being run, so the editable install cannot leak in either. In that venv ``import torch`` works,
``import engine`` fails, ``pip`` (from the shared venv, installing into this venv) sees every dependency as
satisfied and no ``carl-workbench`` — exactly what a job's ``pip install carl_workbench-….whl`` needs, offline.

``LocalContainer`` is what the loopback HF Jobs server (``HFJobsFake.executor``) runs a job with: per job a
home directory (``HOME``, ``TMPDIR`` under it, so ``~/.carl`` and the HF cache are the job's own), ``PATH`` with
the venv first, no ``PYTHONPATH``, pip offline (``PIP_NO_INDEX``) — plus whatever the test adds (the prebuilt
tiny-model cache, standing in for an image that has it).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


def _is_carl(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return n.endswith(".pth") or "carl_workbench" in n


def make_deps_venv(root: Path) -> Path:
    shared = Path(sysconfig.get_paths()["purelib"])
    # named like a site-packages dir: libraries that decide how to pickle a module by whether its file lies in
    # site-packages (datasets' fingerprinting via dill) must see these as installed packages
    farm = root / "deps" / "site-packages"
    farm.mkdir(parents=True)
    for entry in shared.iterdir():
        if not _is_carl(entry.name) and entry.name not in ("engine", "screens", "carl_tui"):
            (farm / entry.name).symlink_to(entry)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / ver / "site-packages" / "_carl_deps.pth").write_text(str(farm) + "\n", encoding="utf-8")
    return venv


class LocalContainer:
    def __init__(self, venv: Path, root: Path, extra_env: dict[str, str] | None = None):
        self.venv, self.root, self.extra_env = venv, root, dict(extra_env or {})

    def workdir(self, job_id: str) -> Path:
        d = self.root / job_id
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        return d

    def env(self, job_id: str) -> dict[str, str]:
        d = self.workdir(job_id)
        return {"PATH": f"{self.venv}/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(self.venv), "HOME": str(d),
                "TMPDIR": str(d / "tmp"), "LANG": "C.UTF-8", "PIP_NO_INDEX": "1",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
                **self.extra_env}
