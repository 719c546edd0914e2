"""Where frames come from. Every source yields :class:`engine.frames.Frame` objects.

- :class:`JsonlSource` — carl's own ``runs/<id>/frames.jsonl`` and any JSONL of metric dicts;
- :class:`TrainerStateSource` — TRL/transformers ``trainer_state.json`` (``log_history``), or a
  checkpoint / output directory holding one (the latest ``checkpoint-N`` wins);
- :class:`TrackioLocalSource` — a project in the local trackio store, read through trackio's own storage
  API (``trackio.api.Api`` for runs, ``SQLiteStorage.get_logs`` — the function behind the dashboard's
  ``get_logs``) when the imported trackio points at the same directory, else the project's SQLite file
  opened read-only (``file:…?mode=ro``): no write, no lock held, a live writer is never locked out;
- :class:`TrackioRemoteSource` — a trackio dashboard URL or Space id, over its HTTP API (``POST
  /api/get_logs`` …, api_version 1);
- :class:`engine.observe.tensorboard.TensorBoardSource` — a TensorBoard event directory (``report_to=
  "tensorboard"``), picked by :func:`file_source` for a directory of event files or an event file.

A source has ``load() -> (frames, skipped)`` (everything so far) and ``poll() -> (frames, skipped,
reset)`` (what arrived since), and ``ended()`` (the run says it is over).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import orjson

from engine.errors import NetworkError, RunNotFound, ValidationError
from engine.frames import Frame, JsonlTail, parse_lines
from engine.home import CarlHome

# ── metric-name normalisation ─────────────────────────────────────────────────────────────────────────

STEP_KEYS = ("step", "global_step", "_step", "iteration", "iter", "train/global_step")
ALIASES: dict[str, str] = {
    "phi": "phi", "phi_mean": "phi", "phi/mean": "phi", "carl/phi": "phi", "coherence/phi": "phi",
    "entropy": "entropy", "entropy_mean": "entropy", "policy/entropy": "entropy",
    "reward": "reward_mean", "reward_mean": "reward_mean", "rewards/mean": "reward_mean",
    "reward/mean": "reward_mean",
    "task_reward": "task_reward", "reward_task": "task_reward", "rewards/task": "task_reward",
    "carl_reward": "carl_reward", "reward_carl": "carl_reward", "rewards/carl": "carl_reward",
    "carl_weight": "carl_weight",
    "loss": "loss",
    "lr": "lr", "learning_rate": "lr",
    "kl": "kl", "objective/kl": "kl",
    "completion_length": "completion_length", "completions/mean_length": "completion_length",
    "clipped_ratio": "clipped_ratio", "completions/clipped_ratio": "clipped_ratio",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "step_time": "step_time",
    "timestamp": "timestamp", "_timestamp": "timestamp", "time": "timestamp",
}
STRIP_PREFIXES = ("train/",)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _timestamp(v: Any) -> float | None:
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return _num(v)
    return _num(v)


def normalize_metrics(d: dict[str, Any]) -> Frame:
    """A Frame from a metric dict with common names (TRL, trackio, wandb-style ``train/…`` prefixes).

    ``step``/``global_step``; ``phi``/``phi_mean``; ``reward``/``reward_mean``; ``rewards/<fn>/mean`` →
    ``rewards[fn]``; ``carl/<component>`` → ``carl_components``; ``learning_rate`` → ``lr``;
    ``completions/mean_length`` → ``completion_length``; other numeric values → ``extra``.
    Raises ValueError when there is no integer step."""
    step = None
    for k in STEP_KEYS:
        if k in d:
            step = d[k]
            break
    sv = _num(step)
    if sv is None or not float(sv).is_integer():
        raise ValueError(f"no integer step in {sorted(d)[:8]}")
    out: dict[str, Any] = {"step": int(sv)}
    rewards: dict[str, float] = {}
    comps: dict[str, float] = {}
    extra: dict[str, float] = {}
    for key, v in d.items():
        if key in STEP_KEYS:
            continue
        name = key
        for p in STRIP_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
        if name in ("rewards", "carl_components", "extra") and isinstance(v, dict):
            target = {"rewards": rewards, "carl_components": comps, "extra": extra}[name]
            target.update({str(k): float(x) for k, x in v.items() if _num(x) is not None})
            continue
        if name == "gate":
            out["gate"] = str(v) if v is not None else None
            continue
        if name in ("sample", "completion") and isinstance(v, str):
            out["sample"] = v
            continue
        field = ALIASES.get(name)
        if field == "timestamp":
            out["timestamp"] = _timestamp(v)
            continue
        x = _num(v) if not isinstance(v, str) else None
        if x is None:
            continue
        if field is not None:
            out[field] = x
        elif name.startswith("rewards/") and name.endswith("/mean") and name.count("/") == 2:
            rewards[name[8:-5]] = x
        elif name.startswith("rewards/") and name.count("/") == 1:
            rewards[name[8:]] = x
        elif name.startswith("carl/") and name.count("/") == 1:
            comps[name[5:]] = x
        else:
            extra[name] = x
    if rewards:
        out["rewards"] = rewards
    if comps:
        out["carl_components"] = comps
    if extra:
        out["extra"] = extra
    return Frame(**out)


def merge_by_step(frames: list[Frame]) -> list[Frame]:
    """Merge frames that share a step (a train log and an eval log of the same step), in step order."""
    by: dict[int, Frame] = {}
    for f in frames:
        cur = by.get(f.step)
        if cur is None:
            by[f.step] = f
            continue
        for name in ("phi", "entropy", "reward_mean", "task_reward", "carl_reward", "gate", "carl_weight", "loss",
                     "lr", "kl", "completion_length", "clipped_ratio", "frac_reward_zero_std", "step_time",
                     "timestamp", "sample"):
            v = getattr(f, name)
            if v is not None and getattr(cur, name) is None:
                setattr(cur, name, v)
        cur.rewards.update({k: v for k, v in f.rewards.items() if k not in cur.rewards})
        cur.carl_components.update({k: v for k, v in f.carl_components.items() if k not in cur.carl_components})
        cur.extra.update({k: v for k, v in f.extra.items() if k not in cur.extra})
    return [by[s] for s in sorted(by)]


# ── sources ───────────────────────────────────────────────────────────────────────────────────────────


class Source:
    kind = "source"
    label = ""
    run: str | None = None
    via: str | None = None

    def _snapshot(self) -> tuple[list[Frame], int]:
        """Every frame the source holds now, and lines skipped (sources that load by re-reading define it)."""
        raise NotImplementedError

    def load(self) -> tuple[list[Frame], int]:
        frames, skipped = self._snapshot()
        self._last_step = frames[-1].step if frames else None
        return frames, skipped

    def poll(self) -> tuple[list[Frame], int, bool]:
        raise NotImplementedError

    def _newer(self, frames: list[Frame]) -> list[Frame]:
        """Of a whole re-read, the frames past the last step seen (all of them before any), advancing that step."""
        last = self._last_step
        new = frames if last is None else [f for f in frames if f.step > last]
        if frames:
            self._last_step = frames[-1].step if last is None else max(last, frames[-1].step)
        return new

    def ended(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        d = {"kind": self.kind, "source": self.label, "run": self.run}
        if self.via:
            d["via"] = self.via
        return d


class RereadSource(Source):
    """A source that reads its whole store again on every poll (trackio's SQLite or server, TensorBoard events)
    and hands on only the frames past the last step seen. ``POLL_RETRY`` errors mean a store caught mid-write:
    that poll yields nothing and the next one reads it whole."""

    POLL_RETRY: tuple[type[BaseException], ...] = ()

    def _frames(self) -> tuple[list[Frame], int]:
        raise NotImplementedError

    def _snapshot(self) -> tuple[list[Frame], int]:
        return self._frames()

    def poll(self) -> tuple[list[Frame], int, bool]:
        try:
            frames, skipped = self._frames()
        except self.POLL_RETRY:
            return [], 0, False
        return self._newer(frames), skipped, False


def frames_from_metrics(rows: Iterable[dict[str, Any]],
                        bad: tuple[type[BaseException], ...] = (ValueError, TypeError)) -> tuple[list[Frame], int]:
    """Metric dicts → frames merged by step, and how many rows could not be read as a frame."""
    frames: list[Frame] = []
    skipped = 0
    for d in rows:
        try:
            frames.append(normalize_metrics(d))
        except bad:
            skipped += 1
    return merge_by_step(frames), skipped


TERMINAL_STATUSES = ("completed", "failed", "stopped")


class JsonlSource(Source):
    """carl's frames.jsonl or any JSONL of metric dicts; follows growth, truncation and rotation."""

    kind = "jsonl"

    def __init__(self, path: str | Path, *, run: str | None = None, run_dir: Path | None = None):
        self.path = Path(path)
        self.label = str(path)
        self.run = run
        self.run_dir = run_dir
        if run_dir is not None:
            self.kind = "carl"
        self._tail = JsonlTail(self.path)
        self._done = False

    def _parse(self, lines: list[bytes]) -> tuple[list[Frame], int]:
        frames, skipped, done = parse_lines(lines, normalize_metrics)
        self._done = self._done or done
        return frames, skipped

    def load(self) -> tuple[list[Frame], int]:
        if not self.path.exists() and self.run_dir is None:
            raise ValidationError(f"cannot read {self.path}: no such file", hint="Check the path.",
                                  context={"path": str(self.path)})
        try:
            lines, _ = self._tail.poll()
        except OSError as exc:
            raise ValidationError(f"cannot read {self.path}: {exc.strerror}", hint="Check the path and permissions.",
                                  context={"path": str(self.path)}) from exc
        frames, skipped = self._parse(lines)
        pending = self._tail.pending
        if pending.strip():  # a last line without its newline: complete JSON, or torn by a killed writer
            more, bad = self._parse([pending])
            if more:
                frames += more
                self._tail._partial = b""
            skipped += bad
        return frames, skipped

    def poll(self) -> tuple[list[Frame], int, bool]:
        lines, reset = self._tail.poll()
        if reset:
            self._done = False
        frames, skipped = self._parse(lines)
        return frames, skipped, reset

    def ended(self) -> bool:
        if self._done:
            return True
        if self.run_dir is not None:
            meta = self.run_dir / "meta.json"
            try:
                status = json.loads(meta.read_text()).get("status")
            except (OSError, ValueError, AttributeError):
                return False
            return status in TERMINAL_STATUSES
        return False


class TrainerStateSource(Source):
    """TRL / transformers trainer_state.json (or a directory holding one, or checkpoint-N dirs)."""

    kind = "trainer_state"

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.label = str(path)
        self.run = self.root.parent.name if self.root.is_file() else self.root.name
        self._sig: tuple[str, int, int] | None = None
        self._last_step: int | None = None
        self._ended = False

    def state_path(self) -> Path:
        if self.root.is_file():
            return self.root
        direct = self.root / "trainer_state.json"
        if direct.exists():
            return direct
        ckpts = [p for p in self.root.glob("checkpoint-*/trainer_state.json")
                 if p.parent.name.split("-")[-1].isdigit()]
        if not ckpts:
            raise ValidationError(f"no trainer_state.json in {self.root}",
                                  hint="Point --file at a trainer_state.json, a checkpoint-N directory or the "
                                       "Trainer's output_dir.", context={"path": str(self.root)})
        return max(ckpts, key=lambda p: int(p.parent.name.split("-")[-1]))

    def _read(self) -> tuple[list[Frame], int]:
        p = self.state_path()
        try:
            state = orjson.loads(p.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValidationError(f"cannot read {p}: not a trainer_state.json ({exc})",
                                  hint="Check the file; TRL writes it with each checkpoint.",
                                  context={"path": str(p)}) from exc
        if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
            raise ValidationError(f"{p} has no log_history: not a trainer_state.json",
                                  hint="Point --file at the trainer_state.json TRL/transformers wrote.",
                                  context={"path": str(p)})
        frames: list[Frame] = []
        skipped = 0
        for entry in state["log_history"]:
            try:
                frames.append(normalize_metrics(entry))
            except (ValueError, TypeError, AttributeError):
                skipped += 1
        gs, ms = state.get("global_step"), state.get("max_steps")
        ctl = ((state.get("stateful_callbacks") or {}).get("TrainerControl") or {}).get("args") or {}
        self._ended = bool(ctl.get("should_training_stop")) or (
            isinstance(gs, int) and isinstance(ms, int) and ms > 0 and gs >= ms)
        st = p.stat()
        self._sig = (str(p), st.st_mtime_ns, st.st_size)
        frames = merge_by_step(frames)
        from engine.coherence import fill_phi, vocab_size_from_dir

        # phi from the logged entropy when the checkpoint's config.json tells the vocabulary size
        fill_phi(frames, vocab_size_from_dir(p.parent, self.root if self.root.is_dir() else self.root.parent))
        return frames, skipped

    def _snapshot(self) -> tuple[list[Frame], int]:
        return self._read()

    def poll(self) -> tuple[list[Frame], int, bool]:
        try:
            p = self.state_path()
            st = p.stat()
        except (ValidationError, OSError):
            return [], 0, False
        if self._sig == (str(p), st.st_mtime_ns, st.st_size):
            return [], 0, False
        try:
            frames, skipped = self._read()
        except ValidationError:  # caught mid-write: try again next poll
            return [], 0, False
        last = self._last_step
        reset = last is not None and frames and frames[-1].step < last
        new = frames if (reset or last is None) else [f for f in frames if f.step > last]
        if frames:
            self._last_step = frames[-1].step
        return new, skipped, bool(reset)

    def ended(self) -> bool:
        return self._ended


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


class TrackioRemoteSource(RereadSource):
    """A run on a trackio dashboard (local ``trackio show`` or a Space), read with its HTTP API."""

    kind = "trackio-remote"
    via = "trackio-http"

    def __init__(self, url: str, run: str | None = None, project: str | None = None, *, timeout: float = 15.0,
                 retries: int = 3):
        self.base, params = split_dashboard_url(url)
        self.project = project or params.get("project")
        self.run = run or params.get("run") or (params.get("runs", "").split(",")[0] or None)
        self.label = self.base + (f"?{urlencode({'project': self.project})}" if self.project else "")
        self.timeout, self.retries = timeout, retries
        self._checked = False
        self._last_step: int | None = None

    def _headers(self) -> dict[str, str]:
        token = os.environ.get("HF_TOKEN")
        host = urlparse(self.base).hostname or ""
        return {"Authorization": f"Bearer {token}"} if token and host.endswith(".hf.space") else {}

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


# ── carl runs and source resolution ───────────────────────────────────────────────────────────────────


def resolve_run(run_ref: str, home: CarlHome | None = None) -> Path:
    """``CARL_HOME/runs/<id>/frames.jsonl`` for a run id or an unambiguous prefix of one."""
    home = home or CarlHome.from_env()
    runs = home.runs
    ref = (run_ref or "").strip()
    if not ref or "/" in ref or ref in (".", ".."):
        raise RunNotFound(f"not a run id: {run_ref!r}", context={"run": run_ref})
    exact = runs / ref
    if exact.is_dir():
        return exact / "frames.jsonl"
    cands = sorted(p.name for p in runs.glob(f"{glob_escape(ref)}*") if p.is_dir()) if runs.is_dir() else []
    if len(cands) == 1:
        return runs / cands[0] / "frames.jsonl"
    if not cands:
        raise RunNotFound(f"no run {ref!r} in {runs}", context={"run": ref, "runs_dir": str(runs)})
    raise RunNotFound(f"run prefix {ref!r} is ambiguous: {len(cands)} runs match",
                      hint="Give more characters of the run id: " + ", ".join(cands[:5]),
                      context={"run": ref, "candidates": cands[:20]})


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def list_runs(home: CarlHome | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recent runs in CARL_HOME (newest first): run_id, frames path, status (from meta.json), mtime."""
    home = home or CarlHome.from_env()
    if not home.runs.is_dir():
        return []
    out = []
    for d in home.runs.iterdir():
        if not d.is_dir():
            continue
        frames = d / "frames.jsonl"
        try:
            mtime = max(p.stat().st_mtime for p in (d, frames) if p.exists())
        except (OSError, ValueError):
            continue
        status = None
        try:
            status = json.loads((d / "meta.json").read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            pass
        out.append({"run_id": d.name, "path": str(frames), "status": status, "mtime": mtime})
    out.sort(key=lambda r: (-r["mtime"], r["run_id"]))
    return out[:limit]


def file_source(path: str | Path) -> Source:
    """The right source for a path: a carl run dir, a trainer_state.json / checkpoint dir, or JSONL."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "frames.jsonl").exists() or (p / "meta.json").exists():
            return JsonlSource(p / "frames.jsonl", run=p.name, run_dir=p)
        if not (p / "trainer_state.json").exists() and not any(p.glob("checkpoint-*/trainer_state.json")):
            from engine.observe.tensorboard import TensorBoardSource, is_event_dir

            if is_event_dir(p):  # a TensorBoard logging dir (report_to="tensorboard")
                return TensorBoardSource(p)
        return TrainerStateSource(p)
    if not p.exists():
        raise ValidationError(f"cannot read {p}: no such file or directory", hint="Check the path.",
                              context={"path": str(p)})
    if p.name.startswith("events.out.tfevents."):
        from engine.observe.tensorboard import TensorBoardSource

        return TensorBoardSource(p)
    if p.name == "trainer_state.json" or p.suffix == ".json":
        return TrainerStateSource(p)
    if p.name == "frames.jsonl":  # carl's own run layout: the directory is the run
        return JsonlSource(p, run=p.parent.name, run_dir=p.parent)
    return JsonlSource(p, run=p.stem)


def open_source(*, file: str | Path | None = None, trackio: str | None = None, url: str | None = None,
                project: str | None = None, run: str | None = None, trackio_dir: str | Path | None = None,
                home: CarlHome | None = None) -> Source:
    """One source from the observe arguments (batch flags and screen arguments alike)."""
    given = [n for n, v in (("--file", file), ("--trackio", trackio), ("--url", url)) if v]
    if len(given) > 1:
        raise ValidationError(f"observe takes one source, got {' and '.join(given)}",
                              hint="Pass one of --file, --trackio, --url (or --run alone for a carl run).")
    if file:
        return file_source(file)
    if trackio:
        return TrackioLocalSource(trackio, run=run, trackio_dir=trackio_dir)
    if url:
        return TrackioRemoteSource(url, run=run, project=project)
    if run:
        path = resolve_run(run, home)
        return JsonlSource(path, run=path.parent.name, run_dir=path.parent)
    raise ValidationError("observe needs a source", hint="Pass --file PATH, --trackio PROJECT, --url URL --run NAME "
                                                         "or --run RUN_ID (a carl run).")


def parse_source_spec(text: str, home: CarlHome | None = None) -> Source:
    """A source from one line typed in the workbench's picker:

    ``PATH`` (file or directory) · ``trackio:PROJECT[/RUN]`` · ``http(s)://dashboard[?project=P&run=R]``
    (or ``URL RUN``) · a carl run id or prefix."""
    text = text.strip()
    if not text:
        raise ValidationError("empty source", hint="Type a path, trackio:PROJECT[/RUN], a URL or a run id.")
    if text.startswith("tb:"):  # a TensorBoard logging dir or event file, said explicitly
        from engine.observe.tensorboard import TensorBoardSource

        return TensorBoardSource(text[3:].strip())
    if text.startswith("trackio:"):
        proj, _, run = text[8:].partition("/")
        return TrackioLocalSource(proj, run=run or None)
    if text.startswith(("http://", "https://")):
        url, _, run = text.partition(" ")
        return TrackioRemoteSource(url, run=run.strip() or None)
    p = Path(text).expanduser()
    if p.exists():
        return file_source(p)
    try:
        path = resolve_run(text, home)
    except RunNotFound:
        raise ValidationError(f"no file, directory or run {text!r}",
                              hint="Type a path, trackio:PROJECT[/RUN], a dashboard URL or a run id.") from None
    return JsonlSource(path, run=path.parent.name, run_dir=path.parent)
