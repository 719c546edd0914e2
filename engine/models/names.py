"""Every name a user types for a model, resolved one way (``infer --model``, ``eval``, the try panel, probe).

:func:`resolve_name` tries, in order:

1. ``BASE + ADAPTER`` — a base model (any name below) with a PEFT adapter directory;
2. ``builtin:NAME`` — a built-in (engine/builtins.py; built once, cached);
3. ``run:ID[/final|/checkpoint-N|@N]`` — a run, explicitly;
4. an existing local directory (``~`` expanded; relative to the working directory);
5. ``RUN``, ``RUN/final``, ``RUN/checkpoint-N``, ``RUN/checkpoints/checkpoint-N`` or ``RUN@N`` — a run id or an
   unambiguous prefix of one (the way pane A and ``run list`` name them). ``RUN`` alone is its ``final/`` model when
   the run completed, else its latest checkpoint;
6. a Hub id (``org/name``) — only when nothing local matches, and failing fast: a model already in the Hub cache
   loads from it; otherwise ``HF_HUB_OFFLINE`` set, or no TCP connection to the Hub within
   :data:`HUB_CONNECT_TIMEOUT` seconds, is a ``carl.network`` error at once (no minute of retries).

A name that looks like a path (``./x``, ``/x``, ``a/b/c``) but does not exist is ``carl.validation``. A run's
checkpoint may be a full model or a LoRA adapter (then the base is the adapter's ``base_model_name_or_path``, or
the run's own ``model.name_or_path`` when that path is gone).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from engine.errors import NetworkError, RunNotFound, ValidationError

HUB_CONNECT_TIMEOUT = 2.0
_RUN_NAME = re.compile(r"(?P<run>[A-Za-z0-9][A-Za-z0-9_.-]*)"
                       r"(?:@(?P<at>\d+)|/(?:checkpoints/)?checkpoint-(?P<ck>\d+)|/(?P<final>final))?/?")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
HINT = ("Name a local directory saved with save_pretrained, builtin:tiny, a run (RUN, RUN/checkpoint-N, RUN@N, "
        "run:RUN), or a Hub id reachable from here.")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: ``model`` (an absolute local path or a Hub id; the base when ``adapter`` is set),
    ``tokenizer`` (where the tokenizer loads from), and where it came from."""

    model: str
    adapter: str | None = None
    tokenizer: str | None = None
    label: str = ""
    run_id: str | None = None
    checkpoint: str | None = None  # "final" or "checkpoint-<step>" for runs
    source: str = "local"  # local | builtin | run | hub
    run_dir: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.model, self.adapter)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "adapter": self.adapter, "label": self.label or self.model,
                "run_id": self.run_id, "checkpoint": self.checkpoint}


def looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")
            or Path(name).suffix in (".safetensors", ".bin", ".pt"))


def has_model(d: Path) -> bool:
    return (d / "config.json").is_file() or (d / "adapter_config.json").is_file()


def has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                            "vocab.json"))


