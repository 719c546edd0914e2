"""The bounded, typed tool set the chat agent (and the MCP server) may use.

Each :class:`ToolSpec` names the tool, describes it for the model, gives a pydantic input model (its JSON
schema is the tool's ``input_schema``), the engine entry points it needs (``"module:attr"``), a handler, whether
it has effects, and the ledger action it maps to. :func:`build_registry` imports the entry points and keeps the
tools whose engine part exists; the rest are reported as unavailable with the reason. There is no shell, no file
write and no free-form code among the tools: every effect is one of a few named engine actions.

Calling a tool (:meth:`Registry.call`) validates the input, sends effectful tools through the ledger policy and
the caller's approver, runs the handler, records one ledger block (``<surface>.tool_call``) and returns a
:class:`ToolOutcome`; errors never escape, they become ``ok=False`` outcomes the model can read.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from engine.errors import ApprovalRequired, CARLError, PermissionDenied, ValidationError, redact
from engine.home import CarlHome
from engine.jsonable import to_jsonable

MAX_RESULT_CHARS = 24_000  # a tool result is cut to this many characters (keeps the context bounded)


# ============================================================================================ plumbing
class ToolInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ToolContext:
    """What a tool may see: CARL_HOME, the project directory, the config in force and who approves effects.

    ``approver(spec, input, decision) -> bool`` is asked before every effectful call (None: refuse them all).
    ``surface`` prefixes the ledger action (``chat.tool_call``, ``mcp.tool_call``)."""

    home: CarlHome
    cwd: Path
    config_path: Path | None = None
    sets: list[str] = field(default_factory=list)
    approver: Callable[["ToolSpec", dict[str, Any], dict[str, Any]], bool] | None = None
    surface: str = "chat"
    session: str | None = None

    def load_config(self):
        from engine.config import load_config

        cfg, _ = load_config(self.config_path, self.sets, cwd=self.cwd)
        return cfg

    def resolve_path(self, raw: str) -> Path:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.cwd / p)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_model: type[ToolInput]
    requires: tuple[str, ...]  # "module:attr" entry points that must import
    handler: Callable[[Any, ToolContext, dict[str, Any]], Any]  # (input, ctx, deps by attr name) -> JSON-able
    effectful: bool = False
    ledger_action: str = ""  # the engine action this tool performs (policy kind + ledger payload)
    # extra fields for the policy check of an effectful call (e.g. backend, estimated_usd for remote.submit)
    policy_fields: Callable[[dict[str, Any], "ToolContext"], dict[str, Any]] | None = None

    def input_schema(self) -> dict[str, Any]:
        schema = self.input_model.model_json_schema()
        schema.pop("title", None)
        schema.setdefault("properties", {})
        return schema

    def anthropic_tool(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema()}


@dataclass
class ToolOutcome:
    name: str
    input: dict[str, Any]
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None  # {"code", "message", "hint"}
    effectful: bool = False
    approved: bool | None = None
    ledger: str = ""  # "recorded", or why not

    @property
    def refused(self) -> bool:
        return bool(self.error) and self.error.get("code") in (ApprovalRequired.code, PermissionDenied.code)

    def content_text(self) -> str:
        body = self.result if self.ok else {"error": self.error}
        text = json.dumps(body, ensure_ascii=False, default=str, separators=(",", ":"))
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"… [truncated, {len(text)} characters in all]"
        return text

    def summary(self) -> str:
        if not self.ok:
            return f"{self.error.get('code')}: {self.error.get('message')}"
        text = self.content_text()
        return text if len(text) <= 160 else text[:157] + "…"


def _resolve(entry: str) -> Any:
    module, _, attr = entry.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry:
    def __init__(self, available: dict[str, tuple[ToolSpec, dict[str, Any]]], unavailable: dict[str, str]):
        self._tools = available
        self.unavailable = unavailable

    @property
    def specs(self) -> list[ToolSpec]:
        return [spec for spec, _ in self._tools.values()]

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> ToolSpec | None:
        entry = self._tools.get(name)
        return entry[0] if entry else None

    def anthropic_tools(self) -> list[dict[str, Any]]:
        return [spec.anthropic_tool() for spec in self.specs]

    def call(self, name: str, raw_input: Any, ctx: ToolContext) -> ToolOutcome:
        """Validate, gate (policy + approval for effects), run, record. Never raises for tool failures."""
        entry = self._tools.get(name)
        given = raw_input if isinstance(raw_input, dict) else {"_raw": raw_input}
        if entry is None:
            why = self.unavailable.get(name)
            err = ValidationError(f"unknown tool {name!r}" + (f" (unavailable: {why})" if why else ""),
                                  hint=f"Tools: {', '.join(self._tools) or 'none'}.")
            return self._finish(ToolOutcome(name, given, False, error=_err(err)), None, ctx)
        spec, deps = entry
        outcome = ToolOutcome(name, given, False, effectful=spec.effectful)
        try:
            args = spec.input_model.model_validate(raw_input if isinstance(raw_input, dict) else {})
            outcome.input = args.model_dump(mode="json", exclude_none=True)
            decision = policy_decision(spec, outcome.input, ctx)
            if decision.get("decision") == "deny":
                raise PermissionDenied(f"the ledger policy denies {name}: {decision.get('reason') or 'no reason'}",
                                       hint="Change policy: in carl.yaml if this tool should be allowed.",
                                       context={"decision": decision})
            if spec.effectful or decision.get("decision") == "needs_approval":
                approved = bool(ctx.approver and ctx.approver(spec, outcome.input, decision))
                outcome.approved = approved
                if not approved:
                    raise ApprovalRequired(f"{name} ({spec.ledger_action}) needs the user's approval and did not "
                                           "get it",
                                           hint="The user must approve it: in the workbench's approval dialog, "
                                                "or with --approve in batch mode.",
                                           context={"decision": decision})
            outcome.result = _jsonable(spec.handler(args, ctx, deps))
            outcome.ok = True
        except PydanticValidationError as exc:
            fields = [{"field": ".".join(str(p) for p in e.get("loc", ())) or "(input)", "message": e.get("msg")}
                      for e in exc.errors()]
            outcome.error = {"code": ValidationError.code, "message": f"invalid input for {name}: "
                             + "; ".join(f"{f['field']}: {f['message']}" for f in fields),
                             "hint": "Follow the tool's input schema.", "fields": fields}
        except CARLError as exc:
            outcome.error = _err(exc)
        except Exception as exc:  # a tool bug must not crash the loop; the model sees what happened
            outcome.error = {"code": "carl.error", "message": f"{type(exc).__name__}: {exc}",
                             "hint": "This looks like a bug in carl's engine; the chat goes on."}
        return self._finish(outcome, spec, ctx)

    def _finish(self, outcome: ToolOutcome, spec: ToolSpec | None, ctx: ToolContext) -> ToolOutcome:
        payload = {"tool": outcome.name, "action": spec.ledger_action if spec else None,
                   "input": redact(outcome.input), "ok": outcome.ok, "effectful": outcome.effectful,
                   "approved": outcome.approved, "error": outcome.error.get("code") if outcome.error else None,
                   "session": ctx.session}
        outcome.ledger = ledger_record(f"{ctx.surface}.tool_call", payload, ctx)
        return outcome


def _err(exc: CARLError) -> dict[str, Any]:
    d = exc.to_dict()["error"]
    return {"code": d["code"], "message": d["message"], "hint": d["hint"]}


_jsonable = to_jsonable


# ============================================================================================ ledger glue
def _evaluate(action: dict[str, Any], ctx: ToolContext) -> dict[str, Any] | None:
    """``engine.ledger.evaluate`` → its decision as a dict; None when there is no ledger policy engine."""
    try:
        evaluate = _resolve("engine.ledger:evaluate")
    except (ImportError, AttributeError):
        return None
    try:
        cfg = ctx.load_config()
    except CARLError:
        cfg = None
    decision = _jsonable(evaluate(action, cfg, home=ctx.home))
    return decision if isinstance(decision, dict) else {"decision": str(decision)}


def policy_decision(spec: ToolSpec, tool_input: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """The ledger policy on this call → ``{"decision": allow|deny|needs_approval, "rule", "reason", …}``.

    Every call is checked as ``{"kind": "chat.tool_call", "tool": name}`` (``policy.blocked_tools`` /
    ``tools_need_approval``); an effectful tool is also checked as its own action (``run.start``,
    ``remote.submit`` …, with the fields ``spec.policy_fields`` gives) and always needs approval. Without a
    ledger module, effects need approval and reads are allowed."""
    call = _evaluate({"kind": "chat.tool_call", "tool": spec.name, "approved": False}, ctx)
    if call is None:
        return {"decision": "needs_approval" if spec.effectful else "allow", "rule": "no_ledger",
                "reason": "no ledger policy engine available", "kind": spec.ledger_action}
    if call.get("decision") == "deny" or not spec.effectful:
        return call
    details = spec.policy_fields(tool_input, ctx) if spec.policy_fields else {}
    fields = {k: v for k, v in details.items() if k != "estimate"}
    own = _evaluate({"kind": spec.ledger_action, "tool": spec.name, "approved": False, **fields}, ctx) or {}
    own = {**own, "details": details} if details else own
    if own.get("decision") == "deny":
        return own
    return {**own, "decision": "needs_approval",
            "reason": own.get("reason") if own.get("decision") == "needs_approval"
            else f"{spec.name} has effects ({spec.ledger_action}); the user approves each call"}


def ledger_record(action: str, payload: dict[str, Any], ctx: ToolContext) -> str:
    """Append one ledger block; returns "recorded" or why it was not (the call itself is never blocked)."""
    try:
        record = _resolve("engine.ledger:record")
    except (ImportError, AttributeError):
        return "unavailable: engine.ledger.record does not exist"
    try:
        record(action, payload, home=ctx.home)
        return "recorded"
    except CARLError as exc:
        return f"not recorded: {exc.code}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - report, never crash the loop
        return f"not recorded: {type(exc).__name__}: {exc}"


# ============================================================================================ inputs
_RUN = Field(..., min_length=1, max_length=200, description="run id or an unambiguous prefix of one")
_SET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=[^\n]{0,200}$")


class NoInput(ToolInput):
    pass


class RunRef(ToolInput):
    run: str = _RUN


class ProbeInput(ToolInput):
    logits: str = Field(..., min_length=1, description="path to a .npy ([T,V] or [B,T,V]), .npz or .safetensors file")
    tokens: str | None = Field(None, description="optional token-id file (.npy); default: the argmax")
    allow_masked: bool = Field(False, description="treat -inf logits as masked vocabulary entries")
    run: str | None = Field(None, description="score with the CARL weights this run trained with (default: the "
                                              "project's carl.yaml, else 0.5/0.3/0.2)")

    @field_validator("logits", "tokens")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith((".npy", ".npz", ".safetensors")):
            raise ValueError("must be a .npy, .npz or .safetensors file")
        return v


class ObserveInput(ToolInput):
    run: str | None = Field(None, max_length=200, description="run id (or prefix) in CARL_HOME/runs")
    file: str | None = Field(None, max_length=1000,
                             description="or a metrics file: frames.jsonl, a JSONL of metric dicts, trainer_state.json")

    @field_validator("file")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith((".jsonl", ".json")):
            raise ValueError("must be a .jsonl or .json file")
        return v


class DiffInput(ToolInput):
    run_a: str = _RUN
    run_b: str = _RUN


class ListRunsInput(ToolInput):
    limit: int = Field(20, ge=1, le=200, description="most recent runs to list")


class ValidateConfigInput(ToolInput):
    path: str | None = Field(None, max_length=1000, description="a carl.yaml (default: the project's)")

    @field_validator("path")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith((".yaml", ".yml")):
            raise ValueError("must be a .yaml or .yml file")
        return v


class LedgerShowInput(ToolInput):
    last: int = Field(10, ge=1, le=100, description="how many of the newest blocks")


class StartTrainingInput(ToolInput):
    preset: Literal["tiny-cpu", "lora-7b", "full-gpu"] | None = Field(
        None, description="start from a preset instead of the project's carl.yaml")
    lora: bool | None = Field(None, description="turn LoRA on or off")
    max_steps: int | None = Field(None, ge=1, le=100_000)
    sets: list[str] = Field(default_factory=list, max_length=16,
                            description="extra config overrides, each 'section.field=value' (e.g. grpo.seed=3)")

    @field_validator("sets")
    @classmethod
    def _sets(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SET_RE.match(s):
                raise ValueError(f"{s!r} is not section.field=value")
        return v

    def overrides(self) -> list[str]:
        out = list(self.sets)
        if self.lora is not None:
            out.append(f"lora.enabled={'true' if self.lora else 'false'}")
        if self.max_steps is not None:
            out.append(f"grpo.max_steps={self.max_steps}")
        return out


class JobRef(ToolInput):
    job: str = Field(min_length=1, max_length=200, description="the job's run id (or an unambiguous prefix)")


class JobLogsInput(JobRef):
    tail: int = Field(200, ge=1, le=2000, description="show the last this many log lines")


class ListJobsInput(ToolInput):
    limit: int = Field(50, ge=1, le=200)


class SubmitJobInput(ToolInput):
    backend: Literal["hf", "runpod", "managed"]
    budget_usd: float | None = Field(None, gt=0, le=10_000, description="spend cap for the job (USD)")


# ============================================================================================ handlers
def _show_config(args: NoInput, ctx: ToolContext, deps: dict[str, Any]) -> dict[str, Any]:
    from engine.config import find_config

    cfg, path = deps["load_config"](ctx.config_path, ctx.sets, cwd=ctx.cwd)
    found = path or find_config(ctx.config_path, ctx.cwd)
    return {"path": str(found) if found else None, "source": str(found) if found else "built-in tiny demo",
            "config": cfg.model_dump(mode="json")}


def _validate_config(args: ValidateConfigInput, ctx: ToolContext, deps: dict[str, Any]) -> dict[str, Any]:
    path = ctx.resolve_path(args.path) if args.path else ctx.config_path
    try:
        _, found = deps["load_config"](path, cwd=ctx.cwd)
    except CARLError as exc:
        if exc.code != "carl.config":
            raise
        return {"ok": False, "path": str(path) if path else None, "message": exc.message,
                "errors": exc.context.get("errors", [])}
    return {"ok": True, "path": str(found) if found else None, "errors": []}


def _store(ctx: ToolContext, deps: dict[str, Any]):
    return deps["RunStore"](ctx.home)


def _list_runs(args: ListRunsInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    runs = _jsonable(_store(ctx, deps).list())
    return {"runs": runs[: args.limit], "total": len(runs)}


def _show_run(args: RunRef, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    return _store(ctx, deps).show(args.run)


def _frames(ref: str, ctx: ToolContext, deps: dict[str, Any]):
    src = deps["open_source"](run=ref, home=ctx.home)
    frames, skipped = src.load()
    return src, frames, skipped


def _diff_runs(args: DiffInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    src_a, frames_a, _ = _frames(args.run_a, ctx, deps)
    src_b, frames_b, _ = _frames(args.run_b, ctx, deps)
    return {"run_a": src_a.run, "run_b": src_b.run, **_jsonable(deps["diff_runs"](frames_a, frames_b))}


def _observe(args: ObserveInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    if bool(args.run) == bool(args.file):
        raise ValidationError("observe_run needs exactly one of run or file")
    if args.run:
        src, frames, skipped = _frames(args.run, ctx, deps)
    else:
        src = deps["open_source"](file=ctx.resolve_path(args.file or ""), home=ctx.home)
        frames, skipped = src.load()
    return deps["summarize"](frames, source=src.label, run=src.run, skipped=skipped)


def _probe(args: ProbeInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    from engine import settings

    st = settings.resolve(run=args.run, config_path=ctx.config_path, cwd=ctx.cwd, home=ctx.home)
    logits, tokens = deps["load_logits_file"](ctx.resolve_path(args.logits),
                                              ctx.resolve_path(args.tokens) if args.tokens else None)
    result = _jsonable(deps["CoherenceProbe"](weights=st.weights).measure(logits, tokens,
                                                                          allow_masked=args.allow_masked))
    if isinstance(result, dict):
        result = {**result, "weights": dict(st.weights), "weights_from": st.source}
    if isinstance(result, dict) and isinstance(result.get("phi"), list) and len(result["phi"]) > 64:
        phi = result["phi"]
        result = {**result, "phi": phi[:64], "phi_truncated": f"first 64 of {len(phi)} tokens shown"}
    return result


def _ledger_status(args: NoInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    return deps["Ledger"](ctx.home).status()


def _ledger_verify(args: NoInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    return deps["verify"](ctx.home)


def _ledger_show(args: LedgerShowInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    return {"blocks": _jsonable(deps["Ledger"](ctx.home).blocks(last=args.last))}


def _training_config(args: StartTrainingInput, ctx: ToolContext):
    from engine.config import PRESETS, apply_overrides, find_config, load_config, validate_dict

    sets = [*ctx.sets, *args.overrides()]
    if args.preset:
        return validate_dict(apply_overrides(PRESETS[args.preset], sets), source=f"preset {args.preset}"), None
    return load_config(ctx.config_path, sets, cwd=ctx.cwd)[0], find_config(ctx.config_path, ctx.cwd)


def _start_training(args: StartTrainingInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    cfg, path = _training_config(args, ctx)
    plan = deps["plan"](cfg, path)
    store = _store(ctx, deps)
    run_id = store.create(cfg.to_yaml(), plan, config_path=str(path) if path else None)
    pid = store.spawn(run_id, gpus=max(1, cfg.compute.gpus))
    return {"run_id": run_id, "pid": pid, "run_dir": str(store.run_dir(run_id)), "project": cfg.project.name,
            "max_steps": cfg.grpo.max_steps, "lora": cfg.lora.enabled}


def _stop_run(args: RunRef, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    return _store(ctx, deps).stop(args.run)


def _job_estimate(tool_input: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    from engine.remote.jobs import estimate_job

    est = estimate_job(ctx.load_config(), tool_input.get("backend"), budget=tool_input.get("budget_usd"),
                       home=ctx.home)
    return {"backend": est.get("backend"), "flavor": est.get("flavor"), "estimated_usd": est.get("estimated_usd"),
            "estimate": est}


def _submit_job(args: SubmitJobInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    via = "chat --approve" if ctx.surface == "chat" and ctx.approver is not None else f"{ctx.surface} approval"
    return deps["submit_job"](ctx.load_config(), args.backend, approve=True, via=via, budget=args.budget_usd,
                              config_path=ctx.config_path, home=ctx.home)


def _job_status(args: JobRef, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    return deps["job_status"](args.job, ctx.load_config(), home=ctx.home)


def _job_logs(args: JobLogsInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    rec, lines = deps["job_logs"](args.job, ctx.load_config(), follow=False, home=ctx.home)
    got = list(lines)
    shown = got[-args.tail:]
    return {"run_id": rec["run_id"], "backend": rec["backend"], "remote_id": rec.get("remote_id"),
            "lines": shown, "n_lines": len(got), "shown": len(shown), "last_step": rec.get("last_step")}


def _list_jobs(args: ListJobsInput, ctx: ToolContext, deps: dict[str, Any]) -> Any:
    rows = _jsonable(deps["list_jobs"](ctx.home))
    return {"jobs": rows[: args.limit], "total": len(rows)}


# ============================================================================================ the set
TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("probe_logits", "Measure the coherence field Phi over a saved logits file: per-token phi, its mean/std/"
             "min/max, entropy, kappa, sigma, the crystallized fraction and the CARL reward components.",
             ProbeInput, ("engine.probe:CoherenceProbe", "engine.probe:load_logits_file"), _probe, ledger_action="probe.run"),
    ToolSpec("observe_run", "Summarize a training run's metrics: steps, Phi statistics, the phase (guessing, "
             "crystallizing, knowing), the crystallization step and health findings (e.g. collapse, flat reward).",
             ObserveInput, ("engine.observe.sources:open_source", "engine.observe.analysis:summarize"), _observe,
             ledger_action="observe.summary"),
    ToolSpec("list_runs", "List training runs (local and remote) with status, backend, start time and last step.",
             ListRunsInput, ("engine.runs:RunStore",), _list_runs, ledger_action="run.list"),
    ToolSpec("show_run", "Show one run: status, backend, pid, directory, start/end, last step and its config.",
             RunRef, ("engine.runs:RunStore",), _show_run, ledger_action="run.show"),
    ToolSpec("diff_runs", "Compare two runs: config differences and metric deltas (Phi, rewards, phase).",
             DiffInput, ("engine.observe.sources:open_source", "engine.observe.diff:diff_runs"), _diff_runs,
             ledger_action="run.diff"),
    ToolSpec("show_config", "Show the project's carl.yaml in force (or the built-in tiny demo) with every default "
             "filled in.", NoInput, ("engine.config:load_config",), _show_config, ledger_action="project.show"),
    ToolSpec("validate_config", "Validate a carl.yaml and list the field errors (path, value, message).",
             ValidateConfigInput, ("engine.config:load_config",), _validate_config,
             ledger_action="project.validate"),
    ToolSpec("ledger_status", "The ledger's state: number of blocks, head hash, signer key.", NoInput,
             ("engine.ledger:Ledger",), _ledger_status, ledger_action="ledger.status"),
    ToolSpec("ledger_verify", "Verify the whole ledger chain (hashes and signatures); names the first bad block.",
             NoInput, ("engine.ledger:verify",), _ledger_verify, ledger_action="ledger.verify"),
    ToolSpec("ledger_show", "Show the newest ledger blocks (action, time, payload).", LedgerShowInput,
             ("engine.ledger:Ledger",), _ledger_show, ledger_action="ledger.show"),
    ToolSpec("start_training", "Start a local cascade GRPO training run in the background (needs the user's "
             "approval). Uses the project's carl.yaml or a preset, with optional LoRA / max_steps / overrides.",
             StartTrainingInput, ("engine.runs:RunStore", "engine.trainer.plan:plan"), _start_training, effectful=True,
             ledger_action="run.start"),
    ToolSpec("stop_run", "Stop a running training run gracefully (checkpoint flushed; needs the user's approval).",
             RunRef, ("engine.runs:RunStore",), _stop_run, effectful=True, ledger_action="run.stop"),
    ToolSpec("list_jobs", "List remote training jobs as carl last saw them (status, backend, start, last step, "
             "cost so far); job_status asks the backend for fresh state.", ListJobsInput,
             ("engine.remote.store:list_jobs",), _list_jobs, ledger_action="job.list"),
    ToolSpec("job_status", "Ask the backend (hf, runpod, managed) for one remote job's state: status, last step, "
             "cost so far, the remote id. Read-only.", JobRef, ("engine.remote.jobs:job_status",), _job_status,
             ledger_action="job.status"),
    ToolSpec("job_logs", "Read a remote job's log lines so far (the last `tail`, default 200; carl frame lines "
             "carry the step). Read-only; does not follow.", JobLogsInput, ("engine.remote.jobs:job_logs",),
             _job_logs, ledger_action="job.logs"),
    ToolSpec("submit_remote_job", "Submit the project's training as a remote job on hf, runpod or managed "
             "compute (costs money; needs the user's approval and respects the budget caps).", SubmitJobInput,
             ("engine.remote.jobs:submit_job", "engine.remote.jobs:estimate_job"), _submit_job, effectful=True,
             ledger_action="remote.submit", policy_fields=_job_estimate),
)


def build_registry(specs: tuple[ToolSpec, ...] = TOOL_SPECS) -> Registry:
    """Import each tool's entry points; keep the tools whose engine part exists, report the others."""
    available: dict[str, tuple[ToolSpec, dict[str, Any]]] = {}
    unavailable: dict[str, str] = {}
    for spec in specs:
        deps: dict[str, Any] = {}
        try:
            for entry in spec.requires:
                deps[entry.rpartition(":")[2].rpartition(".")[2]] = _resolve(entry)
        except (ImportError, AttributeError) as exc:
            unavailable[spec.name] = f"{entry} is not available ({type(exc).__name__}: {exc})"
            continue
        available[spec.name] = (spec, deps)
    return Registry(available, unavailable)
