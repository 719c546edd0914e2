"""trackio as a source: a project in the local store, or a dashboard / Space over its HTTP API."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import orjson

from engine.errors import NetworkError, RunNotFound, ValidationError
from engine.frames import Frame
from engine.observe.sources.base import RereadSource, frames_from_metrics


def default_trackio_dir() -> Path:
    """Where trackio keeps its store: $TRACKIO_DIR, else $HF_HOME/trackio (trackio.utils.TRACKIO_DIR)."""
    if os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(hf_home).expanduser() / "trackio"


class TrackioLocalSource(RereadSource):
    """A trackio project on this machine (one run of it: --run NAME, else the most recent)."""

    kind = "trackio"
    POLL_RETRY = (ValidationError,)  # the store caught mid-write (e.g. being created)

    def __init__(self, project: str, run: str | None = None, trackio_dir: str | Path | None = None):
        self.project = project
        self.trackio_dir = Path(trackio_dir).expanduser() if trackio_dir else default_trackio_dir()
        if not trackio_dir and not os.environ.get("TRACKIO_DIR"):  # carl's workers write under CARL_HOME/trackio
            from engine.home import CarlHome

            carl = CarlHome.from_env().root / "trackio"
            if (carl / f"{_canonical_project(project)}.db").is_file():
                self.trackio_dir = carl
        self.run = run
        self.run_id: str | None = None
        self.label = f"trackio:{project}"
        self._last_step: int | None = None

    @property
    def db_path(self) -> Path:
        # trackio names the file after the project (SQLiteStorage.get_project_db_filename)
        return self.trackio_dir / f"{_canonical_project(self.project)}.db"

    def _api_usable(self) -> bool:
        if os.environ.get("CARL_TRACKIO_READER") == "sqlite":
            return False
        try:
            import trackio.utils as tu
        except Exception:
            return False
        try:
            return Path(tu.TRACKIO_DIR).resolve() == self.trackio_dir.resolve()
        except OSError:
            return False

    def _rows_api(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from trackio.api import Api
        from trackio.sqlite_storage import SQLiteStorage

        runs = [{"id": r.id, "name": r.name} for r in Api().runs(self.project)]
        run = self._pick_run(runs)
        logs = SQLiteStorage.get_logs(self.project, run["name"], run_id=run["id"], scalar_only=True)
        return runs, logs

    def _rows_sqlite(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        uri = f"file:{self.db_path}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            cols = {r[1] for r in conn.execute("PRAGMA table_info(metrics)")}
            if not cols:  # a store trackio is still creating: no metrics table yet
                self._pick_run([])
            if "run_id" in cols:
                rows = conn.execute("SELECT run_id, run_name, MIN(timestamp) FROM metrics GROUP BY run_id "
                                    "ORDER BY MIN(timestamp), MIN(id)").fetchall()
                runs = [{"id": r[0], "name": r[1]} for r in rows]
            else:
                rows = conn.execute("SELECT run_name, MIN(timestamp) FROM metrics GROUP BY run_name "
                                    "ORDER BY MIN(timestamp), MIN(id)").fetchall()
                runs = [{"id": None, "name": r[0]} for r in rows]
            run = self._pick_run(runs)
            if run["id"] is not None:
                q = conn.execute("SELECT timestamp, step, metrics FROM metrics WHERE run_id = ? ORDER BY timestamp, id",
                                 (run["id"],))
            else:
                q = conn.execute("SELECT timestamp, step, metrics FROM metrics WHERE run_name = ? "
                                 "ORDER BY timestamp, id", (run["name"],))
            logs = []
            for ts, step, metrics in q:
                try:
                    d = orjson.loads(metrics)
                except orjson.JSONDecodeError:
                    d = None
                if isinstance(d, dict):
                    d["timestamp"], d["step"] = ts, step
                    logs.append(d)
            return runs, logs
        finally:
            conn.close()

    def _pick_run(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        if not runs:
            raise RunNotFound(f"trackio project {self.project!r} has no runs",
                              hint="Log to it with trackio.init/log first.", context={"project": self.project})
        if self.run is None:
            chosen = runs[-1]
        else:
            matches = [r for r in runs if r["name"] == self.run or r["id"] == self.run]
            if not matches:
                raise RunNotFound(f"no run {self.run!r} in trackio project {self.project!r}",
                                  hint="Runs there: " + ", ".join(sorted({str(r['name']) for r in runs}))[:300],
                                  context={"project": self.project, "run": self.run})
            chosen = matches[-1]
        self.run, self.run_id = chosen["name"], chosen["id"]
        return chosen

    def _frames(self) -> tuple[list[Frame], int]:
        if not self.db_path.exists():
            raise RunNotFound(f"no trackio project {self.project!r} in {self.trackio_dir}",
                              hint="Check the project name and TRACKIO_DIR (or pass --trackio-dir).",
                              context={"project": self.project, "trackio_dir": str(self.trackio_dir)})
        rows = None
        if self._api_usable():
            try:
                _, rows = self._rows_api()
                self.via = "trackio-api"
            except (RunNotFound, ValidationError):
                raise
            except Exception:  # noqa: BLE001 — e.g. "database is locked", or a trackio API change
                rows = None
        if rows is None:
            try:
                _, rows = self._rows_sqlite()
            except sqlite3.Error as exc:
                raise ValidationError(f"cannot read trackio store {self.db_path}: {exc}",
                                      hint="Check the file; trackio may be mid-migration.",
                                      context={"path": str(self.db_path)}) from exc
            self.via = "sqlite-ro"
        return frames_from_metrics(rows)


def _canonical_project(project: str) -> str:
    """trackio.utils.canonical_project_name: keep only [A-Za-z0-9_-], else "default"."""
    safe = "".join(c for c in project if c.isalnum() or c in ("-", "_")).rstrip()
    return safe or "default"


# ── remote trackio (HTTP API) ─────────────────────────────────────────────────────────────────────────

HTTP_API_VERSION = 1
SECRET_QUERY_KEYS = {"write_token", "token", "hf_token"}


def space_url(space_id: str) -> str:
    """trackio's mapping of a Space id (``user/space``) to its URL."""
    ns, name = space_id.split("/", 1)
    return f"https://{f'{ns}-{name}'.lower().replace('_', '-').replace('.', '-')}.hf.space/"


