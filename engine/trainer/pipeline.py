"""``carl --batch train --send-it``: SFT → gate → GRPO → eval → push in one run directory (docs/train.md).

The run directory of a pipeline run holds, next to the usual files, ``pipeline.json``::

    {"stages": [{"name", "status", "started", "ended", "key", "key_name", "detail", "error"}, …]}

``status`` is ``waiting`` → ``running`` → ``done`` | ``failed`` | ``stopped`` | ``skipped``; ``key`` is the
stage's key number (sft: held-out task metric; gate: ``pass``/``fail``; grpo: held-out task metric after;
eval: ``pass``/``fail``; push: the pushed revision). A check that fails (the gate, the eval gate) marks its
stage ``failed`` with ``verdict: "fail"`` and the run ``failed`` with the reason; nothing after it runs.

Stages and where they write:

* ``sft`` — engine.trainer.sft on the base model (``builtin:tiny``: the untrained demo model), checkpoints under
  ``sft/checkpoints/``, the model under ``sft/model/``, then a held-out eval (event ``eval``, phase ``sft``).
* ``gate`` — the SFT model's held-out task metric ≥ ``pipeline.gate.min_task_metric``.
* ``grpo`` — the cascade GRPO run of engine.trainer.worker from ``sft/model/`` (checkpoints/, frames.jsonl,
  final/), its held-out eval after.
* ``eval`` — the eval gate (engine.trainer.evalgate.decide with ``eval:``) on the final model's metrics.
* ``push`` — the final model to ``train.output_repo`` (engine.remote.sync), only after a pass; skipped when no
  repo is set.

Frames carry ``stage: "grpo"``; every event of a pipeline run carries its stage; every stage's end is one
ledger block (``pipeline.stage``). Resume (``run resume RUN``) restarts at the first stage that is not done:
inside ``sft`` from its last SFT checkpoint, inside ``grpo`` from its last GRPO checkpoint, other stages anew.

Several processes: rank 0 owns ``pipeline.json`` and decides; every rank keeps the state in memory, received
from rank 0 at the start and after each stage (a broadcast: no rank reads the file while rank 0 writes it). The
training stages (sft, grpo) run on every rank, their result is rank 0's; the checks and the push (gate, eval, push)
run on rank 0 only and the others receive the verdict. The sft model is saved through the trainer, then a barrier.

``CARL_PIPELINE_HOLD=STAGE`` (or ``STAGE:STEP``) makes the worker pause when it enters STAGE (or once STAGE has
written the checkpoint of STEP) until it is stopped or killed: how the tests kill a run inside each stage.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from engine.errors import ValidationError

from engine.rundir import PIPELINE_FILE  # the run directory names its files
SFT_DIR = "sft"
KEY_NAMES = {"sft": "held-out", "gate": "verdict", "grpo": "held-out", "eval": "verdict", "push": "revision"}
HOLD_ENV = "CARL_PIPELINE_HOLD"


# ------------------------------------------------------------------------------------------ state
def is_pipeline(run_dir: Path) -> bool:
    return (Path(run_dir) / PIPELINE_FILE).is_file()


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / PIPELINE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    from engine.rundir import write_json

    write_json(Path(run_dir) / PIPELINE_FILE, state)


def init_state(run_dir: Path, cfg) -> dict[str, Any]:
    from engine.rundir import update_meta

    state = {"stages": [{"name": n, "status": "waiting", "started": None, "ended": None, "key": None,
                         "key_name": KEY_NAMES[n], "detail": {}, "error": None} for n in cfg.pipeline.stages]}
    write_state(run_dir, state)
    update_meta(run_dir, pipeline=[{"name": n, "status": "waiting", "key": None, "key_name": KEY_NAMES[n]}
                                   for n in cfg.pipeline.stages])
    return state


def stage_plan(cfg) -> list[dict[str, Any]]:
    """Every stage with its settings (``--dry-run --send-it``)."""
    p = cfg.pipeline
    out: list[dict[str, Any]] = []
    for name in p.stages:
        if name == "sft":
            s = p.sft.model_dump()
            s["until"] = f"{s['steps']} steps" if s["steps"] else f"validation {grpo_metric(cfg)} ≥ {s['target']} " \
                                                                   f"(at most {s['max_steps']} steps)"
            s["base_model"] = cfg.model.name_or_path + (" (untrained)" if cfg.model.name_or_path == "builtin:tiny"
                                                        else "")
            s["lora_config"] = cfg.lora.model_dump() if p.sft.lora else None
            out.append({"name": name, "trainer": "trl.SFTTrainer (prompt-completion, loss on the completion)",
                        "settings": s})
        elif name == "gate":
            out.append({"name": name, "settings": {"min_task_metric": p.gate.min_task_metric,
                                                   "metric": grpo_metric(cfg)}})
        elif name == "grpo":
            out.append({"name": name, "settings": {"max_steps": cfg.grpo.max_steps, "cascade": cfg.cascade.mode,
                                                   "from": "the sft model" if "sft" in p.stages else
                                                   cfg.model.name_or_path}})
        elif name == "eval":
            out.append({"name": name, "settings": cfg.eval.model_dump(exclude={"push_to"})})
        else:
            out.append({"name": name, "settings": {"repo": cfg.train.output_repo, "private": cfg.train.output_private,
                                                   "when": "only after the eval gate passed"
                                                   if "eval" in p.stages else "policy decides",
                                                   "skipped": cfg.train.output_repo is None}})
    return out


def grpo_metric(cfg) -> str:
    from engine.trainer.grpo import task_metric_name

    return task_metric_name(cfg)


def prepare_resume(run_dir: Path) -> int:
    """Reset the first unfinished stage to ``waiting`` and cut what it wrote after its last checkpoint; returns
    the step it restarts from (its checkpoint's, else 0). Raises when nothing can resume. (The run store's own:
    engine.trainer.pipeline_files.prepare_pipeline_resume, which ``run resume`` reaches through RunStore.prepare_resume.)"""
    from engine.trainer.pipeline_files import prepare_pipeline_resume

    return prepare_pipeline_resume(run_dir)


def maybe_hold(stage: str, step: int | None, should_stop) -> None:
    """``CARL_PIPELINE_HOLD`` (module docstring): pause here until stopped or killed."""
    want = os.environ.get(HOLD_ENV, "")
    if not want:
        return
    name, _, at = want.partition(":")
    if name != stage or (at and (step is None or str(step) != at)) or (not at and step is not None):
        return
    print(f"[{time.strftime('%H:%M:%S')}] pipeline: holding in stage {stage}"
          + (f" at step {step}" if step is not None else "") + f" ({HOLD_ENV})", flush=True)
    while not should_stop():
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ helpers
from engine.trainer.evalgate import task_accuracy  # noqa: E402,F401  (moved: the demo's warm start uses it too)


def brief(m: dict[str, Any]) -> dict[str, Any]:
    """The held-out eval's numbers kept in meta, events and pipeline.json."""
    out = {k: m.get(k) for k in ("task_metric_name", "task_metric", "phi_mean", "discontinuity", "coherence",
                                 "cloud", "completion_length", "n")}
    out.update({k: m[k] for k in ("task_completion", "tool_format", "tool_calls_per_task") if k in m})  # agents
    return out


