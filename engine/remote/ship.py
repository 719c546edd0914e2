"""Ship the carl that plans a job into the job's container.

``remote.ship`` decides how (docs/remote.md, "What runs remotely"):

    wheel  build a wheel of this carl (``pip wheel --no-deps`` on a copy of the source tree), cached under
           ``CARL_HOME/cache/wheels/<content hash>/``; upload it to a private Hub repo of the user's
           (``remote.hf.wheel_repo``, default ``<namespace>/carl-wheels``, path ``wheels/<hash>/<file>``, skipped
           when already there); the container downloads it with ITS HF token (HF Jobs: the job's secret; RunPod:
           ``remote.runpod.hf_token_secret``; managed: ``remote.managed.send_hf_token``) and pip-installs it.
    pypi   ``pip install carl-workbench==<version>`` (only a released version is on the index).
    none   the image already has carl.
    auto   wheel when carl runs from a source tree (pyproject.toml next to the packages), else pypi.

The content hash covers every file the wheel is built from (paths and bytes), so the same source always maps to
the same cached wheel and the same path in the repo, and a changed source never reuses a stale one.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import CARLError, ConfigError
from engine.home import CarlHome

PACKAGES = ("carl_tui", "engine", "screens")
TOP_FILES = ("pyproject.toml", "README.md")
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")
WHEEL_DIR = "${TMPDIR:-/tmp}/carl-wheel"


class ShipFailed(CARLError):
    code = "carl.remote.ship_failed"
    exit_code = 1
    default_hint = "carl could not build or upload its wheel for the job; see the message, or set remote.ship."


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha: str  # content hash of the source (16 hex)
    cached: bool

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def path_in_repo(self) -> str:
        return f"wheels/{self.sha}/{self.filename}"


@dataclass(frozen=True)
class Shipment:
    """How carl reaches the container: the shell steps and what they need."""

    mode: str  # wheel | pypi | none
    steps: list[str]
    wheel_repo: str | None = None
    wheel_path: str | None = None
    wheel_revision: str | None = None
    wheel_sha: str | None = None
    uploaded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_root() -> Path | None:
    """The source tree carl runs from, or None when carl is installed from a wheel (no pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "pyproject.toml").is_file() and all((root / p).is_dir() for p in PACKAGES):
        return root
    return None


def source_files(root: Path) -> list[Path]:
    """The files a wheel of ``root`` is built from, as paths relative to ``root``, sorted."""
    out = [Path(f) for f in TOP_FILES if (root / f).is_file()]
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in filenames:
                if not name.endswith(SKIP_SUFFIXES) and not name.startswith("."):
                    out.append((Path(dirpath) / name).relative_to(root))
    return sorted(out)


