"""`carl --batch observe`: summarise any run (carl frames, TRL trainer_state.json, trackio local or remote),
optionally follow it live (JSON lines) and export CSV + PNG charts. See docs/observe.md."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "observe", help="summarise or follow a run: Phi, phase, crystallization step, health",
        description="Summarise a run as one JSON object (contract §observe), or stream its frames as JSON lines "
                    "with --follow. Sources: --file (frames.jsonl, JSONL of metrics, trainer_state.json or a "
                    "checkpoint dir), --trackio PROJECT [--run NAME], --url URL [--project P] --run NAME, or "
                    "--run RUN_ID alone for a run in CARL_HOME.")
    p.add_argument("--file", metavar="PATH", help="frames.jsonl, JSONL of metric dicts (verl's too), trainer_state.json "
                                                  "or a checkpoint dir, a console log, a .wandb file or W&B run dir, "
                                                  "an MLflow store (mlruns/), a TensorBoard dir")
    p.add_argument("--trackio", metavar="PROJECT", help="a project in the local trackio store")
    p.add_argument("--trackio-dir", metavar="DIR", help="the trackio store (default $TRACKIO_DIR, else $HF_HOME/trackio)")
    p.add_argument("--url", metavar="URL", help="a trackio dashboard URL or Space id (user/space)")
    p.add_argument("--project", metavar="P", help="project on the dashboard (default: the only one)")
    p.add_argument("--send-token", action="store_true",
                   help="with --url: send HF_TOKEN to this dashboard even if it is not a Space of your own user or "
                        "orgs (by default it goes only to those)")
    p.add_argument("--run", metavar="RUN", help="run name (trackio) or, alone, a carl run id or prefix")
    p.add_argument("--follow", action="store_true", help="stream frames as JSON lines until the run ends or SIGINT")
    p.add_argument("--poll", type=float, default=0.5, metavar="S", help="seconds between polls when following")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="with --follow: stop after S seconds without a new frame")
    p.add_argument("--new-only", action="store_true", help="with --follow: skip the frames already there")
    p.add_argument("--webhook", metavar="URL",
                   help="with --follow: POST one JSON message per new warn/bad finding to URL (Slack/Discord "
                        "incoming webhook or any receiver); env:NAME reads the URL from a variable. A carl run "
                        "uses its carl.yaml alerts.webhook when this is not given")
    p.add_argument("--alert-interval", type=float, default=None, metavar="S",
                   help="with --webhook: at most one POST per S seconds (default 1, or alerts.min_interval_s)")
    p.add_argument("--export", metavar="DIR", help="write frames.csv and PNG charts (phi, reward, entropy, loss) to DIR")
    p.set_defaults(func=run)


def _frame_line(frame: Any, src: Any) -> dict[str, Any]:
    d = {"type": "frame", "source": src.label, "run": src.run}
    d.update(frame.to_dict())
    return d


def run(args: argparse.Namespace) -> int:
    import time
    from urllib.parse import urlparse

    from carl_tui.batch._io import emit, progress
    from engine.errors import ValidationError
    from engine.observe.analysis import health, summarize
    from engine.observe.sources import open_source

    if args.poll <= 0:
        raise ValidationError("--poll must be > 0", hint="e.g. --poll 0.5")
    src = open_source(file=args.file, trackio=args.trackio, url=args.url, project=args.project, run=args.run,
                      trackio_dir=args.trackio_dir, send_token=args.send_token)
    frames, skipped = src.load()
    settings = _settings(src)
    if args.webhook and not args.follow:
        raise ValidationError("--webhook needs --follow", hint="Alerts are sent while following a run: add --follow.")
    if args.follow:
        from engine.observe.follow import follow

        alerts = _alert_sender(args, src, settings)
        if not args.new_only:
            for f in frames:
                emit(_frame_line(f, src))
        progress(f"following {src.label} ({len(frames)} frames so far; Ctrl-C to stop)")
        last_health = 0.0
        try:
            if alerts is not None and frames:
                alerts.offer(health(frames, settings)["findings"], run=src.run)
            for batch in follow(src, poll_interval=args.poll, idle_timeout=args.idle_timeout, idle_batches=True):
                if batch.reset:
                    progress(f"{src.label}: source restarted (truncated or rotated); reading it from the top")
                    frames = []
                skipped += batch.skipped
                frames += batch.frames
                for f in batch.frames:
                    emit(_frame_line(f, src))
                # findings are recomputed at most every HEALTH_EVERY seconds (and when the source goes quiet)
                now = time.monotonic()
                if alerts is not None and frames and (batch.ended or not batch.frames
                                                      or now - last_health >= HEALTH_EVERY):
                    last_health = now
                    alerts.offer(health(frames, settings)["findings"], run=src.run)
        finally:
            if alerts is not None:
                alerts.close(timeout=10.0)
                if alerts.stats.failed:
                    progress(f"alerts: {alerts.stats.failed} could not be delivered to "
                             f"{urlparse(alerts.url).hostname}")
        out = summarize(frames, source=src.label, run=src.run, skipped=skipped, settings=settings, **_extras(src))
        if alerts is not None:
            out["alerts"] = {"sent": alerts.stats.sent, "failed": alerts.stats.failed,
                             "dropped": alerts.stats.dropped}
        out["type"] = "summary"
        out["ended"] = src.ended()
        if args.export:
            from engine.observe.export import export

            out["export"] = export(frames, args.export)
        emit(out)
        return _empty_exit(out)
    out = summarize(frames, source=src.label, run=src.run, skipped=skipped, settings=settings, **_extras(src))
    if args.export:
        from engine.observe.export import export

        out["export"] = export(frames, args.export)
        progress(f"exported {len(frames)} frames to {out['export']['dir']}")
    emit(out)
    return _empty_exit(out)


HEALTH_EVERY = 0.5  # seconds between health recomputations while following with alerts


def _settings(src: Any) -> dict[str, Any] | None:
    """A carl run's resolved config (hints then never suggest what is already set); None for other sources."""
    from engine.observe.alerts import run_settings

    return run_settings(getattr(src, "run_dir", None)) if getattr(src, "kind", None) == "carl" else None


def _alert_sender(args: argparse.Namespace, src: Any, settings: dict[str, Any] | None) -> Any:
    from engine.observe.alerts import AlertSender, resolve_webhook

    conf = (settings or {}).get("alerts") or {}
    url = resolve_webhook(args.webhook or conf.get("webhook"))
    if args.webhook and not url:
        from engine.errors import ValidationError

        raise ValidationError(f"--webhook {args.webhook.split(':', 1)[0]}:… names an empty variable",
                              hint="Export the variable holding the webhook URL, or pass the URL.")
    if not url:
        return None
    interval = args.alert_interval if args.alert_interval is not None else float(conf.get("min_interval_s", 1.0))
    from engine.home import CarlHome

    return AlertSender(url, run=src.run, min_interval=interval, ledger_home=CarlHome.from_env())


def _empty_exit(out: dict[str, Any]) -> int:
    """A source with no frames: the summary (health ``empty``) is still printed, then an error and exit 2
    (contract: nothing in it parses) — a script never mistakes an empty or foreign file for a healthy run."""
    from engine.observe.empty import empty_source_error

    exc = empty_source_error(out)
    if exc is None:
        return 0
    from carl_tui.batch._io import emit_error

    emit_error(exc)
    return exc.exit_code


def _extras(src: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": src.kind, "reader": src.reader or src.kind}
    if src.via:
        d["via"] = src.via
    return d
