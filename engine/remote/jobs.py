"""Remote jobs, end to end: plan → estimate → policy/approval → submit → record → status/logs/stop.

Batch (``carl --batch jobs …``) and the workbench call these functions; they return plain dicts (the JSON the
batch verbs print) and raise engine.errors types. Ledger blocks: ``approval`` (before a paid submit),
``job.submit`` (after the backend accepted it) and ``job.stop``; each names the job by carl's run id
(``job_id``), so the ledger counts an approval and its submit once toward today's spend.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from engine import ledger
from engine.config import Config
from engine.errors import CARLError
from engine.home import CarlHome
from engine.remote import store
from engine.remote.approval import Estimate, enforce, estimate, record_approval
from engine.remote.base import JobClient, JobPlan, JobStatus, RetryPolicy, new_idempotency_key, require_token
from engine.remote.config import BACKENDS, RemoteSettings, remote_settings
from engine.remote.mirror import LocalMirror, parse_json_line

CONFIG_IN_CONTAINER = '"${TMPDIR:-/tmp}/carl-job.yaml"'  # shell text: $TMPDIR when the container sets it


def make_client(backend: str, rs: RemoteSettings, *, endpoint: str | None = None, namespace: str | None = None,
                sleep: Callable[[float], None] = time.sleep) -> JobClient:
    """The JobClient for ``backend`` (``endpoint`` overrides the configured base URL, e.g. a record's)."""
    policy = RetryPolicy.from_settings(rs.retries)
    if backend == "hf":
        from engine.remote.hf_jobs import HFJobsClient

        s = rs.hf.model_copy(update={k: v for k, v in (("endpoint", endpoint), ("namespace", namespace)) if v})
        return HFJobsClient(s, policy, sleep=sleep)
    if backend == "runpod":
        from engine.remote.runpod import RunPodClient

        s = rs.runpod.model_copy(update={"base_url": endpoint} if endpoint else {})
        return RunPodClient(s, policy, sleep=sleep)
    if backend == "managed":
        from engine.remote.managed import ManagedClient

        s = rs.managed.model_copy(update={"url": endpoint} if endpoint else {})
        return ManagedClient(s, policy, poll_interval_s=rs.poll_interval_s, sleep=sleep)
    raise CARLError(f"unknown backend {backend!r}", code="carl.validation", hint=f"Backends: {', '.join(BACKENDS)}.")


def credentials(backend: str, rs: RemoteSettings) -> None:
    """``carl.credential`` (exit 3, naming the variable) unless the backend's token is set. Reads, never stores."""
    if backend == "hf":
        from engine.remote.hf_jobs import _saved_token

        require_token(rs.hf.token_env, "hf", fallback=_saved_token)
    elif backend == "runpod":
        require_token(rs.runpod.token_env, "runpod")
    elif backend == "managed":
        require_token(rs.managed.token_env, "managed")
        if rs.managed.send_hf_token:
            require_token("HF_TOKEN", "managed")


def credential_status(rs: RemoteSettings) -> list[dict[str, Any]]:
    """Per backend: which variable holds its token and whether it is set (masked), for panels and doctor."""
    import os

    from engine.errors import mask_secret

    from engine.remote.hf_jobs import _saved_token

    out = []
    for b, var in (("hf", rs.hf.token_env), ("runpod", rs.runpod.token_env), ("managed", rs.managed.token_env)):
        value, source = os.environ.get(var), "env"
        if not value and b == "hf":  # `hf auth login` stores a token that submits accept too
            value, source = _saved_token(), "saved"
        out.append({"backend": b, "env_var": var, "present": bool(value), "source": source if value else None,
                    "shown": mask_secret(value)})
    return out


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (s or "run")[:40]


def _job_name(project: str) -> str:
    slug = _slug(project)
    return slug if slug.startswith("carl") else f"carl-{slug}"


def job_script(setup: str, install: list[str]) -> str:
    """The container's shell script: ``<remote.setup> && <install carl> && <write the config> && exec carl
    --batch train`` (stdout: carl's JSON frame/event/done lines)."""
    steps = ([setup] if setup else []) + list(install) + [
        f'printf "%s" "$CARL_CONFIG_YAML" > {CONFIG_IN_CONTAINER}',
        f"exec carl --batch train --config {CONFIG_IN_CONTAINER}"]
    return " && ".join(steps)


def build_plan(cfg: Config, rs: RemoteSettings, backend: str, est: Estimate, *, run_id: str, key: str,
               config_path: Path | None = None, install: list[str] | None = None) -> JobPlan:
    """The job: the resolved carl.yaml travels in ``$CARL_CONFIG_YAML``; the container runs
    :func:`job_script` (``install``: the steps :mod:`engine.remote.ship` planned)."""
    script = job_script(rs.setup_for(backend).strip(), install or [])
    secrets: list[str] = []
    if backend == "hf" or (backend == "runpod" and rs.runpod.hf_token_secret) or \
            (backend == "managed" and rs.managed.send_hf_token):
        secrets.append("HF_TOKEN")
    env = {"CARL_CONFIG_YAML": cfg.to_yaml(), "CARL_RUN_ID": run_id, "CARL_REMOTE_BACKEND": backend,
           "PYTHONUNBUFFERED": "1"}
    from engine.remote.hf_jobs import DEFAULT_ENDPOINT, resolve_endpoint

    hub = resolve_endpoint(rs.hf)
    if hub != DEFAULT_ENDPOINT and (any("hf_hub_download" in x for x in install or []) or cfg.train.output_repo):
        env["HF_ENDPOINT"] = hub  # the wheel and the output repo live on this Hub, not huggingface.co
    return JobPlan(backend=backend, name=_job_name(cfg.project.name), flavor=est.flavor, hours=est.hours,
                   image=rs.image_for(backend), command=["sh", "-c", script], env=env, idempotency_key=key,
                   gpu_count=est.gpu_count, secret_names=secrets, price_per_hour=est.price_per_hour,
                   estimated_usd=est.estimated_usd, config_path=str(config_path) if config_path else None)


def _endpoint_of(client: Any) -> str | None:
    return getattr(client, "endpoint", None) or getattr(client, "base_url", None)


def _apply_state(rec: dict[str, Any], state: Any, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    status = state.status.value
    if rec.get("stop_requested") and status in ("completed", "unknown"):
        status = "stopped"
    rec["status"] = status
    rec["raw_status"] = state.raw_status
    rec["message"] = state.message
    if state.url:
        rec["url"] = state.url
    if state.cost_per_hour is not None:
        rec["cost_per_hour"] = state.cost_per_hour
    if rec.get("running_since_ts") is None:
        if state.started_at is not None:
            rec["running_since_ts"] = state.started_at
        elif rec.get("backend") == "runpod":
            rec["running_since_ts"] = rec.get("submitted_ts")  # pods bill from creation
        elif status == "running":
            rec["running_since_ts"] = now
    if status in store.TERMINAL and rec.get("ended_ts") is None:
        rec["ended_ts"] = state.ended_at if state.ended_at is not None else now
    rec["ended_at"] = store.iso(rec.get("ended_ts"))
    return rec


def job_view(rec: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The JSON of ``jobs status`` / ``jobs stop`` for a record."""
    keys = ("run_id", "backend", "remote_id", "status", "message", "flavor", "gpu_count", "hours",
            "started_at", "ended_at", "last_step", "estimated_usd", "url")
    out = {k: rec.get(k) for k in keys}
    out["cost_so_far"] = store.cost_so_far(rec, now)
    return out


def estimate_job(cfg: Config, backend: str | None = None, *, hours: float | None = None, budget: float | None = None,
                 home: CarlHome | None = None) -> dict[str, Any]:
    rs = remote_settings(cfg)
    est = estimate(cfg, rs, backend or rs.default_backend, hours=hours, budget=budget, home=home)
    out = est.to_dict()
    out["approval_required"] = est.decision == "needs_approval"
    return out


def _shipment(cfg: Config, rs: RemoteSettings, backend: str, client: Any, *, upload: bool,
              home: CarlHome) -> Any:
    """How carl gets into the container (engine.remote.ship); uploads the wheel unless ``upload`` is False."""
    from engine.remote import ship

    if ship.resolve_mode(rs.ship, backend, rs) != "wheel":
        return ship.plan_shipment(backend, rs, namespace=None, endpoint="", token=None, upload=False, home=home)
    from engine.remote.hf_jobs import _saved_token, resolve_endpoint

    endpoint = resolve_endpoint(rs.hf)
    import os

    token = os.environ.get(rs.hf.token_env) or _saved_token()
    namespace = rs.hf.namespace
    if upload and namespace is None and rs.hf.wheel_repo is None:
        if backend == "hf":
            namespace = client.namespace()
        else:
            from engine.remote.hf_jobs import HFJobsClient

            namespace = HFJobsClient(rs.hf, RetryPolicy.from_settings(rs.retries)).namespace()
    return ship.plan_shipment(backend, rs, namespace=namespace, endpoint=endpoint, token=token, upload=upload,
                              home=home)


def _check_output_repo(cfg: Config, rs: RemoteSettings, backend: str) -> None:
    from engine.remote.ship import job_has_hf_token

    if cfg.train.output_repo and not job_has_hf_token(backend, rs):
        field = "remote.runpod.hf_token_secret" if backend == "runpod" else "remote.managed.send_hf_token"
        from engine.errors import ConfigError

        raise ConfigError(f"train.output_repo needs an HF token in the {backend} job, and {field} is not set",
                          hint=f"Set {field}, or remove train.output_repo.", context={"field": field})


def submit_job(cfg: Config, backend: str | None = None, *, approve: bool = False, via: str = "batch --approve",
               hours: float | None = None, budget: float | None = None, idempotency_key: str | None = None,
               dry_run: bool = False, config_path: Path | None = None, home: CarlHome | None = None,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Estimate, decide, (record the approval), submit, record. See the module docstring."""
    home = home or CarlHome.from_env()
    rs = remote_settings(cfg)
    backend = backend or rs.default_backend
    key = idempotency_key or new_idempotency_key()
    if idempotency_key and not dry_run:
        prior = store.find_by_key(key, home)
        if prior and prior.get("remote_id"):
            out = job_view(prior)
            out.update(deduplicated=True, idempotency_key=key)
            return out
    est = estimate(cfg, rs, backend, hours=hours, budget=budget, approved=approve, home=home)
    now = time.time()
    run_id = store.new_run_id(backend, key, now)
    client = make_client(backend, rs, sleep=sleep)
    _check_output_repo(cfg, rs, backend)
    if dry_run:
        shipment = _shipment(cfg, rs, backend, client, upload=False, home=home)
        plan = build_plan(cfg, rs, backend, est, run_id=run_id, key=key, config_path=config_path,
                          install=shipment.steps)
        return {"dry_run": True, "run_id": run_id, "backend": backend, "estimate": est.to_dict(),
                "approval_required": est.decision == "needs_approval",
                "setup_script": plan.command[-1], "shipment": shipment.to_dict(),
                "output_repo": cfg.train.output_repo,
                "plan": {k: v for k, v in plan.to_dict().items() if k != "env"} | {"env": sorted(plan.env)},
                "request": client.preview(plan)}
    enforce(est, approved=approve)
    credentials(backend, rs)
    if backend == "managed":  # the platform must grant it (engine/platform/entitlements.py; offline grace ≤ 24 h)
        from engine.platform.entitlements import Entitlements

        Entitlements(rs.managed, home=home, policy=RetryPolicy.from_settings(rs.retries), sleep=sleep).require(
            rs.managed.submit_grant, est.flavor)
    shipment = _shipment(cfg, rs, backend, client, upload=True, home=home)
    plan = build_plan(cfg, rs, backend, est, run_id=run_id, key=key, config_path=config_path,
                      install=shipment.steps)
    record_approval(est, job_id=run_id, via=via, home=home)
    rec: dict[str, Any] = {
        "run_id": run_id, "backend": backend, "remote_id": None, "status": "unknown", "flavor": est.flavor,
        "gpu_count": est.gpu_count, "hours": est.hours, "price_per_hour": est.price_per_hour,
        "estimated_usd": est.estimated_usd, "idempotency_key": key, "image": plan.image, "name": plan.name,
        "project": cfg.project.name, "config_path": plan.config_path, "submitted_ts": now,
        "started_at": store.iso(now), "ended_at": None, "last_step": None, "endpoint": _endpoint_of(client),
        "namespace": None, "approved_via": via, "output_repo": cfg.train.output_repo,
        "shipment": {k: v for k, v in shipment.to_dict().items() if k != "steps"}}
    store.save(rec, home)
    try:
        handle = client.submit(plan)
    except CARLError as exc:
        rec.update(status="failed", message=f"submit failed: {exc.code}: {exc}", ended_ts=time.time())
        rec["ended_at"] = store.iso(rec["ended_ts"])
        store.save(rec, home)
        raise
    rec["remote_id"] = handle.remote_id
    rec["namespace"] = getattr(client, "_ns", None)
    _apply_state(rec, handle.state)
    store.save(rec, home)
    LocalMirror(run_id, home).create(rec, cfg.to_yaml())
    ledger.record("job.submit", {"job_id": run_id, "remote_id": handle.remote_id, "backend": backend,
                                 "flavor": est.flavor, "gpu_count": est.gpu_count, "hours": est.hours,
                                 "estimated_usd": est.estimated_usd, "image": plan.image,
                                 "deduplicated": handle.deduplicated, "url": rec.get("url")}, home=home)
    out = job_view(rec)
    out.update(idempotency_key=key, deduplicated=handle.deduplicated, remaining_usd=est.remaining_usd,
               approved_via=via, output_repo=cfg.train.output_repo, ship=shipment.mode,
               run_dir=str(home.runs / run_id))
    return out


def _client_for(rec: dict[str, Any], cfg: Config, sleep: Callable[[float], None] = time.sleep) -> JobClient:
    rs = remote_settings(cfg)
    return make_client(rec["backend"], rs, endpoint=rec.get("endpoint"), namespace=rec.get("namespace"), sleep=sleep)


def _need_remote(rec: dict[str, Any]) -> str:
    if not rec.get("remote_id"):
        raise CARLError(f"{rec['run_id']} was never accepted by {rec.get('backend')}: {rec.get('message') or ''}",
                        code="carl.remote.submit_failed", hint="Submit it again with `carl --batch jobs submit`.")
    return str(rec["remote_id"])


def job_status(ref: str, cfg: Config, *, home: CarlHome | None = None,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    home = home or CarlHome.from_env()
    rec = store.load(ref, home)
    state = _client_for(rec, cfg, sleep).status(_need_remote(rec))
    rec = store.update(rec["run_id"], lambda fresh: _apply_state(fresh, state), home)
    _mirror_status(rec, home)
    return job_view(rec)


def _mirror_status(rec: dict[str, Any], home: CarlHome) -> None:
    """Carry a job's status to its local run (running, or terminal when the run did not say so itself)."""
    from engine.runs import read_json

    m = LocalMirror(rec["run_id"], home)
    if not m.exists:
        return
    local = read_json(m.dir / "meta.json").get("status")
    if local in store.TERMINAL:
        return
    if rec.get("status") in store.TERMINAL or (rec.get("status") == "running" and local != "running"):
        m.set_status(rec["status"])


def stop_job(ref: str, cfg: Config, *, home: CarlHome | None = None,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    home = home or CarlHome.from_env()
    rec = store.load(ref, home)
    remote_id = _need_remote(rec)
    rec["stop_requested"] = True
    state = _client_for(rec, cfg, sleep).stop(remote_id)
    _apply_state(rec, state)
    if rec["status"] not in store.TERMINAL:
        rec["status"] = "stopped"  # cancel accepted; the backend may still be winding down
        rec["ended_ts"] = rec.get("ended_ts") or time.time()
        rec["ended_at"] = store.iso(rec["ended_ts"])
    store.save(rec, home)
    view = job_view(rec)
    ledger.record("job.stop", {"job_id": rec["run_id"], "remote_id": remote_id, "backend": rec["backend"],
                               "status": rec["status"], "cost_so_far": view["cost_so_far"]}, home=home)
    return view


def parse_frame(line: str) -> dict[str, Any] | None:
    """A carl frame line (``{"type": "frame", "step": …}``) as a dict, else None."""
    obj = parse_json_line(line)
    return obj if obj is not None and obj.get("type") == "frame" and isinstance(obj.get("step"), int) else None


def job_logs(ref: str, cfg: Config, *, follow: bool = False, home: CarlHome | None = None,
             sleep: Callable[[float], None] = time.sleep) -> tuple[dict[str, Any], Iterator[str]]:
    """(the record, an iterator of log lines). Frame lines seen update the record's ``last_step``."""
    home = home or CarlHome.from_env()
    rec = store.load(ref, home)
    client = _client_for(rec, cfg, sleep)
    remote_id = _need_remote(rec)

    def save_step() -> None:
        if rec.get("last_step") is not None:
            step = rec["last_step"]
            store.update(rec["run_id"], lambda fresh: fresh.__setitem__(
                "last_step", max(step, fresh.get("last_step") or step)), home)

    mirror = LocalMirror(rec["run_id"], home)

    def lines() -> Iterator[str]:
        last_saved = time.monotonic()
        try:
            for line in client.logs(remote_id, follow=follow):
                obj = parse_json_line(line)
                if obj is not None:
                    mirror.feed(obj)
                    if obj.get("type") == "frame" and isinstance(obj.get("step"), int):
                        rec["last_step"] = obj["step"]
                        if time.monotonic() - last_saved > 2:
                            save_step()
                            last_saved = time.monotonic()
                yield line
        finally:
            save_step()

    return rec, lines()


def refresh_all(cfg: Config, *, home: CarlHome | None = None,
                sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Ask the backends about every job not yet finished; return ``store.list_jobs``. A backend that fails
    leaves its jobs as last seen (its error is attached as ``refresh_error``)."""
    home = home or CarlHome.from_env()
    errors: dict[str, str] = {}
    for row in store.list_jobs(home):
        if row["status"] in store.TERMINAL or not row.get("remote_id"):
            continue
        try:
            job_status(row["run_id"], cfg, home=home, sleep=sleep)
        except CARLError as exc:
            errors[row["run_id"]] = exc.code
    rows = store.list_jobs(home)
    for r in rows:
        if r["run_id"] in errors:
            r["refresh_error"] = errors[r["run_id"]]
    return rows


__all__ = ["JobStatus", "build_plan", "credential_status", "credentials", "estimate_job", "job_logs", "job_status",
           "job_view", "make_client", "parse_frame", "refresh_all", "stop_job", "submit_job"]