def split_dashboard_url(url: str) -> tuple[str, dict[str, str]]:
    """(base URL without secrets or query, useful query params such as project/run)."""
    if not url.startswith(("http://", "https://")):
        if re.fullmatch(r"[\w.-]+/[\w.-]+", url):
            return space_url(url), {}
        raise ValidationError(f"not a dashboard URL or Space id: {url!r}",
                              hint="Pass http(s)://host:port/ or user/space.")
    p = urlparse(url)
    params = {k: v for k, v in parse_qsl(p.query) if k.lower() not in SECRET_QUERY_KEYS}
    base = urlunparse((p.scheme, p.netloc, p.path if p.path.endswith("/") else p.path + "/", "", "", ""))
    return base, params


def space_host(space_id: str) -> str:
    return (urlparse(space_url(space_id)).hostname or "").lower()


_OWNED: dict[str, set[str]] = {}


def token_space_hosts(token: str) -> set[str]:
    """The hosts of every Space of the token's user and orgs (huggingface_hub's ``whoami`` and ``list_spaces``,
    ``HF_ENDPOINT`` honoured), cached per process; empty when the Hub cannot be asked (offline, bad token): then
    the token is not sent. Exact hosts, not a name prefix: ``alice-evil-x.hf.space`` may be user ``alice-evil``'s."""
    if token in _OWNED:
        return _OWNED[token]
    hosts: set[str] = set()
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        info = api.whoami(token=token)
        names = [str(info.get("name") or "")] + [str(o.get("name") or "") for o in info.get("orgs") or []]
        for ns in filter(None, names):
            hosts.update(space_host(sp.id) for sp in api.list_spaces(author=ns, token=token))
    except Exception:  # noqa: BLE001 — offline, rate-limited or a bad token: do not send it
        hosts = set()
    _OWNED[token] = hosts
    return hosts


