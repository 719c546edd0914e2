"""The training worker's environment: an allowlist, not ``os.environ``.

The worker runs user reward code and ``trust_remote_code`` models, so it gets only what a training job needs
(docs/remote.md, "What the worker's environment holds"):

- the basics: ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``LANG``/``LANGUAGE``/``LC_*``, ``TERM``,
  ``TZ``, ``TMPDIR``, ``VIRTUAL_ENV``, ``PYTHONPATH``/``PYTHONHASHSEED``/``PYTHONUNBUFFERED``, ``LD_LIBRARY_PATH``,
  ``XDG_*``, proxy and CA-bundle variables (``HTTP(S)_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE``,
  ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``);
- the libraries' own settings, by prefix: ``HF_``, ``HUGGINGFACE_``, ``TRANSFORMERS_``, ``TOKENIZERS_``,
  ``DATASETS_``, ``TRACKIO_``, ``CUDA_``, ``NCCL_``, ``NVIDIA_``, ``TORCH``, ``PYTORCH_``, ``ACCELERATE_``,
  ``OMP_``, ``MKL_``, ``KMP_``, ``TRITON_``, ``GLOO_``, ``XLA_``, ``TRL_``, ``PEFT_``, ``TQDM_``; the distributed launch variables (``MASTER_ADDR``,
  ``MASTER_PORT``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``…);
- carl's own ``CARL_*`` settings, except secret-named ones (``*TOKEN*``, ``*KEY*``, ``*SECRET*``, ``*PASS*``…);
- the tokens the job needs: the Hugging Face token (``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, or the variable the
  run's ``remote.hf.token_env`` names), and the managed platform's token (``remote.managed.token_env``, default
  ``CARL_MANAGED_TOKEN``) **only** while telemetry consent is on and the run's carl.yaml names the platform (the
  worker then sends telemetry).

Never, whatever their name: the chat key (``ANTHROPIC_*``), RunPod's key (``RUNPOD_*`` and the variable the run's
``remote.runpod.token_env`` names), other providers' keys (``OPENAI_*``, ``AWS_*``, ``GOOGLE_*``, ``AZURE_*``,
``GH_``/``GITHUB_`` tokens), and the managed token outside the case above.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

BASIC = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "VIRTUAL_ENV",
    "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
    "LD_LIBRARY_PATH", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NO_COLOR", "COLUMNS", "LINES",
    "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "ROLE_RANK", "NODE_RANK", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HUGGING_FACE_HUB_TOKEN",
})
PREFIXES = ("LC_", "XDG_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "DATASETS_", "TRACKIO_",
            "CUDA_", "NCCL_", "NVIDIA_", "TORCH", "PYTORCH_", "ACCELERATE_", "OMP_", "MKL_", "KMP_", "TRITON_",
            "GLOO_", "XLA_", "TRL_", "PEFT_", "TQDM_", "CARL_")
NEVER = re.compile(r"^(ANTHROPIC|RUNPOD|OPENAI|AWS|GOOGLE|AZURE|GH|GITHUB|GITLAB)(_|$)", re.I)
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASS|CREDENTIAL", re.I)
MANAGED_DEFAULT = "CARL_MANAGED_TOKEN"


def _run_config(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    try:
        import yaml

        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _token_env(cfg: dict[str, Any], backend: str, default: str) -> str:
    section = ((cfg.get("remote") or {}).get(backend) or {}) if isinstance(cfg.get("remote"), dict) else {}
    name = section.get("token_env") if isinstance(section, dict) else None
    return name if isinstance(name, str) and name else default


def _telemetry_needs_token(cfg: dict[str, Any], home: Any = None) -> bool:
    managed = (cfg.get("remote") or {}).get("managed") if isinstance(cfg.get("remote"), dict) else None
    if not isinstance(managed, dict) or not (managed.get("url") or managed.get("platform_url")):
        return False
    try:
        from engine.platform import consent

        return bool(consent.enabled("telemetry", home))
    except Exception:
        return False


def worker_environment(run_dir: str | Path | None = None, environ: Mapping[str, str] | None = None, *,
                       home: Any = None) -> dict[str, str]:
    """The environment a training worker for ``run_dir`` starts with (see the module docstring)."""
    src = dict(os.environ if environ is None else environ)
    cfg = _run_config(Path(run_dir) if run_dir is not None else None)
    hf_env = _token_env(cfg, "hf", "HF_TOKEN")
    runpod_env = _token_env(cfg, "runpod", "RUNPOD_API_KEY")
    managed_env = _token_env(cfg, "managed", MANAGED_DEFAULT)
    needed = {hf_env}
    if _telemetry_needs_token(cfg, home):
        needed.add(managed_env)
    refused = {runpod_env, managed_env, MANAGED_DEFAULT} - needed
    out: dict[str, str] = {}
    for name, value in src.items():
        if name in needed:
            out[name] = value
            continue
        if name in refused or NEVER.match(name) or (name.startswith("CARL_") and SECRET_NAME.search(name)):
            continue
        if name in BASIC or name.startswith(PREFIXES):
            out[name] = value
    return out