def with_model(cfg, path: str):
    out = cfg.model_copy(deep=True)
    out.model.name_or_path = path
    out.model.tokenizer = None
    return out


# ------------------------------------------------------------------------------------------ the run
class Pipeline:
    """Runs the stages of a pipeline run inside engine.trainer.worker.Worker (``worker``)."""

    def __init__(self, worker, cfg):
        self.w = worker
        self.cfg = cfg
        self.run_dir = Path(worker.run_dir)
        self.state: dict[str, Any] = {}

    def _save(self, st: dict[str, Any], **fields: Any) -> None:
        """Update a stage on every rank (in memory); rank 0 also writes pipeline.json and meta."""
        from engine.trainer.dist import is_main

        RANK0 = is_main()

        for s in self.state["stages"]:
            if s["name"] == st["name"]:
                s.update(fields)
                st.update(s)
        if not RANK0:
            return
        write_state(self.run_dir, self.state)
        self.w.meta(pipeline=[{k: s.get(k) for k in ("name", "status", "key", "key_name")}
                              for s in self.state["stages"]])

    def _stage(self, name: str) -> dict[str, Any]:
        return next((s for s in self.state["stages"] if s["name"] == name), {})

    def _decide(self, name: str, st: dict[str, Any]) -> tuple:
        """The stage's (status, key, detail, error, verdict), the same on every rank: rank 0's."""
        from engine.trainer import dist
        from engine.trainer.dist import is_main

        RANK0 = is_main()

        fn = getattr(self, "_" + name)
        if dist.env_world_size() <= 1:
            return fn(st)
        if name in ("sft", "grpo"):  # every rank trains; rank 0's result is the stage's
            return tuple(self.w.agree(f"the result of stage {name}", fn(st)))
        out, exc = None, None
        if RANK0:  # a check or the push: rank 0 alone decides
            try:
                out = ("ok", fn(st))
            except Exception as e:  # noqa: BLE001 - every rank fails the stage the same way
                out, exc = ("error", f"{type(e).__name__}: {e}".split("\n")[0][:300]), e
        out = self.w.agree(f"the verdict of stage {name}", out)
        if out[0] == "error":
            raise exc if exc is not None else RuntimeError(f"rank 0 failed stage {name}: {out[1]}")
        return tuple(out[1])

    def run(self) -> str:
        from engine.ledger import ledger_record
        from engine.trainer.dist import is_main

        RANK0 = is_main()

        self.state = self.w.agree("the pipeline state", read_state(self.run_dir) if RANK0 else None)
        for st in list(self.state["stages"]):
            if st["status"] in ("done", "skipped"):
                continue
            name = st["name"]
            self.w.stage = name
            self._save(st, status="running", started=st.get("started") or time.time(), ended=None)
            self.w.event({"name": "stage_start", "stage": name, "step": 0})
            self.w.log(f"pipeline: stage {name}")
            maybe_hold(name, None, self.w.should_stop)
            if self.w.should_stop():
                self._save(st, status="stopped")
                return "stopped"
            try:
                status, key, detail, error, verdict = self._decide(name, st)
            except Exception as exc:  # a crash inside the stage: say where; resume restarts the stage
                self._save(st, status="stopped" if self.w.stop_requested.is_set() else "failed", ended=time.time(),
                           error=f"{type(exc).__name__}: {exc}".split("\n")[0][:300])
                raise
            self._save(st, status=status, key=key, detail={**st.get("detail", {}), **detail}, error=error,
                       ended=time.time(), **({"verdict": verdict} if verdict else {}))
            self.w.event({"name": "stage_end", "stage": name, "status": status, "key": key,
                          "key_name": KEY_NAMES[name], **({"error": error} if error else {}), "step": 0})
            if self.w.rank == 0 or not self.w.supervisor:
                ledger_record("pipeline.stage", {"run_id": self.w.run_id, "stage": name, "status": status,
                                                 "key": key, "key_name": KEY_NAMES[name],
                                                 **({"reason": error} if error else {})})
            self.w.log(f"pipeline: stage {name} {status}" + (f" ({KEY_NAMES[name]} {key})" if key is not None else "")
                       + (f": {error}" if error else ""))
            if status == "stopped":
                return "stopped"
            if status == "failed":
                raise StageFailed(f"stage {name}: {error}")
        self.w.stage = None
        return "completed"

    # ---- stages: each returns (status, key, detail, error, verdict)
    def _sft(self, st):
        from engine.rundir import last_checkpoint
        from engine.trainer import grpo
        from engine.trainer.data import load_rows
        from engine.trainer.evalgate import evaluate
        from engine.prompts import PromptFormat
        from engine.trainer.sft import train_sft

        cfg = self.cfg
        device = grpo.resolve_device(cfg)
        base = cfg.model.name_or_path
        if base == "builtin:tiny":
            from engine.trainer.tiny import ensure_tiny

            base = str(ensure_tiny(sft_steps=0, log=self.w.log))  # the untrained demo model: its warm start is here
        model, tok = grpo.load_model_and_tokenizer(with_model(cfg, base) if base != cfg.model.name_or_path else cfg,
                                                   device, log=self.w.log)
        train_rows, eval_rows = load_rows(cfg, cwd=Path.cwd())
        s = cfg.pipeline.sft
        val = train_rows[: s.val_n]
        sft_dir = self.run_dir / SFT_DIR
        ck = last_checkpoint(sft_dir)
        lora = grpo.peft_config(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True})}),
                                model) if s.lora else None

        def progress(p: dict[str, Any]) -> None:
            self.w.step = p["step"]
            self.w.event({"name": "sft", **p})

        def checkpoint(step: int, path: Path) -> None:
            self.w.event({"name": "checkpoint", "step": step, "path": str(path)})
            maybe_hold("sft", step, self.w.should_stop)

        out = sft_dir / "model"
        model.generation_config.pad_token_id = tok.pad_token_id
        model, res = train_sft(model, tok, train_rows, s, output_dir=sft_dir / "checkpoints", device=device,
                               val_metric=lambda m: task_accuracy(m, tok, val, cfg), lora=lora, save=True,
                               resume_from=ck[1] if ck else None, should_stop=self.w.should_stop_all,
                               on_progress=progress, on_checkpoint=checkpoint, log=self.w.log,
                               fmt=PromptFormat.from_config(cfg),  # the prompts GRPO and the gate read
                               save_model_to=None if s.lora else out)  # through the trainer, every rank
        detail = {"steps": res.steps, "val_metric": res.val_metric, "stopped_by": res.stopped_by, "loss": res.loss}
        if res.stopped_by == "stop":
            return "stopped", None, detail, None, None
        from engine.trainer.dist import is_main

        RANK0 = is_main()

        if RANK0:
            if s.lora:  # the merged model: a whole replica on every rank (LoRA is not sharded here)
                model.save_pretrained(str(out))
            tok.save_pretrained(str(out))
        self.w.barrier("the sft model saved")
        n_eval = len(eval_rows) if cfg.dataset.source == "builtin:addition" else cfg.eval.n_samples
        evaluates = RANK0 or cfg.compute.strategy in ("zero3", "fsdp")  # replicas: rank 0 alone
        held = brief(evaluate(model, tok, eval_rows, cfg, n=n_eval)) if eval_rows and evaluates else {}
        if held:
            self.w.log(f"sft: held-out {held['task_metric_name']} {held['task_metric']:.3f} (n={held['n']}) after "
                       f"{res.steps} steps ({res.stopped_by})")
            self.w.event({"name": "eval", "phase": "sft", "step": res.steps, **held})
        detail.update(heldout=held, model=str(out))
        return "done", held.get("task_metric"), detail, None, None

    def _gate(self, st):
        thr = self.cfg.pipeline.gate.min_task_metric
        held = (self._stage("sft").get("detail") or {}).get("heldout")
        if not held:  # no sft stage: the base model's held-out metric
            from engine.trainer import grpo
            from engine.trainer.data import load_rows
            from engine.trainer.evalgate import evaluate

            model, tok = grpo.load_model_and_tokenizer(self.cfg, grpo.resolve_device(self.cfg), log=self.w.log)
            _, eval_rows = load_rows(self.cfg, cwd=Path.cwd())
            held = brief(evaluate(model, tok, eval_rows, self.cfg, n=self.cfg.eval.n_samples))
        m = held.get("task_metric")
        ok = m is not None and m >= thr
        why = f"held-out {held.get('task_metric_name')} {m if m is None else round(m, 4)} " \
              f"{'≥' if ok else '<'} pipeline.gate.min_task_metric {thr}"
        self.w.event({"name": "gate", "pass": ok, "reason": why, "task_metric": m, "threshold": thr})
        if ok:
            return "done", "pass", {"reason": why}, None, "pass"
        return "failed", "fail", {"reason": why}, f"{why}: GRPO would start from a model that cannot do the task " \
                                                  f"(train SFT longer: pipeline.sft.target / steps)", "fail"

    def _grpo(self, st):
        from engine.rundir import last_checkpoint

        cfg = self.cfg
        sft = self._stage("sft")
        if sft.get("status") == "done" and (sft.get("detail") or {}).get("model"):
            cfg = with_model(cfg, sft["detail"]["model"])
        resume = last_checkpoint(self.run_dir) is not None
        before = (sft.get("detail") or {}).get("heldout") or None
        status, after = self.w.grpo(cfg, resume=resume, before=before)
        m = (after or {}).get("task_metric")
        return status if status != "completed" else "done", m, {"after": after, "before": before}, None, None

    def _eval(self, st):
        from engine.trainer.evalgate import decide

        after = (self._stage("grpo").get("detail") or {}).get("after")
        if not after:
            from engine.trainer import grpo
            from engine.trainer.data import load_rows
            from engine.trainer.evalgate import evaluate

            final = self.run_dir / "final"
            cfg = with_model(self.cfg, str(final)) if final.is_dir() else self.cfg
            model, tok = grpo.load_model_and_tokenizer(cfg, grpo.resolve_device(cfg), log=self.w.log)
            _, eval_rows = load_rows(self.cfg, cwd=Path.cwd())
            n_eval = len(eval_rows) if self.cfg.dataset.source == "builtin:addition" else self.cfg.eval.n_samples
            after = evaluate(model, tok, eval_rows, self.cfg, n=n_eval)
        grpo_detail = self._stage("grpo").get("detail") or {}
        start = grpo_detail.get("before") or (self._stage("sft").get("detail") or {}).get("heldout") or {}
        ok, why = decide(after, self.cfg.eval, before=start.get("task_metric"))
        self.w.gate = (ok, why)
        self.w.event({"name": "eval_gate", "pass": ok, "reason": why, "task_metric": after.get("task_metric"),
                      "threshold": self.cfg.eval.threshold})
        from engine.ledger import ledger_record

        if self.w.rank == 0 or not self.w.supervisor:
            ledger_record("eval", {"run_id": self.w.run_id, "pass": ok, "reason": why, "stage": "eval",
                                   "task_metric": after.get("task_metric"), "threshold": self.cfg.eval.threshold})
        if ok:
            return "done", "pass", {"reason": why}, None, "pass"
        return "failed", "fail", {"reason": why}, (f"eval gate failed: {why}; nothing pushed (to pass: train longer "
                                                   f"with grpo.max_steps, or set eval.threshold / eval.min_gain "
                                                   f"to what this model should reach)"), "fail"

    def _push(self, st):
        if not self.cfg.train.output_repo or self.w.sync is None:
            return "skipped", None, {"reason": "train.output_repo is not set"}, None, None
        from engine.remote.sync import final_policy
        from engine.ledger import ledger_record

        allowed, why = final_policy(self.cfg, self.w.gate)
        if not allowed:
            return "failed", None, {"reason": why}, f"push refused: {why}", "fail"
        # the stage's own end goes up with it: the uploaded pipeline.json reads done (its revision is the commit)
        self._save(st, detail={"repo": self.cfg.train.output_repo})
        import copy

        up = copy.deepcopy(self.state)
        for s in up["stages"]:
            if s["name"] == "push":
                s.update(status="done", ended=time.time(), key="this commit", error=None,
                         detail={**s.get("detail", {}), "repo": self.cfg.train.output_repo,
                                 "path": self.w.sync.prefix})
        sha = self.w.sync.finish("completed", final_allowed=True, reason=why,
                                 meta_fields={"status": "completed", "ended_at": time.time(),
                                              "pipeline": [{k: s.get(k) for k in ("name", "status", "key", "key_name")}
                                                           for s in up["stages"]]},
                                 overrides={PIPELINE_FILE: up})
        if sha is None:
            return "failed", None, {"reason": "upload failed"}, "the upload to the Hub failed (see stdout.log)", None
        self.w.sync_finished = True
        ledger_record("push", {"run_id": self.w.run_id, "repo_id": self.cfg.train.output_repo, "revision": sha,
                               "path": self.w.sync.prefix, "eval_passed": bool(self.w.gate and self.w.gate[0])})
        self.w.event({"name": "push", "repo_id": self.cfg.train.output_repo, "revision": sha})
        self.w.meta(pushed_revision=sha)
        return "done", sha, {"repo": self.cfg.train.output_repo, "path": self.w.sync.prefix}, None, None


class StageFailed(RuntimeError):
    """A stage failed (a check's verdict, or an error inside it): the run ends ``failed`` saying why."""
