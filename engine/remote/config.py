"""carl.yaml's ``remote:`` section: backends, images, prices and retry policy (pydantic, ``extra="forbid"``).

``Config.remote`` is a free dict in engine.config; :func:`remote_settings` validates it here and raises
``carl.config`` (exit 2) with field paths such as ``remote.hf.flavor``. Tokens never live in carl.yaml: each
backend names the *environment variable* that holds its token (``token_env``), because the resolved carl.yaml
is shipped to the remote job and recorded in the ledger.

Example::

    remote:
      default_backend: hf
      hours: 3                      # max hours per job (default: budget.max_hours); also the job's hard timeout
      hf: {flavor: a100-large}
      runpod: {gpu_type: "NVIDIA H100 80GB HBM3", gpu_count: 1, hf_token_secret: hf_token}
      managed: {url: "https://carl.example.com/api", flavor: gpu-1x}
      prices:                       # USD per hour, overriding the built-in table
        "managed:gpu-1x": 2.0
        "hf:a100-large": 2.5
      retries: {max_attempts: 4, base_delay_s: 0.5, max_delay_s: 8, timeout_s: 30}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BACKENDS = ("hf", "runpod", "managed")
Backend = Literal["hf", "runpod", "managed"]

# torch 2.8.0 (carl needs >= 2.6: transformers 5 does), CUDA 12.8 (Hopper and Blackwell), Python 3.11 (carl needs
# >= 3.11). A tag published by the PyTorch project; not re-checked against Docker Hub in this session.
DEFAULT_IMAGE = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
Ship = Literal["auto", "wheel", "pypi", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RetrySettings(_Model):
    max_attempts: int = Field(4, ge=1, le=10, description="tries per request, the first included")
    base_delay_s: float = Field(0.5, ge=0, le=60, description="first back-off delay; doubles per retry")
    max_delay_s: float = Field(8.0, ge=0, le=600, description="cap on one back-off delay")
    max_retry_after_s: float = Field(60.0, ge=0, le=3600, description="cap on a server's Retry-After")
    timeout_s: float = Field(30.0, gt=0, le=600, description="per-request timeout (connect and read)")


class _BackendBase(_Model):
    image: str | None = Field(None, min_length=1, description="container image (default: remote.image)")
    setup: str | None = Field(None, description="shell run before carl (default: remote.setup)")


class HFSettings(_BackendBase):
    flavor: str = Field("a10g-large", min_length=1, description="Hugging Face Jobs hardware flavor")
    namespace: str | None = Field(None, description="user or org that owns the job (default: the token's user)")
    endpoint: str | None = Field(None, description="Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    token_env: str = Field("HF_TOKEN", min_length=1, description="environment variable holding the HF token")
    wheel_repo: str | None = Field(None, description="private Hub repo carl's wheel is shipped through "
                                                     "(default: <namespace>/carl-wheels)")


class RunPodSettings(_BackendBase):
    gpu_type: str = Field("NVIDIA A100 80GB PCIe", min_length=1, description="RunPod GPU type id (the flavor)")
    gpu_count: int = Field(1, ge=1, le=8)
    cloud_type: Literal["SECURE", "COMMUNITY"] = "SECURE"
    container_disk_gb: int = Field(50, ge=1)
    base_url: str = Field("https://rest.runpod.io/v1", min_length=1)
    token_env: str = Field("RUNPOD_API_KEY", min_length=1)
    hf_token_secret: str | None = Field(
        None, description="name of a RunPod secret holding an HF token; passed as {{ RUNPOD_SECRET_<name> }}")


class ManagedSettings(_BackendBase):
    url: str | None = Field(None, description="base URL of the managed endpoint (https://…)")
    flavor: str = Field("gpu-1x", min_length=1)
    token_env: str = Field("CARL_MANAGED_TOKEN", min_length=1)
    send_hf_token: bool = Field(False, description="pass $HF_TOKEN to the run in its secrets field")
    # the platform behind it (engine/platform): entitlements, telemetry, ledger forwarding
    platform_url: str | None = Field(None, description="platform base URL (default: scheme and host of url)")
    entitlements_path: str = Field("/api/platform/entitlements", min_length=1)
    jwks_path: str = Field("/.well-known/carl-camp-jwks.json", min_length=1)
    telemetry_path: str = Field("/api/platform/telemetry", min_length=1)
    ledger_path: str = Field("/api/platform/ledger/append", min_length=1)
    submit_grant: str = Field("jobs.submit", min_length=1,
                              description="grant a managed submit needs (or <grant>:<flavor>)")


class RemoteSettings(_Model):
    default_backend: Backend = "hf"
    hours: float | None = Field(None, gt=0, le=168, description="max hours per job (default: budget.max_hours)")
    image: str = Field(DEFAULT_IMAGE, min_length=1)
    setup: str = Field("", description="shell run in the container before carl is installed (apt-get, …)")
    ship: Ship = Field("auto", description="how carl gets into the container: wheel (this install, built and "
                                            "shipped through a private Hub repo), pypi (carl-workbench==<version>), "
                                            "none (the image has it), auto (wheel from a source tree, else pypi)")
    poll_interval_s: float = Field(2.0, gt=0, le=300, description="how often `jobs logs --follow` polls")
    prices: dict[str, float] = Field(default_factory=dict,
                                     description='USD per hour per "backend:flavor" (or bare "flavor")')
    retries: RetrySettings = Field(default_factory=RetrySettings)
    hf: HFSettings = Field(default_factory=HFSettings)
    runpod: RunPodSettings = Field(default_factory=RunPodSettings)
    managed: ManagedSettings = Field(default_factory=ManagedSettings)

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, float]) -> dict[str, float]:
        for key, price in v.items():
            if price < 0:
                raise ValueError(f"price for {key!r} must be >= 0 (got {price})")
        return v

    def backend(self, name: str) -> HFSettings | RunPodSettings | ManagedSettings:
        return getattr(self, name)

    def image_for(self, name: str) -> str:
        return self.backend(name).image or self.image

    def setup_for(self, name: str) -> str:
        s = self.backend(name).setup
        return self.setup if s is None else s

    def flavor_for(self, name: str) -> str:
        b = self.backend(name)
        return b.gpu_type if isinstance(b, RunPodSettings) else b.flavor


def remote_settings(data: Any) -> RemoteSettings:
    """Validate ``Config.remote`` (a dict, or a Config) into :class:`RemoteSettings`.

    Raises ``carl.config`` naming every bad field (``remote.hf.flavor``) in ``context.errors``.
    """
    from engine.config import validate_section

    def hint(errs: list[dict[str, Any]]) -> str:
        if any(e["field"].endswith((".token", "_token")) for e in errs):
            return "Tokens never go in carl.yaml: set the environment variable named by token_env instead."
        return "Fix the named field(s) in carl.yaml's remote: section (see docs/remote.md)."

    return validate_section(RemoteSettings, data.remote if hasattr(data, "remote") else data, "remote", hint)
