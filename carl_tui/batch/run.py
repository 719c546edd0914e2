"""`carl --batch run list | show RUN | diff A B | attach RUN | stop RUN | resume RUN | pull RUN` (CONTRACT.md §run).

    run pull RUN [--repo OWNER/NAME] [--revision REV]
        → {"run_id", "run_dir", "repo_id", "revision", "files", "bytes", "status", "last_step", "has_final",
           "last_checkpoint", "backend"}   (docs/remote.md, "Results come home")
"""

from __future__ import annotations

import argparse
from typing import Any

from carl_tui.batch._io import emit, progress


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="list, show, diff, attach, stop and resume runs",
                       description="Runs under $CARL_HOME/runs. RUN is a run id or an unambiguous prefix.")
    rs = p.add_subparsers(dest="run_cmd", metavar="SUBCOMMAND", parser_class=type(p))
    rs.add_parser("list", help="all runs, newest first").set_defaults(func=cmd_list)
    s = rs.add_parser("show", help="one run's status and config")
    s.add_argument("run")
    s.set_defaults(func=cmd_show)
    d = rs.add_parser("diff", help="compare two runs step by step")
    d.add_argument("run_a")
    d.add_argument("run_b")
    d.set_defaults(func=cmd_diff)
    a = rs.add_parser("attach", help="replay a run's history, then follow it (JSON lines like train)")
    a.add_argument("run")
    a.add_argument("--no-replay", action="store_true", help="only new lines")
    a.set_defaults(func=cmd_attach)
    st = rs.add_parser("stop", help="graceful stop: finish the step, checkpoint, status=stopped")
    st.add_argument("run")
    st.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the worker (default 60; 0: don't)")
    st.set_defaults(func=cmd_stop)
    r = rs.add_parser("resume", help="resume from the last checkpoint (streams like train)")
    r.add_argument("run")
    r.add_argument("--detach", action="store_true")
    r.set_defaults(func=cmd_resume)
    pl = rs.add_parser("pull", help="download a remote run (train.output_repo) into the local run store",
                       description="Download runs/RUN/ from the job's output repo (or --repo) into "
                                   "$CARL_HOME/runs/RUN, so every local tool works on it.")
    pl.add_argument("run", help="the job's run id (or the backend's id, or a unique prefix), or a run id in --repo")
    pl.add_argument("--repo", metavar="OWNER/NAME", help="the Hub repo (default: the job's train.output_repo)")
    pl.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: main)")
    pl.set_defaults(func=cmd_pull)


def _store():
    from engine.runs import RunStore

    return RunStore()


def cmd_list(args: argparse.Namespace) -> int:
    emit({"runs": _store().list()})
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    emit(_store().show(args.run))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from engine.frames import read_frames
    from engine.observe.diff import diff_runs

    store = _store()
    ids = [store.resolve(args.run_a), store.resolve(args.run_b)]
    fa, fb = (read_frames(store.run_dir(i) / "frames.jsonl")[0] if (store.run_dir(i) / "frames.jsonl").exists()
              else [] for i in ids)
    emit({"run_a": ids[0], "run_b": ids[1], **diff_runs(fa, fb)})
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from carl_tui.batch.train import stream

    store = _store()
    run_id = store.resolve(args.run)
    return stream(store, run_id, replay=not args.no_replay, max_steps=store.meta(run_id).get("max_steps"),
                  stop_on_interrupt=False)


def cmd_stop(args: argparse.Namespace) -> int:
    store = _store()
    res = store.stop(args.run, wait=max(0.0, args.wait))
    emit(res)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import yaml

    from carl_tui.batch.train import stream

    store = _store()
    run_id, step = store.prepare_resume(args.run)
    cfg = yaml.safe_load((store.run_dir(run_id) / "config.yaml").read_text(encoding="utf-8")) or {}
    gpus = int(((cfg.get("compute") or {}).get("gpus")) or 1)
    pid = store.spawn(run_id, gpus=gpus, resume=True, owned=not args.detach)
    if args.detach:
        emit({"run_id": run_id, "pid": pid, "run_dir": str(store.run_dir(run_id)), "resumed_from": step})
        return 0
    progress(f"carl: run {run_id} resumed from step {step} (pid {pid})")
    return stream(store, run_id, replay=False, max_steps=((cfg.get("grpo") or {}).get("max_steps")))


def cmd_pull(args: argparse.Namespace) -> int:
    from engine.remote.sync import pull_run

    out = pull_run(args.run, repo_id=args.repo, revision=args.revision)
    progress(f"carl: pulled {out['run_id']} from {out['repo_id']}@{out['revision'][:10]} ({out['files']} files, "
             f"status {out['status']}{', final model' if out['has_final'] else ''})")
    emit(out)
    return 0
