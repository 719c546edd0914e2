"""Results come home: a run uploads itself to ``train.output_repo``, and ``run pull`` brings it back.

Layout in the repo (one repo can hold many runs)::

    runs/<run_id>/meta.json, config.yaml, plan.json, frames.jsonl, events.jsonl, stdout.log (the worker's log)
    runs/<run_id>/checkpoints/checkpoint-<step>/…      at every checkpoint (the TRL checkpoint or adapter)
    runs/<run_id>/final/…                              at the end, only when the policy allows it (below)

``<run_id>`` is ``$CARL_RUN_ID`` (the id the submitting carl gave the job) when set, else the run's own id.
Each upload is one commit (``HfApi.create_commit``); unchanged files are skipped by the Hub. The final model is
uploaded when the ledger policy allows a push — with the default ``policy.push_requires_eval: true`` only after
the held-out eval passed the gate (``engine.trainer.evalgate.decide``); otherwise ``meta.json``'s ``output``
says why it was held back. An upload that fails never fails the run: it is logged, counted in
``meta.json.output.errors``, reported as an ``upload_error`` event, and retried with the next upload (the files
are re-sent).

In a training run (``background=True``) uploads run off the training loop: a checkpoint is hard-linked into
``.upload/`` (the trainer may rotate the original away meanwhile) and queued; one uploader thread commits the queue
in order, retrying a transient failure (network, a Hub 5xx, anything unexpected) with exponential backoff, never
a refused token; ``finish`` queues the last upload and waits for the queue for at most ``join_s`` seconds.

``pull_run`` downloads ``runs/<run_id>/`` (``snapshot_download``) into ``CARL_HOME/runs/<run_id>/`` and marks
the run's meta with ``backend`` (the job's) and ``remote`` (repo, revision, pulled_at), and points its paths at
this machine (:func:`localize`), so observe, infer, eval, the train screen, the try panel and ``run diff`` read it
like a local run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.errors import CARLError, ConfigError, CredentialError, NetworkError, RunNotFound
from engine.home import CarlHome, validate_run_id

RUN_FILES = ("meta.json", "config.yaml", "plan.json", "frames.jsonl", "events.jsonl", "stdout.log",
             "pipeline.json")  # pipeline.json: train --send-it runs only
SKIP_NAMES = {".DS_Store"}


@contextlib.contextmanager
def hub_errors(what: str, repo_id: str, endpoint: str | None) -> Iterator[None]:
    """Map huggingface_hub's exceptions during ``what`` onto carl's typed errors."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    ctx = {"repo_id": repo_id, "endpoint": endpoint or "https://huggingface.co"}
    try:
        yield
    except OfflineModeIsEnabled:
        raise NetworkError(f"{what}: HF_HUB_OFFLINE is set, so huggingface_hub refuses to reach the Hub",
                           hint="Unset HF_HUB_OFFLINE to reach the Hub.", context=ctx) from None
    except RepositoryNotFoundError:
        raise RunNotFound(f"{what}: the Hub has no repo {repo_id} (or the token cannot see it)",
                          hint="Check the repo id and that $HF_TOKEN can read it.", context=ctx) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise CredentialError(f"{what}: the Hub refused the token (HTTP {status})",
                                  hint="$HF_TOKEN needs write access to the repo's namespace.",
                                  context={**ctx, "status": status}) from None
        first = (str(exc).splitlines() or [f"HTTP {status}"])[0][:300]
        raise NetworkError(f"{what} failed: {first}", context={**ctx, "status": status}) from None
    except (httpx2.TransportError, OSError) as exc:
        raise NetworkError(f"{what} failed: {type(exc).__name__}: {exc}".split("\n")[0][:300], context=ctx) from None


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _endpoint() -> str | None:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def remote_run_id(run_dir: Path) -> str:
    return os.environ.get("CARL_RUN_ID") or Path(run_dir).name


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in SKIP_NAMES
                  and ".cache" not in p.relative_to(folder).parts)


