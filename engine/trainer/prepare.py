"""What a run needs before its ranks start: built-in models and datasets, made once by the supervisor.

A rank never builds something another rank waits for: the demo model's warm start is itself a (TRL) training run,
and inside a rank it would join the run's process group while the other ranks wait on the build's file lock —
the fresh-``CARL_HOME`` hang of issue 25. So the supervisor (engine.trainer.supervisor), a plain process outside the
group, prepares everything first; a second carl process on the same cache waits on the lock and says so. A rank
that finds something missing anyway (ranks started by hand from the dry-run's commands) refuses with a typed
error instead of building it (:func:`check_prepared`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from engine.errors import ConfigError


def _base_models(cfg, pipeline: bool) -> list[tuple[str, dict[str, Any]]]:
    """(built-in name, ensure kwargs) this run loads: the model, and a pipeline's untrained base for its sft."""
    name = cfg.model.name_or_path
    out: list[tuple[str, dict[str, Any]]] = []
    if name == "builtin:tiny":
        if pipeline and "sft" in cfg.pipeline.stages:
            out.append(("builtin:tiny", {"sft_steps": 0}))  # the pipeline warm-starts it itself (stage sft)
        else:
            out.append(("builtin:tiny", {}))
    elif name == "builtin:agent-sql":
        out.append(("builtin:agent-sql", {}))
    return out


def _ensure(name: str, kw: dict[str, Any], log: Callable[[str], None]) -> Path:
    if name == "builtin:tiny":
        from engine.trainer.tiny import ensure_tiny

        return ensure_tiny(log=log, **kw)
    from engine.envs.demo import ensure

    return ensure(log=log)


def _built(name: str, kw: dict[str, Any]) -> Path | None:
    if name == "builtin:tiny":
        from engine.trainer.tiny import tiny_dir

        out = tiny_dir(sft_steps=kw.get("sft_steps"))
        return out if (out / "carl_tiny.json").is_file() else None
    from engine.envs.demo import cache_dir

    out = cache_dir()
    return out if (out / "carl_agent.json").is_file() else None


def prepare(cfg, *, pipeline: bool = False, cwd: Path | None = None, log: Callable[[str], None] = print,
            on_event: Callable[[dict[str, Any]], None] = lambda e: None) -> list[str]:
    """Build the built-in models and load the dataset once (the datasets cache), before any rank starts.
    Returns what was prepared (for the log)."""
    done = []
    for name, kw in _base_models(cfg, pipeline):
        if _built(name, kw) is None:
            on_event({"name": "prepare", "what": name, "status": "building", "step": 0})
        path = _ensure(name, kw, log)
        done.append(f"{name} ({path})")
    from engine.trainer.data import load_rows

    train, held = load_rows(cfg, cwd=cwd or Path.cwd())  # a Hub dataset lands in the datasets cache here
    done.append(f"dataset {cfg.dataset.source} ({len(train)} train, {len(held)} held-out rows)")
    on_event({"name": "prepare", "what": "run", "status": "done", "step": 0, "prepared": done})
    return done


def check_prepared(cfg, *, pipeline: bool = False) -> None:
    """In a rank of several: everything built-in must already be there (the supervisor built it)."""
    for name, kw in _base_models(cfg, pipeline):
        if _built(name, kw) is None:
            raise ConfigError(f"{name} is not built yet, and a rank of a multi-process run never builds it (the "
                              f"other ranks would wait on it inside the process group)",
                              hint="Start the run through carl (`carl --batch train`), or run "
                                   "`python -m engine.trainer.supervisor RUN_DIR`, which prepares it before the ranks.",
                              context={"model": name})
