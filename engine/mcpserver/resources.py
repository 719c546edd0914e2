"""MCP resources: carl's state an agent can read without calling a tool (and without a ledger block).

==========================  ===================================================================================
``carl://runs``             the runs index: ``{"runs": [{"run_id", "status", "backend", "started_at", "last_step",
                            "uri"}], "total"}`` (newest first, at most :data:`MAX_RUNS_LISTED`)
``carl://runs/{run_id}``    one run: ``{"run": <run show>, "summary": <observe summary>, "recent_frames": [...]}``
                            — the last :data:`RECENT_FRAMES` frames; ``run_id`` may be an unambiguous prefix
``carl://config``           the carl.yaml in force (or the tiny demo) with every default filled in:
                            ``{"path", "source", "config"}``, or ``{"path", "error"}`` when it does not validate
``carl://ledger/tail``      ``{"status": <ledger status>, "blocks": [...]}`` — the newest :data:`LEDGER_TAIL` blocks
==========================  ===================================================================================

Every resource is JSON (``application/json``). Reading is side-effect free: nothing is appended to the ledger.
Nothing here imports the MCP SDK; :mod:`engine.mcpserver.server` turns these into MCP types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.chat.tools import ToolContext
from engine.errors import CARLError, RunNotFound
from engine.jsonable import to_jsonable

SCHEME = "carl://"
MIME = "application/json"
MAX_RUNS_LISTED = 50  # runs listed as concrete resources (older ones stay readable through the template)
RECENT_FRAMES = 20
LEDGER_TAIL = 20


@dataclass(frozen=True)
class ResourceInfo:
    uri: str
    name: str
    title: str
    description: str
    mime_type: str = MIME


STATIC = (
    ResourceInfo("carl://runs", "runs", "Training runs", "All runs in CARL_HOME (newest first) with status, "
                 "backend, start time, last step and each run's resource URI."),
    ResourceInfo("carl://config", "config", "Project config", "The carl.yaml in force (./carl.yaml, --config, or "
                 "the built-in tiny demo) with every default filled in."),
    ResourceInfo("carl://ledger/tail", "ledger-tail", "Ledger tail", f"The ledger's status and its newest "
                 f"{LEDGER_TAIL} blocks (action, time, payload, hash, signer)."),
)
RUN_TEMPLATE = ResourceInfo("carl://runs/{run_id}", "run", "Training run",
                            f"One run: status and config, the observe summary (Phi statistics, phase, "
                            f"crystallization step, health findings) and its last {RECENT_FRAMES} frames.")



class ResourceNotFound(CARLError):
    code = "carl.validation"
    exit_code = 2


_clean = to_jsonable


def _store(ctx: ToolContext):
    from engine.runs import RunStore

    return RunStore(ctx.home)


def run_uri(run_id: str) -> str:
    return f"{SCHEME}runs/{run_id}"


def list_resources(ctx: ToolContext) -> list[ResourceInfo]:
    """The fixed resources, then one per recent run."""
    out = list(STATIC)
    for r in _store(ctx).list()[:MAX_RUNS_LISTED]:
        out.append(ResourceInfo(run_uri(r["run_id"]), f"run-{r['run_id']}", f"Run {r['run_id']}",
                                f"Run {r['run_id']}: {r.get('status')}, last step {r.get('last_step')}."))
    return out


def read_runs(ctx: ToolContext) -> dict[str, Any]:
    runs = _store(ctx).list()
    return {"runs": [{**r, "uri": run_uri(r["run_id"])} for r in runs[:MAX_RUNS_LISTED]], "total": len(runs)}


def read_run(ref: str, ctx: ToolContext) -> dict[str, Any]:
    from engine.observe import open_source, summarize

    store = _store(ctx)
    run = store.show(ref)  # resolves a prefix; RunNotFound otherwise
    src = open_source(run=run["run_id"], home=ctx.home)
    frames, skipped = src.load()
    summary = summarize(frames, source=src.label, run=run["run_id"], skipped=skipped)
    recent = [f.to_dict() for f in frames[-RECENT_FRAMES:]]
    return _clean({"run": run, "summary": summary, "recent_frames": recent})


def read_config(ctx: ToolContext) -> dict[str, Any]:
    from engine.config import find_config, load_config

    found = find_config(ctx.config_path, ctx.cwd)
    try:
        cfg, path = load_config(ctx.config_path, ctx.sets, cwd=ctx.cwd)
    except CARLError as exc:
        return {"path": str(found) if found else None, "error": exc.to_dict()["error"]}
    return {"path": str(path) if path else None, "source": str(path) if path else "built-in tiny demo",
            "config": cfg.model_dump(mode="json")}


def read_ledger_tail(ctx: ToolContext) -> dict[str, Any]:
    from engine.ledger import Ledger

    led = Ledger(ctx.home)
    return _clean({"status": led.status(), "blocks": led.blocks(last=LEDGER_TAIL)})


def read(uri: str, ctx: ToolContext) -> str:
    """The JSON text of the resource at ``uri``. Unknown URIs and runs raise :class:`ResourceNotFound` /
    :class:`engine.errors.RunNotFound`."""
    if uri == "carl://runs" or uri == "carl://runs/":
        body = read_runs(ctx)
    elif uri.startswith("carl://runs/"):
        ref = uri[len("carl://runs/"):].strip("/")
        if not ref or "/" in ref:
            raise RunNotFound(f"not a run URI: {uri}", hint="Use carl://runs/<run_id> (see carl://runs).",
                              context={"uri": uri})
        body = read_run(ref, ctx)
    elif uri == "carl://config":
        body = read_config(ctx)
    elif uri == "carl://ledger/tail":
        body = read_ledger_tail(ctx)
    else:
        known = ", ".join([r.uri for r in STATIC] + [RUN_TEMPLATE.uri])
        raise ResourceNotFound(f"no such carl resource: {uri}", hint=f"Resources: {known}.", context={"uri": uri})
    return json.dumps(_clean(body), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