class OutputSync:
    """Uploads one run directory to ``repo_id`` under ``runs/<run_id>/`` (called by the worker, rank 0)."""

    def __init__(self, run_dir: Path, repo_id: str, *, private: bool = True, run_id: str | None = None,
                 log: Callable[[str], None] = print, meta: Callable[..., Any] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None, background: bool = False,
                 retries: int = 3, backoff_s: float = 2.0, join_s: float = 600.0):
        self.run_dir = Path(run_dir)
        self.on_event = on_event
        self.background, self.retries, self.backoff_s, self.join_s = background, max(1, retries), backoff_s, join_s
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.staging = self.run_dir / ".upload"
        self._output: dict[str, Any] = {}
        self.repo_id = repo_id
        self.private = private
        self.run_id = run_id or remote_run_id(self.run_dir)
        self.prefix = f"runs/{self.run_id}"
        self.log = log
        self._meta = meta
        self.commits: list[str] = []
        self.errors = 0
        self._created = False

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path, **kw: Any) -> "OutputSync | None":
        repo = cfg.train.output_repo
        return cls(run_dir, repo, private=cfg.train.output_private, **kw) if repo else None

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=_endpoint(), token=_token(), library_name="carl")

    def commit(self, files: list[tuple[Path, str]], message: str) -> str | None:
        """One commit of ``files`` ((local path, path under runs/<run_id>/)); None (logged) when it failed."""
        from huggingface_hub import CommitOperationAdd

        ops = [CommitOperationAdd(path_in_repo=f"{self.prefix}/{rel}", path_or_fileobj=str(p))
               for p, rel in files if p.is_file()]
        tries = self.retries if self.background else 1
        for attempt in range(1, tries + 1):
            try:
                if _token() is None:
                    raise CredentialError("no Hugging Face token in the job ($HF_TOKEN)")
                with hub_errors(f"upload to {self.repo_id}", self.repo_id, _endpoint()):
                    api = self._api()
                    if not self._created:
                        api.create_repo(self.repo_id, private=self.private, exist_ok=True)
                        self._created = True
                    info = api.create_commit(self.repo_id, operations=ops, commit_message=message)
                break
            except Exception as exc:  # noqa: BLE001 - an upload never fails the run, whatever went wrong
                code = exc.code if isinstance(exc, CARLError) else "carl.network"
                msg = exc.message if isinstance(exc, CARLError) else f"{type(exc).__name__}: {exc}".split("\n")[0][:300]
                transient = not isinstance(exc, (CredentialError, RunNotFound, ConfigError))
                if transient and attempt < tries:
                    wait = self.backoff_s * 2 ** (attempt - 1)
                    self.log(f"carl: upload to {self.repo_id} failed ({code}): {msg}; retrying in {wait:g}s "
                             f"(attempt {attempt} of {tries})")
                    time.sleep(wait)
                    continue
                self.errors += 1
                self._record()
                self.log(f"carl: upload to {self.repo_id} failed ({code}): {msg}; the run goes on")
                if self.on_event is not None:
                    self.on_event({"name": "upload_error", "code": code, "error": msg, "what": message,
                                   "attempts": attempt, "repo_id": self.repo_id})
                return None
        sha = str(info.oid)
        self.commits.append(sha)
        self.log(f"carl: uploaded {len(ops)} files to {self.repo_id}/{self.prefix} ({message}; {sha[:10]})")
        return sha

    def _run_files(self) -> list[tuple[Path, str]]:
        return [(self.run_dir / f, f) for f in RUN_FILES]

    def _record(self, **fields: Any) -> None:
        """meta.json's ``output``: what was uploaded and how many uploads failed (fields accumulate)."""
        self._output.update(fields)
        if self._meta is not None:
            self._meta(output={"repo_id": self.repo_id, "path": self.prefix, "errors": self.errors,
                               "last_commit": self.commits[-1] if self.commits else None, **self._output})

    # ---- the background uploader (a training run)
    def _loop(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                job()
            except Exception as exc:  # noqa: BLE001 - never kill the uploader (and never the run)
                self.log(f"carl: upload job failed: {type(exc).__name__}: {exc}")
            finally:
                self._q.task_done()

    def _submit(self, job: Callable[[], Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="carl-upload", daemon=True)
            self._thread.start()
        self._q.put(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the queued uploads (at most ``timeout`` seconds, default ``join_s``); True when drained."""
        deadline = time.monotonic() + (self.join_s if timeout is None else timeout)
        while self._q.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _link(self, path: Path) -> Path:
        """Hard-link a checkpoint's files into ``.upload/`` (copy across devices): the upload reads a stable set."""
        dest = self.staging / path.name
        shutil.rmtree(dest, ignore_errors=True)
        for p in _folder_files(path):
            q = dest / p.relative_to(path)
            q.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, q)
            except OSError:
                shutil.copy2(p, q)
        return dest

    def checkpoint(self, step: int, path: Path) -> str | None:
        """Upload a checkpoint with the run's files. Background: queued (returns None at once)."""
        path = Path(path)
        if not self.background:
            return self._checkpoint(step, path)
        staged = self._link(path) if path.is_dir() else path

        def job() -> None:
            try:
                self._checkpoint(step, staged)
            finally:
                if staged != path:
                    shutil.rmtree(staged, ignore_errors=True)

        self._submit(job)
        return None

    def _checkpoint(self, step: int, path: Path) -> str | None:
        files = [(p, f"checkpoints/{path.name}/{p.relative_to(path).as_posix()}") for p in _folder_files(path)] \
            if path.is_dir() else []
        self._record(last_checkpoint=step)
        return self.commit(files + self._run_files(), f"carl: {self.run_id} checkpoint {step}")

    def finish(self, status: str, *, final_allowed: bool, reason: str,
               meta_fields: dict[str, Any] | None = None, overrides: dict[str, dict[str, Any]] | None = None
               ) -> str | None:
        """The last upload. ``meta_fields`` (the final status …) go into the uploaded meta.json; the worker
        writes them locally only after this returns, so a reader waiting for the terminal status locally finds
        the upload finished. ``overrides``: run files uploaded with this content instead (the pipeline's
        pipeline.json with the push stage done). Background: after the queued uploads, waiting at most
        ``join_s`` seconds in all (then None, and the run goes on to its end)."""
        if not self.background:
            return self._finish(status, final_allowed=final_allowed, reason=reason, meta_fields=meta_fields,
                                overrides=overrides)
        box: dict[str, Any] = {}
        self._submit(lambda: box.update(sha=self._finish(status, final_allowed=final_allowed, reason=reason,
                                                         meta_fields=meta_fields, overrides=overrides)))
        if not self.wait():
            self.errors += 1
            msg = f"the uploads did not finish within {self.join_s:g}s; the run ends without waiting for them"
            self.log(f"carl: {msg}")
            if self.on_event is not None:
                self.on_event({"name": "upload_error", "code": "carl.timeout", "error": msg, "what": "finish",
                               "repo_id": self.repo_id})
            return None
        self._q.put(None)  # the uploader thread ends
        shutil.rmtree(self.staging, ignore_errors=True)
        return box.get("sha")

    def _finish(self, status: str, *, final_allowed: bool, reason: str, meta_fields: dict[str, Any] | None,
                overrides: dict[str, dict[str, Any]] | None) -> str | None:
        from engine.rundir import read_json, write_json

        final = self.run_dir / "final"
        send_final = final_allowed and final.is_dir()
        self._record(status=status, final_uploaded=send_final, final_reason=reason)
        overrides = dict(overrides or {})
        files = [f for f in self._run_files() if f[1] != "meta.json" and f[1] not in overrides]
        if send_final:
            files += [(p, f"final/{p.relative_to(final).as_posix()}") for p in _folder_files(final)]
        with tempfile.TemporaryDirectory(prefix="carl-meta-") as tmp:
            meta = {**read_json(self.run_dir / "meta.json"), **(meta_fields or {})}
            write_json(Path(tmp) / "meta.json", meta)
            for name, content in overrides.items():
                write_json(Path(tmp) / name, content)
                files.append((Path(tmp) / name, name))
            sha = self.commit(files + [(Path(tmp) / "meta.json", "meta.json")],
                              f"carl: {self.run_id} {status}" + (" (final model)" if send_final else ""))
        if sha is None and send_final:
            self._record(status=status, final_uploaded=False, final_reason="upload failed")
        else:
            self._record(status=status, final_uploaded=send_final, final_reason=reason)
        return sha


def final_policy(cfg: Any, gate: tuple[bool, str] | None) -> tuple[bool, str]:
    """(upload the final model?, why): the ledger policy's answer for a push of this run's final model."""
    from engine import ledger

    passed = bool(gate and gate[0])
    why = gate[1] if gate else "no held-out eval ran"
    try:
        dec = ledger.evaluate({"kind": "push", "eval_passed": passed}, cfg)
    except CARLError as exc:
        return False, f"the policy could not be evaluated ({exc.code}); final model held back"
    if dec.decision == "allow":
        return True, f"eval gate {'passed' if passed else 'not passed'} ({why}); policy: {dec.rule or 'allow'}"
    return False, f"policy {dec.rule}: {dec.reason} — eval: {why}"


# ------------------------------------------------------------------------------------------ pull
def localize(run_dir: Path) -> None:
    """Point a pulled run's own files at this machine instead of the container: ``plan.json``'s ``config`` is
    the run's ``config.yaml`` here (the train screen shows it), and a ``checkpoint`` event's ``path`` is the
    pulled checkpoint (``checkpoints/<name>``). The container's values stay in ``remote.in_container`` (meta)
    and ``plan.json``'s ``command``/``launch`` (a record of how the job ran)."""
    import json

    from engine.rundir import read_json, write_json

    plan = read_json(run_dir / "plan.json")
    if plan and plan.get("config"):
        write_json(run_dir / "plan.json", {**plan, "config": str(run_dir / "config.yaml")})
    events = run_dir / "events.jsonl"
    if not events.is_file():
        return
    out, changed = [], False
    for line in events.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            e = None
        if isinstance(e, dict) and e.get("name") == "checkpoint" and isinstance(e.get("path"), str):
            here = run_dir / "checkpoints" / Path(e["path"]).name
            if e["path"] != str(here):
                line, changed = json.dumps({**e, "path": str(here)}, separators=(",", ":")), True
        out.append(line)
    if changed:
        tmp = events.with_name(events.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in out), encoding="utf-8")
        os.replace(tmp, events)


def pull_run(ref: str, *, repo_id: str | None = None, revision: str | None = None,
             home: CarlHome | None = None) -> dict[str, Any]:
    """Download a remote run into the local run store; see the module docstring."""
    from engine.remote import store
    from engine.rundir import read_json, write_json

    home = home or CarlHome.from_env()
    rec: dict[str, Any] | None = None
    try:
        rec = store.load(ref, home)
    except RunNotFound:
        rec = None
    run_id = validate_run_id(rec["run_id"] if rec else ref)  # before any path or request is built from it
    repo_id = repo_id or (rec or {}).get("output_repo")
    if not repo_id:
        raise ConfigError(f"no output repo known for {ref!r}",
                          hint="Pass --repo OWNER/NAME, or submit jobs with train.output_repo set in carl.yaml.",
                          context={"run": ref, "field": "train.output_repo"})
    from huggingface_hub import snapshot_download

    endpoint = _endpoint()
    prefix = f"runs/{run_id}"
    home.ensure()
    staging_root = home.root / "cache" / "pull"
    staging_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{run_id}-", dir=staging_root) as tmp:
        with hub_errors(f"pull {run_id} from {repo_id}", repo_id, endpoint):
            from huggingface_hub import HfApi

            api = HfApi(endpoint=endpoint, token=_token(), library_name="carl")
            sha = str(api.repo_info(repo_id, revision=revision).sha)
            snapshot_download(repo_id, revision=sha, allow_patterns=[f"{prefix}/*"], local_dir=tmp,
                              endpoint=endpoint, token=_token(), library_name="carl")
        src = Path(tmp) / prefix
        got = _folder_files(src) if src.is_dir() else []
        if not got:
            raise RunNotFound(f"{repo_id} has no {prefix}/ (the run has not uploaded yet, or another repo)",
                              hint="Wait for the job's first checkpoint, or check --repo.",
                              context={"repo_id": repo_id, "run": run_id, "revision": sha})
        dest = home.run_dir(run_id)
        dest.mkdir(parents=True, exist_ok=True)
        for sub in ("final",):  # a folder the remote replaces as a whole
            if (src / sub).is_dir() and (dest / sub).is_dir():
                shutil.rmtree(dest / sub)
        size = 0
        for p in got:
            rel = p.relative_to(src)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            size += p.stat().st_size
            os.replace(p, dest / rel)
    (dest / "checkpoints").mkdir(exist_ok=True)
    meta = read_json(dest / "meta.json")
    status = meta.get("status") or "unknown"
    if rec is not None and rec.get("status") in store.TERMINAL and status not in store.TERMINAL:
        status = rec["status"]  # the job ended without the run saying so (killed, timed out)
    remote_run = {k: meta.get(k) for k in ("run_id", "pid", "config_path") if meta.get(k) is not None}
    localize(dest)
    meta.update(run_id=run_id, status=status, pid=None, pid_start=None, config_path=str(dest / "config.yaml"),
                backend=(rec or {}).get("backend") or "hub",
                remote={"repo_id": repo_id, "revision": sha, "path": prefix, "pulled_at": time.time(),
                        "job": (rec or {}).get("remote_id"), "in_container": remote_run})
    write_json(dest / "meta.json", meta)
    from engine.rundir import last_checkpoint, last_frame_step

    ck = last_checkpoint(dest)
    return {"run_id": run_id, "run_dir": str(dest), "repo_id": repo_id, "revision": sha, "files": len(got),
            "bytes": size, "status": status, "last_step": max(meta.get("last_step") or 0, last_frame_step(dest)),
            "has_final": (dest / "final").is_dir(), "last_checkpoint": ck[0] if ck else None,
            "backend": meta["backend"]}
