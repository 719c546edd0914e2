"""Reading carl.yaml: YAML parsing, validation with errors that name the field path and the offending value
(``carl.config``, exit 2), ``--set KEY.PATH=VALUE`` overrides, finding, saving and hashing a config."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from engine.config_presets import preset
from engine.config_schema import CONFIG_FILENAME, FieldValueError, Config
from engine.errors import ConfigError

# --------------------------------------------------------------------------------------------- loading
def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_type_tag(part: Any) -> bool:
    """pydantic puts validator/union-member tags in ``loc`` (``function-after[_needs()]``, ``list[str]``)."""
    return isinstance(part, str) and any(c in part for c in "[(")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys)."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
        if nxt is None:
            return None
        model = nxt
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _short(value: Any) -> Any:
    """Offending values as shown in messages/context: scalars as they are, containers summarised."""
    if isinstance(value, dict):
        return None
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    return value


def field_errors(exc: PydanticValidationError) -> list[dict[str, Any]]:
    """pydantic errors as ``[{"field": "grpo.batch_size", "value": …, "message": …}]``.

    One entry per field (alternatives of a union are merged); unknown keys say which keys are allowed;
    cross-field checks (:class:`FieldValueError`) name the field they blame. Cross-field checks of a section
    run only once its fields are individually valid (pydantic's order), so a second pass may find more.
    """
    errs: list[dict[str, Any]] = []
    by_field: dict[str, dict[str, Any]] = {}
    for e in exc.errors():
        loc = tuple(p for p in e.get("loc", ()) if not _is_type_tag(p))
        msg = str(e.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        value = e.get("input")
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldValueError):
            loc = (*loc, cause.field)
            msg, value = cause.message, cause.value
        elif e.get("type") == "extra_forbidden" and loc:
            parent = _model_at(loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key {loc[-1]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        field = _format_loc(loc) or "(root)"
        if field in by_field:  # another alternative of a union failed too: keep one entry
            if msg not in by_field[field]["message"]:
                by_field[field]["message"] += f"; or {msg}"
            continue
        entry = {"field": field, "value": _short(value), "message": msg}
        if e.get("type") == "extra_forbidden" and loc and not isinstance(cause, FieldValueError):
            entry["allowed"] = allowed
        by_field[field] = entry
        errs.append(entry)
    return errs


def describe_error(err: dict[str, Any]) -> str:
    """``grpo.batch_size: must be a multiple of num_generations (8) (got 30)``."""
    shown = "" if err.get("value") is None else f" (got {err['value']!r})"
    return f"{err['field']}: {err['message']}{shown}"


def check_dict(data: Any) -> tuple[Config | None, list[dict[str, Any]]]:
    """Validate without raising: ``(config, [])`` or ``(None, field errors)`` — used for live validation."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [{"field": "(root)", "value": None,
                       "message": f"the top level must be a mapping, got {type(data).__name__}"}]
    try:
        return Config.model_validate(data), []
    except PydanticValidationError as exc:
        return None, field_errors(exc)


def validate_dict(data: Any, *, source: str = "carl.yaml") -> Config:
    """Validate a parsed carl.yaml; raise ``carl.config`` naming the first field (all of them in context)."""
    cfg, errs = check_dict(data)
    if cfg is not None:
        return cfg
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    raise ConfigError(f"{source}: {describe_error(errs[0])}{more}",
                      hint="Fix the named field(s); `carl --batch project validate` lists them all.",
                      context={"source": source, "errors": errs})


def _split_key(key: str) -> list[str | int]:
    """``task.rewards[0].kind`` or ``task.rewards.0.kind`` → ["task", "rewards", 0, "kind"]."""
    parts: list[str | int] = []
    for raw in key.replace("[", ".").replace("]", "").split("."):
        raw = raw.strip()
        if raw:
            parts.append(int(raw) if raw.isdigit() else raw)
    return parts


