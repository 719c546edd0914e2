"""`carl --batch jobs submit|estimate|status|logs|stop|list` — remote training jobs (docs/remote.md).

    jobs submit --backend hf|runpod|managed [--config F] [--set K=V …] [--approve] [--budget USD] [--hours H]
                [--idempotency-key KEY] [--dry-run]
        → {"run_id", "backend", "remote_id", "status", "flavor", "hours", "estimated_usd", "remaining_usd",
           "cost_so_far", "url", "idempotency_key", "deduplicated", …}
        no --approve: exit 5, carl.approval.required, context.estimate; above a cap: exit 5, carl.budget
        --dry-run: {"dry_run": true, "estimate", "plan", "request"} (the exact request; sends nothing)
    jobs estimate [--backend B] [--hours H] [--budget USD] → the estimate (+ "approval_required")
    jobs status ID   → {"run_id", "status", "cost_so_far", …}
    jobs logs ID     → {"run_id", "backend", "remote_id", "lines", "n_lines", "last_step"}
    jobs logs ID --follow → JSON lines: {"type": "log", "run_id", "line"} | carl frames as sent by the job
                     ({"type": "frame", …}) and a last {"type": "done", "run_id", "status"}
    jobs stop ID     → the status object after the stop
    jobs list [--refresh] → {"jobs": [{"run_id", "status", "backend", "started_at", "last_step", "cost_so_far", …}]}
"""

from __future__ import annotations

import argparse
from typing import Any

from carl_tui.batch._io import dumps, emit, progress
from engine.config import add_config_arguments, load_config
from engine.errors import ValidationError

BACKENDS = ("hf", "runpod", "managed")


def _money(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _hours(text: str) -> float:
    v = _money(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="run training on remote GPUs (HF Jobs, RunPod, managed)",
                       description="Submit, watch and stop remote training jobs, inside a budget and with approval.")
    verbs = p.add_subparsers(dest="jobs_verb", metavar="SUBCOMMAND", parser_class=type(p))

    s = verbs.add_parser("submit", help="submit carl.yaml as a remote job (needs --approve for paid compute)",
                         description="Estimate the cost, apply the ledger policy and submit. Without --approve: "
                                     "exit 5 with carl.approval.required and the estimate.")
    s.add_argument("--backend", choices=BACKENDS, help="default: remote.default_backend in carl.yaml (hf)")
    add_config_arguments(s)
    s.add_argument("--approve", action="store_true", help="approve the estimated cost (recorded in the ledger)")
    s.add_argument("--budget", type=_money, metavar="USD", help="refuse if the estimate exceeds USD (this job)")
    s.add_argument("--hours", type=_hours, metavar="H", help="max hours (default remote.hours, else budget.max_hours)")
    s.add_argument("--idempotency-key", metavar="KEY", help="reuse to make a repeated submit return the same job")
    s.add_argument("--dry-run", action="store_true", help="print the estimate and the exact request; send nothing")
    s.set_defaults(func=run_submit)

    e = verbs.add_parser("estimate", help="the cost estimate and policy decision, without submitting",
                         description="Print the cost estimate and the ledger policy's decision; submits nothing.")
    e.add_argument("--backend", choices=BACKENDS)
    add_config_arguments(e)
    e.add_argument("--budget", type=_money, metavar="USD")
    e.add_argument("--hours", type=_hours, metavar="H")
    e.set_defaults(func=run_estimate)

    for name, func, help_text in (("status", run_status, "ask the backend for a job's status"),
                                  ("stop", run_stop, "stop (cancel) a job"),
                                  ("logs", run_logs, "a job's logs (--follow streams JSON lines)")):
        v = verbs.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        v.add_argument("id", metavar="ID", help="carl run id, the backend's job id, or a unique prefix")
        add_config_arguments(v)
        if name == "logs":
            v.add_argument("--follow", action="store_true", help="stream until the job ends (JSON lines)")
        v.set_defaults(func=func)

    ls = verbs.add_parser("list", help="remote jobs of this CARL_HOME",
                          description="List remote jobs recorded in CARL_HOME/jobs (no network unless --refresh).")
    ls.add_argument("--refresh", action="store_true", help="ask the backends about unfinished jobs first")
    add_config_arguments(ls)
    ls.set_defaults(func=run_list)
    p.set_defaults(func=None)


def _cfg(args: argparse.Namespace):
    cfg, found = load_config(args.config, args.sets)
    return cfg, found


def run_submit(args: argparse.Namespace) -> int:
    from engine.remote.jobs import submit_job

    cfg, found = _cfg(args)
    if args.idempotency_key is not None and not args.idempotency_key.strip():
        raise ValidationError("--idempotency-key must not be empty")
    out = submit_job(cfg, args.backend, approve=args.approve, hours=args.hours, budget=args.budget,
                     idempotency_key=args.idempotency_key, dry_run=args.dry_run, config_path=found)
    if not args.dry_run:
        progress(f"submitted {out['run_id']} to {out['backend']} ({out.get('status')})"
                 + (" — same idempotency key: existing job" if out.get("deduplicated") else ""))
    emit(out)
    return 0


def run_estimate(args: argparse.Namespace) -> int:
    from engine.remote.jobs import estimate_job

    cfg, _ = _cfg(args)
    emit(estimate_job(cfg, args.backend, hours=args.hours, budget=args.budget))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from engine.remote.jobs import job_status

    cfg, _ = _cfg(args)
    emit(job_status(args.id, cfg))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from engine.remote.jobs import stop_job

    cfg, _ = _cfg(args)
    out = stop_job(args.id, cfg)
    progress(f"stopped {out['run_id']} ({out['status']})")
    emit(out)
    return 0


def _line_out(run_id: str, line: str) -> str:
    from engine.remote.jobs import parse_frame

    frame = parse_frame(line)
    if frame is not None:
        frame["run_id"] = run_id
        return dumps(frame)
    return dumps({"type": "log", "run_id": run_id, "line": line})


def run_logs(args: argparse.Namespace) -> int:
    import sys

    from engine.remote.jobs import job_logs, job_status

    cfg, _ = _cfg(args)
    rec, lines = job_logs(args.id, cfg, follow=args.follow)
    if not args.follow:
        got = list(lines)
        emit({"run_id": rec["run_id"], "backend": rec["backend"], "remote_id": rec["remote_id"], "lines": got,
              "n_lines": len(got), "last_step": rec.get("last_step")})
        return 0
    for line in lines:
        sys.stdout.write(_line_out(rec["run_id"], line) + "\n")
        sys.stdout.flush()
    final = job_status(rec["run_id"], cfg)
    emit({"type": "done", "run_id": rec["run_id"], "status": final["status"], "last_step": final.get("last_step"),
          "cost_so_far": final["cost_so_far"]})
    return 0


def run_list(args: argparse.Namespace) -> int:
    from engine.remote import store
    from engine.remote.jobs import refresh_all

    if args.refresh:
        cfg, _ = _cfg(args)
        rows = refresh_all(cfg)
    else:
        rows = store.list_jobs()
    emit({"jobs": rows})
    return 0