class TrackioRemoteSource(RereadSource):
    """A run on a trackio dashboard (local ``trackio show`` or a Space), read with its HTTP API."""

    kind = "trackio-remote"
    via = "trackio-http"

    def __init__(self, url: str, run: str | None = None, project: str | None = None, *, timeout: float = 15.0,
                 retries: int = 3, send_token: bool = False):
        self.send_token = send_token
        self._token_ok: bool | None = None
        self.base, params = split_dashboard_url(url)
        self.project = project or params.get("project")
        self.run = run or params.get("run") or (params.get("runs", "").split(",")[0] or None)
        self.label = self.base + (f"?{urlencode({'project': self.project})}" if self.project else "")
        self.timeout, self.retries = timeout, retries
        self._checked = False
        self._last_step: int | None = None

    def _headers(self) -> dict[str, str]:
        """HF_TOKEN goes only to a Space of the token's own user or one of its orgs (``whoami``), or anywhere
        when asked (``--send-token``): a token sent to someone else's Space is a token given away."""
        token = os.environ.get("HF_TOKEN")
        if not token:
            return {}
        if self._token_ok is None:
            host = urlparse(self.base).hostname or ""
            if self.send_token:
                self._token_ok = True
            elif not host.endswith(".hf.space"):
                self._token_ok = False
            else:
                self._token_ok = host.lower() in token_space_hosts(token)
        return {"Authorization": f"Bearer {token}"} if self._token_ok else {}

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        import httpx

        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                with httpx.Client(timeout=self.timeout, headers=self._headers()) as client:
                    r = client.request(method, self.base + path, json=payload)
                if r.status_code >= 500:
                    raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                return r
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                last = exc
                if attempt + 1 < self.retries:
                    time.sleep(0.3 * 2 ** attempt)
        raise NetworkError(f"trackio dashboard {self.base} unreachable after {self.retries} tries: "
                           f"{type(last).__name__}", hint="Check the URL and that the dashboard is running.",
                           context={"url": self.base})

    def call(self, api: str, *args: Any, **kwargs: Any) -> Any:
        """One call of the dashboard's HTTP API (``POST /api/<name>`` with ``{"args", "kwargs"}``)."""
        if not self._checked:
            r = self._request("GET", "version")
            try:
                info = r.json()
            except ValueError:
                info = {}
            if r.status_code != 200 or info.get("api_version") != HTTP_API_VERSION:
                raise NetworkError(f"{self.base} is not a trackio dashboard with HTTP API v{HTTP_API_VERSION}",
                                   hint="Point --url at a trackio ≥ 0.40 dashboard (trackio show) or Space.",
                                   context={"url": self.base, "status": r.status_code})
            self._checked = True
        r = self._request("POST", f"api/{api}", {"args": list(args), "kwargs": kwargs})
        try:
            body = r.json()
        except ValueError as exc:
            raise NetworkError(f"trackio {api}: not JSON (HTTP {r.status_code})", context={"url": self.base}) from exc
        if r.status_code != 200 or body.get("error"):
            raise ValidationError(f"trackio {api} failed: {body.get('error') or r.status_code}",
                                  hint="Check --project and --run.", context={"url": self.base})
        return body.get("data")

    def _ensure_target(self) -> None:
        if self.project is None:
            projects = self.call("get_all_projects") or []
            if len(projects) != 1:
                raise ValidationError("pass --project: the dashboard has "
                                      f"{len(projects)} projects", hint="Projects: " + ", ".join(projects)[:300],
                                      context={"url": self.base})
            self.project = projects[0]
            self.label = self.base + f"?{urlencode({'project': self.project})}"
        runs = self.call("get_runs_for_project", self.project) or []
        if not runs:
            raise RunNotFound(f"no runs in project {self.project!r} on {self.base}", context={"url": self.base})
        if self.run is None:
            self.run = runs[-1]["name"]
        elif not any(r.get("name") == self.run or r.get("id") == self.run for r in runs):
            raise RunNotFound(f"no run {self.run!r} in project {self.project!r} on {self.base}",
                              hint="Runs there: " + ", ".join(str(r.get("name")) for r in runs)[:300],
                              context={"url": self.base, "project": self.project})

    def _frames(self) -> tuple[list[Frame], int]:
        self._ensure_target()
        logs = self.call("get_logs", self.project, self.run, scalar_only=True) or []
        return frames_from_metrics(logs, (ValueError, TypeError, AttributeError))


