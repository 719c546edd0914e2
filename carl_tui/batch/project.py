"""`carl --batch project init|show|validate|presets` — carl.yaml without the workbench.

    project init [--preset NAME] [--dir D] [--name N] [--force] [--set K=V …]
        → {"path", "preset", "config"}          (exists and no --force: carl.validation, exit 2)
    project show [--config F] [--set K=V …]
        → {"path", "source", "config"}          (path null when no carl.yaml: the tiny demo is in force)
    project validate [--config F] [--set K=V …]
        → {"ok": true, "path", "project"}       (invalid: carl.config, exit 2, context.errors lists every field)
    project presets
        → {"presets": [{"name", "description", "model", "dataset", "lora", "device", "gpus", "max_steps"}]}
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from carl_tui.batch._io import emit, progress
from engine.config import (CONFIG_FILENAME, PRESETS, add_config_arguments, apply_overrides, find_config,
                           config_hash, load_config, preset, preset_summaries, read_yaml, save_config, validate_dict)
from engine.errors import ConfigError, ValidationError


def register(sub: Any) -> None:
    p = sub.add_parser("project", help="create, show and validate carl.yaml",
                       description="Create, show and validate a project's carl.yaml.")
    verbs = p.add_subparsers(dest="project_verb", metavar="SUBCOMMAND", parser_class=type(p))

    init = verbs.add_parser("init", help="write carl.yaml from a preset (never prompts)",
                            description="Write carl.yaml from a preset. Refuses to overwrite without --force.")
    init.add_argument("--preset", default="tiny-cpu", choices=list(PRESETS),
                      help="preset to start from (default tiny-cpu, the built-in CPU demo)")
    init.add_argument("--dir", default=".", help="project directory (created if missing; default .)")
    init.add_argument("--name", help="project name (default: the preset's)")
    init.add_argument("--force", action="store_true", help="overwrite an existing carl.yaml")
    init.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                      help="override a field of the preset (repeatable)")
    init.set_defaults(func=run_init)

    show = verbs.add_parser("show", help="print the resolved config as JSON",
                            description="Print the config in force (carl.yaml + --set overrides, defaults filled).")
    add_config_arguments(show)
    show.set_defaults(func=run_show)

    validate = verbs.add_parser("validate", help="check carl.yaml; exit 2 naming every bad field",
                                description="Validate carl.yaml (+ --set overrides). Exit 2 with carl.config "
                                            "and context.errors = [{field, value, message}] when invalid.")
    add_config_arguments(validate)
    validate.set_defaults(func=run_validate)

    presets = verbs.add_parser("presets", help="list the presets", description="List the presets.")
    presets.set_defaults(func=run_presets)


def run_init(args: argparse.Namespace) -> int:
    directory = Path(args.dir).expanduser()
    path = directory / CONFIG_FILENAME
    if path.exists() and not args.force:
        raise ValidationError(f"{path} already exists", hint="Pass --force to overwrite it, or --dir for another "
                              "directory.", context={"path": str(path)})
    if directory.exists() and not directory.is_dir():
        raise ValidationError(f"{directory} is not a directory", context={"dir": str(directory)})
    base = preset(args.preset).model_dump(mode="json")
    sets = list(args.sets)
    if args.name:
        base["project"]["name"] = args.name
    cfg = validate_dict(apply_overrides(base, sets), source=f"preset {args.preset}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}", context={"dir": str(directory)}) from None
    save_config(cfg, path)
    from engine.runs import ledger_record  # never fails the command over bookkeeping

    ledger_record("project.init", {"path": str(path.resolve()), "preset": args.preset,
                                   "project": cfg.project.name, "config_hash": config_hash(cfg)})
    progress(f"wrote {path} (preset {args.preset})")
    emit({"path": str(path.resolve()), "preset": args.preset, "config": cfg.model_dump(mode="json")})
    return 0


def run_show(args: argparse.Namespace) -> int:
    cfg, found = load_config(args.config, args.sets)
    emit({"path": str(found.resolve()) if found else None,
          "source": "file" if found else "tiny-cpu preset (no carl.yaml here)",
          "config": cfg.model_dump(mode="json")})
    return 0


def run_validate(args: argparse.Namespace) -> int:
    found = find_config(args.config)
    if found is None:
        raise ConfigError(f"no {CONFIG_FILENAME} in {Path.cwd()}",
                          hint="Create one with `carl --batch project init`, or pass --config FILE.",
                          context={"dir": str(Path.cwd())})
    data = apply_overrides(read_yaml(found), args.sets)
    cfg = validate_dict(data, source=str(found))
    emit({"ok": True, "path": str(found.resolve()), "project": cfg.project.name})
    return 0


def run_presets(args: argparse.Namespace) -> int:
    emit({"presets": preset_summaries()})
    return 0