def content_hash(root: Path, files: list[Path] | None = None) -> str:
    h = hashlib.sha256()
    for rel in files if files is not None else source_files(root):
        h.update(rel.as_posix().encode() + b"\0")
        h.update((root / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def carl_version() -> str:
    import tomllib

    root = source_root()
    if root is not None:
        return str(tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("carl-workbench")
    except PackageNotFoundError:
        return "0.0.0"


def wheel_cache(home: CarlHome | None = None) -> Path:
    """``$CARL_WHEEL_CACHE``, else ``CARL_HOME/cache/wheels``."""
    env = os.environ.get("CARL_WHEEL_CACHE")
    if env:
        return Path(env).expanduser()
    return (home or CarlHome.from_env()).root / "cache" / "wheels"


def build_wheel(home: CarlHome | None = None, *, root: Path | None = None) -> Wheel:
    """The wheel of this carl's source, built once per content hash (``wheel_cache()/<hash>/``)."""
    root = root or source_root()
    if root is None:
        raise ShipFailed("carl is not running from a source tree, so there is nothing to build a wheel from",
                         hint="Set remote.ship: pypi (a released version) or none (an image that has carl).")
    files = source_files(root)
    sha = content_hash(root, files)
    cache = wheel_cache(home) / sha
    found = sorted(cache.glob("carl_workbench-*.whl")) if cache.is_dir() else []
    if found:
        return Wheel(found[0], sha, cached=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="carl-wheel-", dir=cache.parent) as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        for rel in files:  # build from a copy: nothing is written into the source tree (no build/, egg-info)
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, src / rel)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
               "--disable-pip-version-check", "-w", str(out), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted(out.glob("carl_workbench-*.whl")) if out.is_dir() else []
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no wheel produced"]
            raise ShipFailed(f"building carl's wheel failed: {tail[0][:300]}",
                             context={"command": " ".join(cmd[:6]), "returncode": proc.returncode})
        staged = cache.with_name(f".{sha}.{os.getpid()}")
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        try:
            staged.rename(cache)
        except OSError:  # another process won the race: use its wheel
            shutil.rmtree(staged, ignore_errors=True)
    return Wheel(sorted(cache.glob("carl_workbench-*.whl"))[0], sha, cached=False)


def upload_wheel(wheel: Wheel, repo_id: str, *, endpoint: str, token: str) -> tuple[str, bool]:
    """Put the wheel at ``wheels/<hash>/<file>`` in the private repo ``repo_id`` (created if missing).
    Returns (the commit that holds it, whether it was uploaded now)."""
    from huggingface_hub import HfApi

    from engine.remote.sync import hub_errors

    api = HfApi(endpoint=endpoint, token=token, library_name="carl")
    with hub_errors(f"shipping carl's wheel to {repo_id}", repo_id, endpoint):
        api.create_repo(repo_id, private=True, exist_ok=True)
        if api.file_exists(repo_id, wheel.path_in_repo):
            return str(api.repo_info(repo_id).sha), False
        info = api.upload_file(path_or_fileobj=str(wheel.path), path_in_repo=wheel.path_in_repo, repo_id=repo_id,
                               commit_message=f"carl: wheel {wheel.filename} ({wheel.sha})")
        return str(info.oid), True


def wheel_steps(repo_id: str, path_in_repo: str, revision: str) -> list[str]:
    """Shell steps that download the wheel with the job's $HF_TOKEN (and $HF_ENDPOINT, when set) and install it."""
    fetch = ("import sys; from huggingface_hub import hf_hub_download as d; "
             "print(d(sys.argv[1], sys.argv[2], revision=sys.argv[3], local_dir=sys.argv[4]))")
    return ["python -m pip install --quiet --disable-pip-version-check 'huggingface_hub>=0.34'",
            f"python -c {shlex.quote(fetch)} {shlex.quote(repo_id)} {shlex.quote(path_in_repo)} "
            f"{shlex.quote(revision)} \"{WHEEL_DIR}\" >/dev/null",
            f"python -m pip install --quiet --disable-pip-version-check \"{WHEEL_DIR}/{path_in_repo}\""]


def resolve_mode(mode: str, backend: str | None = None, rs: Any = None) -> str:
    """``auto`` → wheel from a source tree when the job can read the Hub (HF Jobs always; RunPod/managed when
    they get an HF token), else pypi."""
    if mode == "auto":
        if source_root() is None:
            return "pypi"
        return "wheel" if backend is None or rs is None or job_has_hf_token(backend, rs) else "pypi"
    return mode


def job_has_hf_token(backend: str, rs: Any) -> bool:
    if backend == "hf":
        return True
    if backend == "runpod":
        return bool(rs.runpod.hf_token_secret)
    return bool(rs.managed.send_hf_token)


def plan_shipment(backend: str, rs: Any, *, namespace: str | None, endpoint: str, token: str | None,
                  upload: bool, home: CarlHome | None = None) -> Shipment:
    """The install steps for ``backend``. ``upload=False`` (``--dry-run``) builds the wheel locally but sends
    nothing: the revision is then the branch ``main`` instead of the pinned commit an upload returns."""
    mode = resolve_mode(rs.ship, backend, rs)
    if mode == "none":
        return Shipment("none", [])
    if mode == "pypi":
        v = carl_version()
        return Shipment("pypi", [f"python -m pip install --quiet --disable-pip-version-check "
                                 f"{shlex.quote(f'carl-workbench=={v}')}"])
    if not job_has_hf_token(backend, rs):
        field = "remote.runpod.hf_token_secret" if backend == "runpod" else "remote.managed.send_hf_token"
        raise ConfigError(f"{backend}: shipping carl's wheel needs an HF token in the job, and {field} is not set",
                          hint=f"Set {field} (the job then downloads the wheel from your private Hub repo), or "
                               f"remote.ship: pypi / none.", context={"field": field, "backend": backend})
    repo = rs.hf.wheel_repo or f"{namespace or '{namespace}'}/carl-wheels"
    wheel = build_wheel(home)
    revision, uploaded = "main", False
    if upload:
        if token is None:
            raise ShipFailed("shipping carl's wheel needs a Hugging Face token here (to upload it)",
                             hint="export HF_TOKEN=… (write access to your namespace), or set remote.ship.")
        revision, uploaded = upload_wheel(wheel, repo, endpoint=endpoint, token=token)
    return Shipment("wheel", wheel_steps(repo, wheel.path_in_repo, revision), wheel_repo=repo,
                    wheel_path=wheel.path_in_repo, wheel_revision=revision, wheel_sha=wheel.sha, uploaded=uploaded)
