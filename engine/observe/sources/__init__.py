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
import re
from pathlib import Path
from typing import Any

from engine.errors import RunNotFound, ValidationError
from engine.home import CarlHome
from engine.observe.sources.base import (ALIASES, STEP_KEYS, STRIP_PREFIXES, RereadSource, Source,  # noqa: F401
                                         frames_from_metrics, merge_by_step, normalize_metrics)
from engine.observe.sources.files import TERMINAL_STATUSES, JsonlSource, TrainerStateSource  # noqa: F401
from engine.observe.sources.trackio import (HTTP_API_VERSION, SECRET_QUERY_KEYS, TrackioLocalSource,  # noqa: F401
                                            TrackioRemoteSource, default_trackio_dir, space_url,
                                            split_dashboard_url)


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


SNIFF_BYTES = 64 * 1024


def _sniff(p: Path) -> bytes:
    try:
        with open(p, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise ValidationError(f"cannot read {p}: {exc.strerror}", hint="Check the path and permissions.",
                              context={"path": str(p)}) from exc


def _first_json_object(head: bytes) -> bool:
    for line in head.splitlines():
        if line.strip():
            try:
                return isinstance(json.loads(line), dict)
            except ValueError:
                return False
    return False


def file_source(path: str | Path) -> Source:
    """The right source for a path, recognised from what it holds (not only its name):

    a carl run dir · a trainer_state.json / checkpoint / output dir · a TensorBoard logging dir or event file ·
    a W&B run file (``:W&B`` header) or an offline run / ``wandb/`` dir · an MLflow file store (``mlruns/``,
    an experiment or a run dir) · a JSON document with ``log_history`` · JSONL of metric dicts (verl's file logger
    included) · a console log with printed Trainer dicts or verl console lines."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "frames.jsonl").exists() or (p / "meta.json").exists():
            return JsonlSource(p / "frames.jsonl", run=p.name, run_dir=p)
        if (p / "trainer_state.json").exists() or any(p.glob("checkpoint-*/trainer_state.json")):
            return TrainerStateSource(p)
        from engine.observe.sources.wandb import WandbSource, find_run_file

        if find_run_file(p) is not None:
            return WandbSource(p)
        from engine.observe.sources.mlflow import MlflowSource, is_mlflow_store

        if is_mlflow_store(p):
            return MlflowSource(p)
        from engine.observe.sources.tensorboard import TensorBoardSource, is_event_dir

        if is_event_dir(p):  # a TensorBoard logging dir (report_to="tensorboard")
            return TensorBoardSource(p)
        return TrainerStateSource(p)  # raises: nothing here that a reader knows
    if not p.exists():
        raise ValidationError(f"cannot read {p}: no such file or directory", hint="Check the path.",
                              context={"path": str(p)})
    if p.name.startswith("events.out.tfevents."):
        from engine.observe.sources.tensorboard import TensorBoardSource

        return TensorBoardSource(p)
    if p.name == "frames.jsonl":  # carl's own run layout: the directory is the run
        return JsonlSource(p, run=p.parent.name, run_dir=p.parent)
    head = _sniff(p)
    if head[:4] == b":W&B" or p.suffix == ".wandb":
        from engine.observe.sources.wandb import WandbSource

        return WandbSource(p)
    if p.name == "trainer_state.json" or p.suffix == ".json":  # one JSON document (NaN/Infinity allowed)
        return TrainerStateSource(p)
    if not _first_json_object(head):
        from engine.observe.sources.console import ConsoleLogSource, looks_like_console

        if looks_like_console(head):
            return ConsoleLogSource(p)
    return JsonlSource(p, run=p.stem)


def open_source(*, file: str | Path | None = None, trackio: str | None = None, url: str | None = None,
                project: str | None = None, run: str | None = None, trackio_dir: str | Path | None = None,
                home: CarlHome | None = None, send_token: bool = False) -> Source:
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
        return TrackioRemoteSource(url, run=run, project=project, send_token=send_token)
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
    if text.startswith("wandb:"):  # a W&B run file or directory, said explicitly
        from engine.observe.sources.wandb import WandbSource

        return WandbSource(text[6:].strip())
    if text.startswith("tb:"):  # a TensorBoard logging dir or event file, said explicitly
        from engine.observe.sources.tensorboard import TensorBoardSource

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
