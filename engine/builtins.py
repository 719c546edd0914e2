"""The built-ins: models and datasets carl ships as code (built locally, cached under ``$CARL_HOME/cache``, never
downloaded), consulted by name.

Generic modules (prompts, data, provenance, the model loader) never branch on a built-in's name: they ask this
registry. Each entry names the module that implements it; the module is imported only when the built-in is used
(``importlib``, so a generic module depends on this registry, never on the trainer that builds a demo model —
building the tiny demo runs the SFT stage, a trainer component, above the loader). A built-in **model** module
provides ``ensure(log=None) -> Path`` (build once, return the saved directory), ``tokenizer()`` (the cached
tokenizer, else the same one built in memory, without building the model) and optionally ``provenance()`` (what
its cached build records; it never builds). A built-in **dataset** module provides ``load_rows(cfg) -> (train,
eval)``.

Adding a built-in: write its module with those functions and add one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    module: str
    about: str
    tokenizer_subdir: str | None = None  # where the tokenizer sits inside the built directory (None: beside it)


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    module: str
    about: str
    eval_gate: dict[str, float] | None = None  # the eval section's gate for runs on this task, unless they set one


MODELS: dict[str, BuiltinModel] = {m.name: m for m in (
    BuiltinModel("builtin:tiny", "engine.trainer.tiny", "the demo: a tiny Llama-style model warm-started on addition"),
    BuiltinModel("builtin:agent-sql", "engine.envs.demo", "the agent demo: a tiny tool-calling model for SQL tasks",
                 tokenizer_subdir="tokenizer"),
)}
DATASETS: dict[str, BuiltinDataset] = {d.name: d for d in (
    BuiltinDataset("builtin:addition", "engine.trainer.tiny", "2-digit addition with a fixed held-out set",
                   eval_gate={"threshold": 0.3, "min_gain": 0.0}),  # ≥ 0.3 held out and no worse than the start
    BuiltinDataset("builtin:sql-tasks", "engine.envs.demo", "the agent demo's SQL tasks"),
)}


def is_builtin(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _unknown(kind: str, name: str, known: dict[str, Any]):
    from engine.errors import ConfigError

    return ConfigError(f"unknown built-in {kind} {name!r}", hint=f"Built-ins: {', '.join(known)}.",
                       context={kind: name})


def model_entry(name: str) -> BuiltinModel:
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    return MODELS[name]


def _module(path: str) -> Any:
    return importlib.import_module(path)


def model_dir(name: str, log: Callable[[str], None] | None = None) -> Path:
    """The built model's directory (built once, then cached)."""
    return Path(_module(model_entry(name).module).ensure(log=log))


def tokenizer_dir(name: str, built: str | Path) -> Path:
    sub = model_entry(name).tokenizer_subdir
    return Path(built) / sub if sub else Path(built)


def tokenizer(name: str) -> Any:
    """The built-in's tokenizer without building the model (the cached one, else built in memory)."""
    return _module(model_entry(name).module).tokenizer()


def provenance(name: str) -> dict[str, Any] | None:
    """What the cached build records (version, warm-start steps, size); None when it records nothing."""
    mod = _module(model_entry(name).module)
    fn = getattr(mod, "provenance", None)
    return fn() if fn is not None else None


def eval_gate(name: str) -> dict[str, float] | None:
    """The eval gate a built-in task brings (None: the config's own defaults)."""
    d = DATASETS.get(name)
    return dict(d.eval_gate) if d and d.eval_gate else None


def load_rows(name: str, cfg: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if name not in DATASETS:
        raise _unknown("dataset", name, DATASETS)
    return _module(DATASETS[name].module).load_rows(cfg)