def parse_set(expr: str) -> tuple[list[Any], Any]:
    """``"grpo.max_steps=5"`` → (["grpo", "max_steps"], 5). Values are parsed as YAML scalars/lists
    (``5`` int, ``1e-5`` float, ``true`` bool, ``null``, ``[a, b]``); anything else stays a string."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected key.path=value", hint="Example: --set grpo.max_steps=20",
                          context={"set": expr})
    key, raw = expr.split("=", 1)
    path = _split_key(key)
    if not path or not isinstance(path[0], str):
        raise ConfigError(f"--set {expr!r}: empty key", hint="Example: --set grpo.max_steps=20", context={"set": expr})
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value != raw.strip() and not raw.strip().startswith(("'", '"')):
        value = raw.strip()
    # YAML 1.1 reads 1e-5 as a string; a float is what everyone means
    if isinstance(value, str):
        try:
            if any(c in value for c in "eE.") and value.lower() not in ("nan", "inf", "-inf", ".nan", ".inf"):
                value = float(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(data: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """Apply ``--set key.path=value`` overrides to a parsed carl.yaml (a copy). Missing sections are created;
    list items are addressed by index (``task.rewards.0.weight=2``)."""
    data = copy.deepcopy(data)
    for expr in sets or []:
        path, value = parse_set(expr)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            where = _format_loc(tuple(path[: i + 1]))
            if isinstance(node, dict):
                if isinstance(part, int):
                    raise ConfigError(f"--set {expr!r}: {_format_loc(tuple(path[:i]))} is not a list",
                                      context={"set": expr, "field": where})
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
                node = nxt
            elif isinstance(node, list):
                if not isinstance(part, int) or not 0 <= part < len(node):
                    raise ConfigError(f"--set {expr!r}: no item {where}",
                                      context={"set": expr, "field": where, "length": len(node)})
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {expr!r}: {where} is not a section (got {node!r})",
                                  context={"set": expr, "field": where})
        last = path[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or not 0 <= last < len(node):
                raise ConfigError(f"--set {expr!r}: no item {_format_loc(tuple(path))}",
                                  context={"set": expr, "field": _format_loc(tuple(path))})
        elif isinstance(last, int):
            raise ConfigError(f"--set {expr!r}: {_format_loc(tuple(path[:-1]))} is not a list",
                              context={"set": expr})
        node[last] = value
    return data


def parse_yaml_text(text: str, *, source: str = "carl.yaml") -> dict[str, Any]:
    """Parse carl.yaml text; syntax errors name line and column (``carl.config``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "syntax error"
        ctx: dict[str, Any] = {"source": source}
        where = ""
        if mark is not None:
            ctx.update(line=mark.line + 1, column=mark.column + 1)
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}", hint="Fix the YAML syntax.",
                          context=ctx) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}",
                          hint="carl.yaml holds sections like `project:` and `grpo:` at the top level.",
                          context={"source": source})
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="Create one with `carl --batch project init`.",
                          context={"path": str(path)}) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a carl.yaml", context={"path": str(path)}) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", context={"path": str(path)}) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", context={"path": str(path)}) from None
    return parse_yaml_text(text, source=str(path))


def find_config(explicit: str | Path | None = None, cwd: Path | None = None) -> Path | None:
    """The config in force: ``--config`` if given, else ``./carl.yaml`` if present, else None (the demo)."""
    if explicit is not None:
        return Path(explicit)
    here = (cwd or Path.cwd()) / CONFIG_FILENAME
    return here if here.is_file() else None


def load_config(path: str | Path | None = None, sets: list[str] | None = None, *,
                cwd: Path | None = None) -> tuple[Config, Path | None]:
    """Load (config path or ./carl.yaml or the tiny demo), apply ``--set`` overrides, validate."""
    found = find_config(path, cwd)
    data = read_yaml(found) if found else {}
    data = apply_overrides(data, sets)
    return validate_dict(data, source=str(found) if found else "tiny-cpu preset"), found


def add_config_arguments(parser: Any) -> None:
    """``--config FILE`` and repeatable ``--set KEY.PATH=VALUE`` — every verb that reads carl.yaml adds these
    (then calls ``load_config(args.config, args.sets)``)."""
    parser.add_argument("--config", metavar="FILE", help="carl.yaml to use (default ./carl.yaml, else the tiny demo)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config field, e.g. --set grpo.max_steps=20 (repeatable)")


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write atomically (temp file in the same directory + fsync + rename), so a crash never leaves half a
    carl.yaml."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(cfg.to_yaml())
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}", hint="Check the directory is writable.",
                          context={"path": str(path)}) from None
    return path


def config_hash(cfg: Config) -> str:
    """sha256 of the config's canonical YAML (what the ledger records for project.init / run.start)."""
    import hashlib

    return hashlib.sha256(cfg.to_yaml().encode("utf-8")).hexdigest()


def changed_fields(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts (for the ledger's project.change)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            out += changed_fields(before.get(key), after.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if before == after else [prefix or "(root)"]


def validate_section(model: type[BaseModel], data: Any, section: str,
                     hint: str | Callable[[list[dict[str, Any]]], str]) -> Any:
    """Validate one free-form carl.yaml section (``policy:``, ``remote:``, ``chat:``) owned by another module.

    ``data`` may be the section's mapping, None (defaults) or an instance of ``model``. Raises ``carl.config``
    naming the first bad field with its section path (``remote.hf.flavor``) and value; every error in
    ``context.errors`` as ``[{"field", "value", "message"}]``. ``hint`` may depend on the errors.
    """
    if isinstance(data, model):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(data).__name__}",
                          hint=hint if isinstance(hint, str) else hint([]), context={"field": section})
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        errs = []
        for e in exc.errors():
            msg = str(e.get("msg", "invalid"))
            msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
            value = e.get("input")
            errs.append({"field": section + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                                    for p in e.get("loc", ())),
                         "value": None if isinstance(value, (dict, list)) else value, "message": msg})
        first = errs[0]
        shown = "" if first["value"] is None else f" (got {first['value']!r})"
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        raise ConfigError(f"{first['field']}: {first['message']}{shown}{more}",
                          hint=hint if isinstance(hint, str) else hint(errs), context={"errors": errs}) from None