def adapter_base(d: Path) -> str | None:
    try:
        return json.loads((Path(d) / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------------ runs
def run_model_dir(run: str, home: Any = None, *, step: int | None = None, final: bool = False
                  ) -> tuple[str, Path, str]:
    """``(run_id, directory, which)`` of a run's model: checkpoint ``step`` when given, ``final/`` when asked (or,
    neither given, when the run completed), else its latest checkpoint (``which`` = ``"final"`` or
    ``"checkpoint-<step>"``). Unknown run: ``carl.run.not_found``; no such model: ``carl.validation``."""
    from engine.rundir import model_checkpoints, resolve_id, runs_root

    root = runs_root(home)
    run_id = resolve_id(root, run)
    d = root / run_id
    cks = model_checkpoints(d)
    if step is not None:
        if step not in cks:
            raise ValidationError(f"run {run_id} has no checkpoint-{step}",
                                  hint=f"Its checkpoints: {', '.join(f'checkpoint-{s}' for s in sorted(cks)) or 'none'}.",
                                  context={"run": run_id, "step": step})
        return run_id, cks[step], f"checkpoint-{step}"
    if has_model(d / "final"):
        return run_id, d / "final", "final"
    if final:
        raise ValidationError(f"run {run_id} has no final/ model (it has not completed)",
                              hint="Name a checkpoint (RUN/checkpoint-N) or wait for the run to complete.",
                              context={"run": run_id})
    if not cks:
        raise ValidationError(f"run {run_id} has no model yet (no final/ and no checkpoint)",
                              hint="Wait for its first checkpoint (grpo.save_steps) or for the run to complete.",
                              context={"run": run_id, "run_dir": str(d)})
    last = max(cks)
    return run_id, cks[last], f"checkpoint-{last}"


def _run_base_model(run_dir: Path) -> str | None:
    try:
        import yaml

        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        return (cfg.get("model") or {}).get("name_or_path")
    except (OSError, ValueError, AttributeError):
        return None


def _from_run(run: str, home: Any, log: Callable[[str], None] | None, *, step: int | None = None,
              final: bool = False, base: str | None = None) -> ModelRef:
    run_id, d, which = run_model_dir(run, home, step=step, final=final)
    run_dir = d.parent if which == "final" else d.parent.parent
    label = f"{run_id}/{which}"
    if (d / "adapter_config.json").is_file():
        b = base or adapter_base(d)
        if not base and b and not Path(b).exists() and looks_like_path(b):
            b = _run_base_model(run_dir) or b  # e.g. builtin:tiny built under another cache
        if not b:
            raise ValidationError(f"adapter {d} names no base model", hint="Name the base as well: BASE + ADAPTER.",
                                  context={"adapter": str(d)})
        b_ref = base_ref(b, home, log)
        tok = str(d) if has_tokenizer(d) else b_ref.tokenizer
        return ModelRef(b_ref.model, adapter=str(d), tokenizer=tok, label=label, run_id=run_id, checkpoint=which,
                        source="run", run_dir=str(run_dir))
    if has_tokenizer(d):
        tok = str(d)
    else:
        tok = base_ref(base or _run_base_model(run_dir) or str(d), home, log).tokenizer
    return ModelRef(str(d), tokenizer=tok, label=label, run_id=run_id, checkpoint=which, source="run",
                    run_dir=str(run_dir))


def parse_run_name(text: str) -> tuple[str, int | None, bool] | None:
    """``(run, step, final)`` when ``text`` has the shape of a run name (``RUN``, ``RUN@N``, ``RUN/final``,
    ``RUN/checkpoint-N``), else None."""
    m = _RUN_NAME.fullmatch(text)
    if not m:
        return None
    step = m.group("at") or m.group("ck")
    return m.group("run"), int(step) if step else None, bool(m.group("final"))


# ------------------------------------------------------------------------------------------------------ hub
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id huggingface_hub refuses: not cached
        return False
    return isinstance(hit, str)


def hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT) -> tuple[bool, str]:
    """``(ok, why)``: one TCP connection to the Hub endpoint (``HF_ENDPOINT`` or huggingface.co), no retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or type(exc).__name__}"


def _hub(name: str) -> ModelRef:
    if not _HUB_ID.fullmatch(name):
        raise ValidationError(f"{name!r} is not a local directory, a run, a built-in or a Hub id", hint=HINT,
                              context={"model": name})
    if _hub_cached(name):
        return ModelRef(name, tokenizer=name, label=name, source="hub")
    if _offline():
        raise NetworkError(f"{name!r} is no local directory, run or built-in, and not in the Hub cache "
                           "(HF_HUB_OFFLINE is set)",
                           hint="Unset HF_HUB_OFFLINE to download it, or " + HINT[0].lower() + HINT[1:],
                           context={"model": name})
    ok, why = hub_reachable()
    if not ok:
        raise NetworkError(f"{name!r} is no local directory, run or built-in, and the Hub cannot be reached ({why})",
                           hint="Check the network (or set HF_ENDPOINT), or name a local model: " + HINT,
                           context={"model": name})
    return ModelRef(name, tokenizer=name, label=name, source="hub")


# ------------------------------------------------------------------------------------------------------ names
def _local(p: Path, label: str) -> ModelRef:
    if not p.is_dir():
        raise ValidationError(f"model path is not a directory: {label}", hint=HINT, context={"model": label})
    p = p.resolve()
    if (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
        base = adapter_base(p)
        if not base:
            raise ValidationError(f"adapter {p} names no base model", hint="Name the base as well: BASE + ADAPTER.",
                                  context={"adapter": str(p)})
        b = base_ref(base, None, None)
        return ModelRef(b.model, adapter=str(p), tokenizer=str(p) if has_tokenizer(p) else b.tokenizer, label=label)
    return ModelRef(str(p), tokenizer=str(p), label=label)


def base_ref(name: str, home: Any = None, log: Callable[[str], None] | None = None) -> ModelRef:
    """A base model name (no adapter, no run): a built-in, a local directory or a Hub id."""
    from engine import builtins

    if builtins.is_builtin(name):
        built = builtins.model_dir(name, log)
        return ModelRef(str(built), tokenizer=str(builtins.tokenizer_dir(name, built)), label=name, source="builtin")
    p = Path(name).expanduser()
    if p.exists():
        return _local(p, name)
    if looks_like_path(name):
        raise ValidationError(f"model path not found: {name}", hint=HINT, context={"model": name})
    return _hub(name)


def resolve_name(text: str, *, home: Any = None, log: Callable[[str], None] | None = None) -> ModelRef:
    """The model a user named in one string (see the module's docstring for the order)."""
    text = (text or "").strip()
    if not text:
        raise ValidationError("no model given", hint=HINT)
    if " + " in text:
        base, _, adapter = text.partition(" + ")
        return resolve(base.strip(), adapter=adapter.strip(), home=home, log=log)
    from engine import builtins

    if builtins.is_builtin(text):
        return base_ref(text, home, log)
    if text.startswith("run:"):
        parsed = parse_run_name(text[4:].strip())
        if parsed is None:
            raise ValidationError(f"not a run name: {text!r}", hint="run:RUN, run:RUN/checkpoint-N or run:RUN@N.",
                                  context={"model": text})
        run, step, final = parsed
        return _from_run(run, home, log, step=step, final=final)
    p = Path(text).expanduser()
    if p.exists():
        return _local(p, text)
    parsed = parse_run_name(text)
    if parsed is not None:
        run, step, final = parsed
        try:
            return _from_run(run, home, log, step=step, final=final)
        except RunNotFound:
            if step is not None or final:  # RUN/checkpoint-N with no such run: not a Hub id either
                raise
    if looks_like_path(text):
        raise ValidationError(f"model path not found: {text}", hint=HINT, context={"model": text})
    return _hub(text)


def resolve(model: str | None = None, *, adapter: str | None = None, run: str | None = None, home: Any = None,
            log: Callable[[str], None] | None = None) -> ModelRef:
    """What to load from separate flags (``--model``, ``--adapter``, ``--run``). ``run`` and ``adapter`` are
    exclusive; ``model`` overrides a run's (or adapter's) base. ``model`` alone is :func:`resolve_name`."""
    if run and adapter:
        raise ValidationError("give --adapter or --run, not both", hint="A run already names its own weights.")
    if not model and not run:
        raise ValidationError("no model given", hint="Pass --model NAME (" + HINT[5:].rstrip(".") + "), or --run RUN.")
    if run:
        parsed = parse_run_name(run.strip().removeprefix("run:"))
        if parsed is None:
            raise ValidationError(f"not a run name: {run!r}", hint="RUN, RUN/checkpoint-N or RUN@N.",
                                  context={"run": run})
        r, step, final = parsed
        return _from_run(r, home, log, step=step, final=final, base=model)
    assert model is not None
    if not adapter:
        return resolve_name(model, home=home, log=log)
    b = base_ref(model, home, log)
    a = Path(adapter).expanduser()
    if not (a / "adapter_config.json").is_file():
        raise ValidationError(f"adapter not found: {adapter} (no adapter_config.json)",
                              hint="Give a directory saved by peft (save_pretrained of a PeftModel).",
                              context={"adapter": adapter})
    a = a.resolve()
    tok = str(a) if has_tokenizer(a) else b.tokenizer
    return ModelRef(b.model, adapter=str(a), tokenizer=tok, label=f"{model} + {a.name}", source=b.source)
