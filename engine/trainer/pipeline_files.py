"""A ``--send-it`` run's own files, below the pipeline and the run store alike (both reach them here):
``pipeline.json``'s resume preparation."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ValidationError
from engine.rundir import PIPELINE_FILE, last_checkpoint, read_json, truncate_jsonl, update_meta, write_json


def prepare_pipeline_resume(run_dir: Path) -> int:
    """A ``--send-it`` run: reset the first unfinished stage to ``waiting`` and cut what it wrote after its last
    checkpoint; returns the step it restarts from (its checkpoint's, else 0). Raises when nothing can resume."""
    run_dir = Path(run_dir)
    state = read_json(run_dir / PIPELINE_FILE)
    todo = [s for s in state.get("stages", []) if s["status"] not in ("done", "skipped")]
    if not todo:
        raise ValidationError(f"pipeline run {run_dir.name} has every stage done", context={"run": run_dir.name})
    st = todo[0]
    if st.get("verdict") == "fail":
        raise ValidationError(f"stage {st['name']} of run {run_dir.name} failed its check: {st.get('error')}",
                              hint="A check's verdict does not change on resume: start a new run.",
                              context={"run": run_dir.name, "stage": st["name"]})
    name, step = st["name"], 0
    if name in ("sft", "grpo"):
        ck = last_checkpoint(run_dir / "sft" if name == "sft" else run_dir)
        step = ck[0] if ck else 0
    truncate_jsonl(run_dir / "events.jsonl",
                    lambda e: e.get("stage") != name or (name in ("sft", "grpo") and int(e.get("step") or 0) <= step
                                                         and e.get("name") not in ("stage_start", "stage_end")))
    if name == "grpo":
        truncate_jsonl(run_dir / "frames.jsonl", lambda f: int(f.get("step", 0)) <= step)
    st.update(status="waiting", error=None, resumed_from=step)
    write_json(run_dir / PIPELINE_FILE, state)
    update_meta(run_dir, pipeline=[{k: s.get(k) for k in ("name", "status", "key", "key_name")}
                                   for s in state["stages"]])
    return step
